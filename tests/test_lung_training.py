"""train/lung: the Model Zoo LUNA16 loader, on a small NIfTI volume written here.

Nobody may ship LUNA16, so the test writes what the Model Zoo's
``LUNA16_Images_resample`` layout holds: an LPS-stored NIfTI image and a
``dataset_fold0.json`` split whose boxes are in LPS world millimetres.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel", reason="the LUNA16 loader reads NIfTI (dev extra)")

from train.lung.data import luna16_datalist, luna16_transforms  # noqa: E402

SPACING = (0.703125, 0.703125, 1.25)  # the Model Zoo's resampled LUNA16 spacing
ORIGIN_RAS = np.array([100.0, 120.0, -200.0])
SHAPE = (64, 64, 48)
NODULE_VOXEL = np.array([40, 20, 30])  # in the stored (LPS-ordered) array
RADIUS_MM = 4.0
WINDOW = (-1024.0, 300.0)


def write_luna16_case(root: Path) -> tuple[Path, np.ndarray]:
    """A CT volume with one 8 mm nodule and its split file; returns the split and the box."""
    # ITK writes LUNA16 as LPS arrays: the NIfTI (RAS) affine flips x and y.
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = ORIGIN_RAS
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    distance = np.linalg.norm((grid - NODULE_VOXEL) * np.array(SPACING), axis=-1)
    image = np.where(distance <= RADIUS_MM, 100.0, -1000.0).astype(np.int16)
    (root / "images").mkdir(parents=True)
    nibabel.save(nibabel.Nifti1Image(image, affine), root / "images" / "case.nii.gz")
    centre_ras = affine[:3, :3] @ NODULE_VOXEL + ORIGIN_RAS
    centre_lps = centre_ras * np.array([-1.0, -1.0, 1.0])
    box = np.concatenate([centre_lps, [2 * RADIUS_MM] * 3])  # cccwhd, world mm
    split = {"training": [{"image": "images/case.nii.gz", "box": [box.tolist()], "label": [0]}]}
    path = root / "dataset_fold0.json"
    path.write_text(json.dumps(split))
    return path, box


def test_luna16_split_and_transforms_put_the_box_on_the_nodule(tmp_path: Path) -> None:
    split, _ = write_luna16_case(tmp_path / "LUNA16")
    (item,) = luna16_datalist(split, tmp_path / "LUNA16")
    assert Path(item["image"]) == tmp_path / "LUNA16" / "images" / "case.nii.gz"

    crops = crops_of(item)
    assert len(crops) == 4
    with_nodule = [c for c in crops if len(c["box"])]
    assert with_nodule, "no crop kept the nodule's box"
    for crop in crops:
        image = np.asarray(crop["image"])
        assert image.shape == (1, 32, 32, 16)
        assert image.min() >= 0.0 and image.max() <= 1.0  # the intensity window
    problems, whole = box_problems(crops)
    assert problems == []
    assert whole, "no crop held the whole nodule (RandCropBoxByPosNegLabeld whole_box)"


def test_a_box_off_the_nodule_is_seen(tmp_path: Path) -> None:
    """The checks above can fail: a box 8 mm off the nodule in x is reported."""
    split, box = write_luna16_case(tmp_path / "LUNA16")
    data = json.loads(split.read_text())
    data["training"][0]["box"] = [[box[0] + 8.0, *box[1:]]]
    split.write_text(json.dumps(data))
    (item,) = luna16_datalist(split, tmp_path / "LUNA16")
    crops = crops_of(item)
    assert any(len(c["box"]) for c in crops)
    problems, _ = box_problems(crops)
    assert problems


def crops_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Four 32x32x16 training crops of *item*, the same on every run."""
    transforms = luna16_transforms(WINDOW, (32, 32, 16), batch=4)
    transforms.set_random_state(seed=0)
    crops: list[dict[str, Any]] = transforms(item)
    return crops


def box_problems(crops: list[dict[str, Any]]) -> tuple[list[str], int]:
    """What is wrong with the crops' boxes, and how many crops hold the whole nodule."""
    nodule, lung = ((v - WINDOW[0]) / (WINDOW[1] - WINDOW[0]) for v in (100.0, -1000.0))
    size = 2 * RADIUS_MM / np.array(SPACING)  # the nodule's box in voxels
    problems: list[str] = []
    whole = 0
    for n, crop in enumerate(crops):
        if not len(crop["box"]):
            continue
        image = np.asarray(crop["image"])[0]
        box = np.asarray(crop["box"])[0]  # xyzxyz in the crop's voxels, clipped to it
        lo, hi = np.floor(box[:3]).astype(int), np.ceil(box[3:]).astype(int)
        inside = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if inside.size == 0 or abs(inside.max() - nodule) > 1e-3:
            problems.append(f"crop {n}: no nodule in its box")
        outside = image.copy()
        outside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = lung
        if outside.max() > lung + 1e-3:
            problems.append(f"crop {n}: nodule outside its box")
        if np.allclose(box[3:] - box[:3], size, atol=0.01):  # not cut by the crop's edge
            whole += 1
            centre = np.floor((box[:3] + box[3:]) / 2).astype(int)
            if abs(image[tuple(centre)] - nodule) > 1e-3:
                problems.append(f"crop {n}: the box's centre is not on the nodule")
    return problems, whole
