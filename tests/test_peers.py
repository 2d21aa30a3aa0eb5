"""dcmtk_tool finds DCMTK's tools by what they say they are, not by PATH order."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.testing import peers
from dicomnode.testing.peers import dcmtk_tool

# What pynetdicom's storescu prints for ``--version`` alone: argparse wants its
# positional arguments first, so it never gets to say what it is.
PYNETDICOM_LIKE = """#!/bin/sh
echo "usage: storescu [options] addr port path" >&2
echo "storescu: error: the following arguments are required: addr, port, path" >&2
exit 2
"""

DEBIAN_STORESCU = Path("/usr/bin/storescu")
needs_dcmtk = pytest.mark.skipif(
    not DEBIAN_STORESCU.exists(), reason="the Debian package dcmtk is not installed"
)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    """Forget cached answers around each test: its PATH is not the session's."""
    dcmtk_tool.cache_clear()
    yield
    dcmtk_tool.cache_clear()


def fake_tool(folder: Path, name: str, script: str) -> Path:
    """Write an executable *name* in *folder* running *script*."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(0o755)
    return path


def banner(path: str) -> str:
    run = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    return run.stdout + run.stderr


@needs_dcmtk
def test_a_non_dcmtk_storescu_first_on_path_is_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_tool(tmp_path / "bin", "storescu", PYNETDICOM_LIKE)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")

    found = dcmtk_tool("storescu")

    assert found != str(fake)
    assert banner(found).startswith("$dcmtk: storescu v")


@needs_dcmtk
def test_pynetdicom_apps_in_the_venv_are_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "storescu").exists():
        pytest.skip("pynetdicom's storescu is not next to this interpreter")
    # As after `source .venv/bin/activate`: the venv's bin first.
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")

    for name in ("storescu", "storescp", "echoscu"):
        found = dcmtk_tool(name)
        assert Path(found).parent != venv_bin
        assert banner(found).startswith(f"$dcmtk: {name} v")


@needs_dcmtk
def test_the_debian_folder_is_the_fallback_when_path_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_tool(tmp_path / "bin", "storescu", PYNETDICOM_LIKE)
    monkeypatch.setenv("PATH", str(fake.parent))

    assert dcmtk_tool("storescu") == str(DEBIAN_STORESCU)


def test_only_a_non_dcmtk_storescu_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_tool(tmp_path / "bin", "storescu", PYNETDICOM_LIKE)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr(peers, "DCMTK_FALLBACK_DIRS", ())

    with pytest.raises(RuntimeError) as raised:
        dcmtk_tool("storescu")

    message = str(raised.value)
    assert "DCMTK's storescu not found" in message
    assert str(fake) in message  # what was found instead
    assert "usage: storescu" in message  # and what it said
    assert "Debian package dcmtk" in message


def test_no_tool_at_all_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(peers, "DCMTK_FALLBACK_DIRS", ())

    with pytest.raises(RuntimeError, match="DCMTK's dsrdump not found.*no executable.*dcmtk"):
        dcmtk_tool("dsrdump")


def test_the_first_dcmtk_in_path_order_wins_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    pynetdicom_like = fake_tool(tmp_path / "venv", "echoscu", PYNETDICOM_LIKE)
    dcmtk_like = fake_tool(
        tmp_path / "opt",
        "echoscu",
        f"#!/bin/sh\necho run >> \"{calls}\"\necho '$dcmtk: echoscu v3.6.9 2024-12-11 $'\n",
    )
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(pynetdicom_like.parent), str(dcmtk_like.parent), "/usr/bin"])
    )

    assert dcmtk_tool("echoscu") == str(dcmtk_like)
    assert dcmtk_tool("echoscu") == str(dcmtk_like)
    assert calls.read_text().splitlines() == ["run"]  # asked once per name
