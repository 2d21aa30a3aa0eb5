"""Train the lung nodule detector of ``models/lung_nodule_ct`` on synthetic chest phantoms.

Usage (from the repository root)::

    python -m train.lung.train [--steps 900] [--batch 4] [--pool 600] [--threads 1]

The network, anchors, box selector, spacing and intensity window come from the
bundle's ``configs/inference.json`` (``--bundle``), so what is trained is what
the pipeline runs. Matching and sampling follow the Model Zoo's ``train.json``
(ATSS matcher, hard negative sampler). Writes the weights with the lowest
validation loss to ``<bundle>/models/model.pt`` and the loss curves to
``<bundle>/docs/training_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dicomnode.pipelines.bundle import Bundle
from dicomnode.pipelines.lung_nodule.detector import detector_settings, make_detector
from train.lung.data import synthetic_pool
from train.lung.phantom import Sample

VALIDATION_SEED = 1_000_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/lung_nodule_ct"))
    parser.add_argument("--steps", type=int, default=900, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=4, help="patches per step")
    parser.add_argument("--pool", type=int, default=600, help="synthetic training patches")
    parser.add_argument("--validation", type=int, default=24, help="held-out patches")
    parser.add_argument("--patch", type=int, nargs=3, default=[96, 96, 48], help="x y z voxels")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/dicomnode-lung-cache"))
    parser.add_argument("--out", type=Path, default=None, help="weights (default: bundle)")
    parser.add_argument("--init", type=Path, default=None, help="start from these weights")
    parser.add_argument(
        "--plots", type=Path, default=None, help="PNG folder (default: bundle docs)"
    )
    return parser.parse_args(argv)


def augment(
    sample: Sample, rng: np.random.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random flips along x, y, z (the boxes follow) as a detector input and target."""
    image, boxes = sample.image, sample.boxes.copy()
    for axis in range(3):
        if rng.random() < 0.5:
            image = np.flip(image, axis)
            last = image.shape[axis] - 1
            boxes[:, [axis, axis + 3]] = last - boxes[:, [axis + 3, axis]]
    target = {
        "box": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
        "label": torch.zeros(len(boxes), dtype=torch.long),
    }
    return torch.from_numpy(np.ascontiguousarray(image))[None], target


def losses(
    detector: Any, batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification and box regression losses of one batch."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    out = detector(images, targets)
    return out[detector.cls_key], out[detector.box_reg_key]


def validation_loss(detector: Any, samples: list[Sample]) -> float:
    """Mean loss on held-out patches, network in eval mode (batch norm statistics frozen)."""
    detector.network.eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        values = [sum(losses(detector, [augment(s, rng)])).item() for s in samples]  # type: ignore[union-attr]
    detector.network.train()
    return float(np.mean(values))


def plot(history: dict[str, list[Any]], path: Path) -> None:
    """Training and validation loss curves as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(history["cls"]) + 1)
    kernel = np.ones(25) / 25
    for key in ("cls", "reg"):
        values = np.array(history[key])
        smooth = np.convolve(values, kernel, mode="valid") if len(values) > 25 else values
        ax.plot(steps[len(steps) - len(smooth) :], smooth, label=f"train {key} loss (25-step mean)")
    if history["val"]:
        at, val = zip(*history["val"], strict=True)
        ax.plot(at, val, "o-", label="validation loss (cls + reg)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("lung_nodule_ct: small RetinaNet on synthetic chest phantoms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    bundle = Bundle(args.bundle.resolve())
    settings = detector_settings(bundle)
    out = args.out or bundle.weights_path()
    plots = args.plots or bundle.root / "docs"
    plots.mkdir(parents=True, exist_ok=True)
    size = tuple(args.patch)
    tag = f"{size[0]}x{size[1]}x{size[2]}-{'x'.join(f'{v:g}' for v in settings.pixdim)}"
    pool = synthetic_pool(
        args.pool,
        args.seed,
        size,
        settings.pixdim,
        settings.window,
        args.cache / f"train-{args.seed}-{args.pool}-{tag}.npz",
    )
    held_out = synthetic_pool(
        args.validation,
        VALIDATION_SEED,
        size,
        settings.pixdim,
        settings.window,
        args.cache / f"val-{args.validation}-{tag}.npz",
    )
    network = bundle.parsed("network_def")
    if args.init is not None:
        network.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    detector = make_detector(network, bundle.parsed("anchor_generator"), settings)
    # As the Model Zoo's train.json: ATSS matching and hard negative sampling.
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
    )
    detector.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05
    )
    history: dict[str, list[Any]] = {"cls": [], "reg": [], "val": []}
    best, start = float("inf"), time.perf_counter()
    every = max(1, args.steps // 12)
    progress = tqdm(range(1, args.steps + 1), desc="train", unit="step")
    for step in progress:
        batch = [augment(pool[n], rng) for n in rng.choice(len(pool), args.batch, replace=False)]
        cls, reg = losses(detector, batch)
        loss = cls + reg
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        history["cls"].append(cls.item())
        history["reg"].append(reg.item())
        progress.set_postfix(cls=f"{cls.item():.3f}", reg=f"{reg.item():.3f}")
        if step % every == 0 or step == args.steps:
            val = validation_loss(detector, held_out)
            history["val"].append((step, val))
            tqdm.write(f"step {step}: validation loss {val:.4f}")
            if val < best:
                best = val
                out.parent.mkdir(parents=True, exist_ok=True)
                torch.save(network.state_dict(), out)
            plot(history, plots / "training_curves.png")
    summary = {
        "steps": args.steps,
        "batch": args.batch,
        "pool": args.pool,
        "best_validation_loss": best,
        "minutes": (time.perf_counter() - start) / 60,
        "weights": os.path.relpath(out),
    }
    (plots / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
