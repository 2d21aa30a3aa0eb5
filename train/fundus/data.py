"""Synthetic fundus data sets, preprocessed exactly as the pipeline does.

Each sample is drawn by :func:`dicomnode.synthetic.fundus.fundus_photo` from
its own seed (so the sets are reproducible and disjoint by seed range), then
passed through :func:`dicomnode.pipelines.fundus_dr.prepare_fundus`. Inputs
are kept as uint8 (``value * 40 + 128``) so a few thousand fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from dicomnode.pipelines.fundus_dr.preprocessing import prepare_fundus
from dicomnode.synthetic.fundus import DEGRADATIONS, fundus_photo

QUANT_SCALE = 40.0
QUANT_OFFSET = 128.0

# Disjoint seed ranges: nothing evaluated was ever trained on.
TRAIN_SEEDS = 1_000_000
VALIDATION_SEEDS = 2_000_000
HELD_OUT_SEEDS = 3_000_000


@dataclass
class FundusSet:
    """Inputs, grades and which samples were degraded (ungradable)."""

    inputs: np.ndarray  # (n, 3, size, size) uint8, quantised
    grades: np.ndarray  # (n,) int64
    degraded: np.ndarray  # (n,) bool

    def floats(self, index: np.ndarray | slice) -> np.ndarray:
        """Network inputs of *index* as float32."""
        return (self.inputs[index].astype(np.float32) - QUANT_OFFSET) / QUANT_SCALE


def make_set(
    count: int,
    first_seed: int,
    *,
    photo_size: int = 320,
    image_size: int = 160,
    degraded_fraction: float = 0.0,
    description: str = "synthesising",
) -> FundusSet:
    """*count* photographs, grades balanced (seed order), a fraction degraded."""
    rng = np.random.default_rng(first_seed)
    inputs = np.empty((count, 3, image_size, image_size), dtype=np.uint8)
    grades = np.arange(count, dtype=np.int64) % 5
    degraded = rng.uniform(size=count) < degraded_fraction
    for n in tqdm(range(count), desc=description, unit="img", mininterval=2.0):
        spoil = str(rng.choice(DEGRADATIONS)) if degraded[n] else None
        photo = fundus_photo(
            int(grades[n]),
            size=photo_size,
            seed=first_seed + n,
            laterality="RL"[int(rng.integers(2))],
            degrade=spoil,
        )
        array = prepare_fundus(photo, image_size).array
        inputs[n] = np.clip(np.round(array * QUANT_SCALE + QUANT_OFFSET), 0, 255).astype(np.uint8)
    return FundusSet(inputs, grades, degraded)
