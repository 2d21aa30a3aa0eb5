"""Training data: a pool of synthetic patches, or the Model Zoo's resampled LUNA16 layout.

Synthetic (default): :func:`synthetic_pool` renders patches with
:mod:`train.lung.phantom` and caches them as one ``.npz`` per seed and size.

LUNA16 (when a user has it): the Model Zoo ``lung_nodule_ct_detection``
data split (``dataset_fold0.json``: ``{"training": [{"image": "x.nii.gz",
"box": [[cx, cy, cz, w, h, d], ...], "label": [0, ...]}], "validation": [...]}``,
boxes in world millimetres) over images already resampled to the bundle's
spacing (the Model Zoo's ``LUNA16_Images_resample``). :func:`luna16_datalist`
reads the split; :func:`luna16_transforms` are the Model Zoo's own training
transforms up to the random crop (reading ``.nii.gz`` needs ``nibabel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from train.lung.phantom import Sample, training_sample


def synthetic_pool(
    count: int,
    seed: int,
    size_xyz: Sequence[int],
    pixdim: Sequence[float],
    window: tuple[float, float],
    cache: Path | None = None,
) -> list[Sample]:
    """*count* training patches from seeds ``seed``, ``seed + 1``, ... (cached in *cache*)."""
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if len(data["images"]) >= count:
            return [
                Sample(
                    data["images"][n],
                    data[f"boxes_{n}"],
                    data[f"diameters_{n}"],
                    data[f"centers_{n}"],
                    data[f"affine_{n}"],
                )
                for n in range(count)
            ]
    pool = [
        training_sample(seed + n, size_xyz, pixdim, window)
        for n in tqdm(range(count), desc="phantoms", unit="patch")
    ]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"images": np.stack([s.image for s in pool])}
        for n, s in enumerate(pool):
            arrays.update(
                {
                    f"boxes_{n}": s.boxes,
                    f"diameters_{n}": s.diameters,
                    f"centers_{n}": s.centers_lps,
                    f"affine_{n}": s.affine,
                }
            )
        np.savez(cache, **arrays)  # type: ignore[arg-type]
    return pool


def luna16_datalist(path: Path, base_dir: Path, key: str = "training") -> list[dict[str, Any]]:
    """The Model Zoo LUNA16 split *key* ("training" or "validation") with absolute image paths."""
    from monai.data import load_decathlon_datalist

    return list(
        load_decathlon_datalist(
            str(path), is_segmentation=True, data_list_key=key, base_dir=str(base_dir)
        )
    )


def luna16_transforms(window: tuple[float, float], size_xyz: Sequence[int], batch: int) -> Any:
    """The Model Zoo's LUNA16 training transforms up to its random positive/negative crop."""
    import torch
    from monai.apps.detection.transforms.dictionary import (
        AffineBoxToImageCoordinated,
        ClipBoxToImaged,
        ConvertBoxToStandardModed,
        RandCropBoxByPosNegLabeld,
    )
    from monai.transforms import (
        Compose,
        DeleteItemsd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
    )

    return Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            EnsureTyped(keys=["image", "box"]),
            EnsureTyped(keys="label", dtype=torch.long),
            Orientationd(keys="image", axcodes="RAS"),
            ScaleIntensityRanged(
                keys="image", a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True
            ),
            ConvertBoxToStandardModed(box_keys="box", mode="cccwhd"),
            AffineBoxToImageCoordinated(
                box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True
            ),
            RandCropBoxByPosNegLabeld(
                image_keys="image",
                box_keys="box",
                label_keys="label",
                spatial_size=list(size_xyz),
                whole_box=True,
                num_samples=batch,
                pos=1,
                neg=1,
            ),
            ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image"),
            DeleteItemsd(keys=["image_meta_dict"]),
        ]
    )
