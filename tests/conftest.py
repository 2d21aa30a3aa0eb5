"""Shared fixtures: an embedded node on a free loopback port, test data."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from dicomnode.config import Settings
from dicomnode.service import Node
from dicomnode.testing.node import NODE_AE as NODE_AE  # re-exported for the test modules
from dicomnode.testing.node import settings_data

# pydicom's bundled files, one per transfer syntax family the receiver must take as-is.
TESTDATA = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian (retired, still sent by old modalities)
    "SC_jpeg_no_color_transform.dcm",  # JPEG baseline
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "MR_small_RLE.dcm",  # RLE
    "image_dfl.dcm",  # deflated explicit VR little endian
]


def sample_paths() -> list[Path]:
    """Absolute paths of :data:`TESTDATA`."""
    return [Path(str(get_testdata_file(name))) for name in TESTDATA]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """``make_settings(**sections)``: Settings rooted in tmp_path, sections merged in."""

    def _make(**sections: Any) -> Settings:
        return Settings.model_validate(_merge(settings_data(tmp_path), sections))

    return _make


@pytest.fixture
def start_node() -> Iterator[Callable[..., Node]]:
    """``start_node(settings, workers=0)``: a started Node, stopped at teardown."""
    nodes: list[Node] = []

    def _start(settings: Settings, workers: int = 0) -> Node:
        node = Node(settings, workers=workers)
        node.start()
        nodes.append(node)
        return node

    yield _start
    for node in nodes:
        node.stop()
