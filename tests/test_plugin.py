"""A pipeline from another package: pip-installed, found by its entry point, routed to.

``tests/plugins/dicomnode-calcium-spots`` is packaged as a hospital would
package its own pipeline: one package, one bundle folder, one entry-point
line. The test installs it (``pip install --target``, so the project's own
environment is left as it is) and runs a real node with it on PYTHONPATH:
storescu → node → the plugin → Orthanc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dicomnode.synthetic import Nodule, ct_series, write_series
from dicomnode.testing.node import NODE_AE, NodeProcess, settings_data
from dicomnode.testing.peers import Orthanc, dciodvfy, storescu

PLUGIN = Path(__file__).resolve().parent / "plugins" / "dicomnode-calcium-spots"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed with pip into a folder of its own; that folder goes on PYTHONPATH."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "source"
    shutil.copytree(PLUGIN, source)  # pip builds in the tree; keep the checkout clean
    site = root / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",  # setuptools is in the environment; nothing is downloaded
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert any(site.glob("dicomnode_calcium_spots-*.dist-info/entry_points.txt"))
    return site


def _env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _config(root: Path, **sections: Any) -> dict[str, Any]:
    data = settings_data(root)
    data["workers"]["processes"] = 1
    data["routes"] = [
        {"pipeline": "calcium_spots", "match": {"Modality": "CT"}, "send_to": ["pacs"]}
    ]
    data["pipelines"] = {"calcium_spots": {"device": "cpu", "threshold_hu": 150}}
    data.update(sections)
    return data


def test_config_check_knows_the_installed_plugin_and_its_options(
    plugin_site: Path, tmp_path: Path
) -> None:
    destination = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    node = NodeProcess(_config(tmp_path, destinations=[destination]), tmp_path, _env(plugin_site))
    checked = node.cli("config", "check", str(node.config))
    assert checked.returncode == 0, checked.stderr
    assert "OK (1 route(s)" in checked.stdout

    # The same config without the plugin on the path: the route names a missing pipeline.
    bare = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "config", "check", str(node.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode == 2
    assert "routes.0.pipeline: no pipeline named 'calcium_spots' is installed" in bare.stderr

    misspelt = _config(tmp_path, destinations=[destination])
    misspelt["pipelines"]["calcium_spots"]["threshold_uh"] = 300
    node = NodeProcess(misspelt, tmp_path / "misspelt", _env(plugin_site))
    result = node.cli("config", "check", str(node.config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dicomnode: pipelines.calcium_spots.threshold_uh: unknown key for pipeline "
        "calcium_spots; did you mean 'threshold_hu'?"
    ]


@pytest.mark.slow
def test_storescu_to_node_to_plugin_to_orthanc(plugin_site: Path, tmp_path: Path) -> None:
    spots = [
        Nodule((-50.0, 10.0, 20.0), 10.0, hu=400.0),
        Nodule((45.0, -20.0, 30.0), 8.0, hu=400.0),
    ]
    files = write_series(
        ct_series(n_slices=40, rows=192, columns=192, pixel_spacing=(1.0, 1.0), nodules=spots),
        tmp_path / "ct",
    )
    with Orthanc(tmp_path / "orthanc") as orthanc:
        for path in files:  # the PACS holds the CT the scanner sent
            orthanc.upload(path)
        data = _config(tmp_path / "node", destinations=[orthanc.destination()])
        with NodeProcess(data, tmp_path / "node", _env(plugin_site)) as node:
            pushed = storescu(files, host="127.0.0.1", port=node.port, called_aet=NODE_AE)
            assert pushed.returncode == 0, pushed.stderr
            (job,) = node.wait_for_jobs(timeout=240)
        assert job["status"] == "done", job
        assert job["pipeline"] == "calcium_spots"
        stages = [e["stage"] for e in job["events"] if e["duration_s"] is not None]
        assert [s for s in stages if s != "pipeline"] == [
            "select",
            "load",
            "preprocess",
            "infer",
            "postprocess",
            "write",
            "delivery",  # the node's own stage, timed too: the results reached Orthanc
        ]
        messages = [e["message"] for e in job["events"]]
        assert "2 spot(s) above 150 HU" in messages, messages
        outputs = {o["sop_class_uid"]: o for o in job["outputs"]}
        assert set(outputs) == {SEG_CLASS, SR_CLASS}
        assert {o["status"] for o in job["outputs"]} == {"sent"}
        for output in outputs.values():
            assert dciodvfy(Path(data["storage"]["path"]) / output["path"]) == []
        study = orthanc.find_study(str(job["study_instance_uid"]))
        assert study is not None
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(study))
        assert modalities == ["CT", "SEG", "SR"]  # the results joined the source study
