"""How the project installs: package metadata and the pipelines it registers."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_and_metadata_builds_without_warnings(
    tmp_path: Path,
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # PEP 639: the table form ({ text = ... }) is deprecated and setuptools says so at length.
    assert project["license"] == "Apache-2.0"
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stderr
    (metadata,) = tmp_path.glob("*.dist-info/METADATA")
    assert "License-Expression: Apache-2.0" in metadata.read_text()


def test_built_in_pipelines_register_through_the_entry_point_group() -> None:
    from dicomnode.pipelines.registry import ENTRY_POINT_GROUP, installed

    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = entry_points[ENTRY_POINT_GROUP]
    assert set(declared) == {"geometry_qa", "lung_nodule", "brain_tumor", "fundus_dr"}
    found = installed()
    for name, target in declared.items():
        assert found[name].value == target


BUILT_IN = ("brain_tumor", "fundus_dr", "geometry_qa", "lung_nodule")


def test_docs_option_tables_are_the_option_models() -> None:
    from dicomnode.pipelines.registry import common_options_markdown, options_markdown

    text = (ROOT / "docs" / "pipelines.md").read_text()
    generated = text.split("<!-- options:begin -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    expected = (
        "Keys every model pipeline takes (`ModelOptions`):\n\n"
        + common_options_markdown()
        + "\n"
        + options_markdown(BUILT_IN)
    )
    assert generated == expected, "run `dicomnode pipelines options` and paste it into the docs"


def test_readme_lists_each_pipelines_own_options() -> None:
    import re

    from dicomnode.config import ModelOptions
    from dicomnode.pipelines.registry import own_options, pipeline_class

    readme = (ROOT / "README.md").read_text()
    listed = readme.split("Options per\npipeline", 1)[1].split("Training and evaluation", 1)[0]
    for short, name in (("lung", "lung_nodule"), ("brain", "brain_tumor"), ("fundus", "fundus_dr")):
        part = re.search(rf"{short} —(.*?)(;|\.\n)", listed, re.S)
        assert part is not None, short
        # brain_mask's values (`intensity`, `none`) are listed beside it, not as keys.
        keys = [
            n for n in re.findall(r"`([a-z_]+)`", part.group(1)) if n not in ("intensity", "none")
        ]
        assert keys == list(own_options(pipeline_class(name))), (name, keys)
    common = readme.split("every model pipeline takes", 1)[1].split("and each adds", 1)[0]
    assert re.findall(r"`([a-z_]+)`", common) == list(ModelOptions.model_fields)
