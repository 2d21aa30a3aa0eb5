"""``dicomnode demo`` (what ``make demo`` runs): three studies in, SEG/SR/SC out, all valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomnode.testing.peers import dciodvfy


@pytest.mark.slow
def test_demo_runs_every_pipeline_and_delivers_valid_results(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    dicomnode = Path(sys.executable).parent / "dicomnode"
    result = subprocess.run(
        [str(dicomnode), "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "demo: all jobs done" in out
    for pipeline in ("lung_nodule", "brain_tumor", "fundus_dr"):
        assert f"done     {pipeline}" in out
    # Only the stand-in PACS's folder is left, holding what the node sent.
    assert [p.name for p in workdir.iterdir()] == ["pacs"]
    received = sorted((workdir / "pacs").glob("*.dcm"))
    modalities = sorted(str(dcmread(p, stop_before_pixels=True).Modality) for p in received)
    # CT: SEG + GSPS + SR + key image; MR: SEG + GSPS + SR; fundus: SR + one heat map per eye.
    assert modalities.count("SEG") == 2
    assert modalities.count("PR") == 2
    assert modalities.count("SR") == 3
    assert len(received) >= 9
    for path in received:
        assert dciodvfy(path) == [], path.name
        assert str(path) in out  # the table says where each result went
