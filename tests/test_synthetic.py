"""The synthetic CT generator: geometry, content, determinism, dciodvfy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicomnode.synthetic import Nodule, ct_series, write_series
from dicomnode.testing.peers import dciodvfy


def hu(ds) -> np.ndarray:  # type: ignore[no-untyped-def]
    pixels = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns)
    return pixels.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_geometry_and_nodule(tmp_path: Path) -> None:
    nodule = Nodule(center_mm=(60.0, -10.0, 10.0), diameter_mm=12.0, hu=60.0)
    series = ct_series(
        12, 64, 64, pixel_spacing=(5.0, 5.0), slice_thickness=2.0, seed=3, nodules=[nodule]
    )
    z = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert np.allclose(np.diff(z), 2.0)
    assert len({ds.FrameOfReferenceUID for ds in series}) == 1
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert len({ds.SOPInstanceUID for ds in series}) == 12
    ds = series[5]  # z = 10 mm: through the nodule's centre
    x0, y0 = (float(v) for v in ds.ImagePositionPatient[:2])
    col, row = round((60.0 - x0) / 5.0), round((-10.0 - y0) / 5.0)
    assert abs(hu(ds)[row, col] - 60.0) < 60  # noise sigma 15 HU
    assert hu(ds)[0, 0] < -900  # air in the corner
    paths = write_series(series, tmp_path)
    assert dciodvfy(paths[0]) == []


def test_same_seed_same_pixels() -> None:
    a = ct_series(2, 32, 32, seed=1)
    b = ct_series(2, 32, 32, seed=1)
    c = ct_series(2, 32, 32, seed=2)
    assert a[1].PixelData == b[1].PixelData != c[1].PixelData
