"""Train the shipped brain tumour SegResNet on synthetic head MR phantoms.

Run from the repository root::

    python -m train.brain.train --minutes 18

Cases are generated (and cached in ``--cache``), the network is built from
the bundle's own ``configs/inference.json`` (``network_def``), trained on
random 3D crops with Dice + BCE on the TC/WT/ET regions, validated on
held-out phantoms, and saved to ``<bundle>/models/model.pt`` with loss and
Dice plots (PNG) and ``metrics.json`` in ``--plots``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from train.brain.data import THIN, Case, augment, make_case, random_crop, whole_volume

# Extra training sets, all with a tumour: name (``--<name>-cases`` sets how
# many) → first seed and phantom options.
EXTRA_SETS: dict[str, tuple[int, dict[str, Any]]] = {
    # Small tumours: a 1 mm boundary error is a large share of their volume.
    "small": (3000, {"radius_mm": (6.0, 12.0)}),
    # A large necrotic core: necrosis is otherwise a few percent of tumour voxels.
    "core": (4000, {"core_fraction": (0.4, 0.65)}),
    # A thin oedema shell: one voxel too wide there is 15-25 % of the oedema volume.
    "thin": (8000, THIN),
}

REGIONS = ("TC", "WT", "ET")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/brain_tumor_mri"))
    parser.add_argument("--cases", type=int, default=48, help="training phantoms")
    parser.add_argument(
        "--small-cases",
        type=int,
        default=0,
        help="extra training phantoms with a small tumour (rim radius 6-12 mm, seeds 3000+)",
    )
    parser.add_argument(
        "--core-cases",
        type=int,
        default=0,
        help="extra training phantoms with a large necrotic core (0.4-0.65 of the rim radius, "
        "seeds 4000+)",
    )
    parser.add_argument(
        "--thin-cases",
        type=int,
        default=0,
        help="extra training phantoms with a small tumour in thin oedema (rim radius 6-14 mm, "
        "oedema 4-7 mm, seeds 8000+)",
    )
    parser.add_argument(
        "--core-bias",
        type=float,
        default=0.0,
        help="share of tumour-centred crops centred on necrosis instead",
    )
    parser.add_argument("--val-cases", type=int, default=6, help="validation phantoms")
    parser.add_argument("--iterations", type=int, default=3000, help="upper bound on steps")
    parser.add_argument(
        "--minutes", type=float, default=18.0, help="wall-clock budget for training steps"
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=64,
        help="cube crop size; 0: whole volumes (the inference's context; needs --batch 1)",
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--validate-every", type=int, default=150)
    parser.add_argument(
        "--scale-jitter", type=float, default=0.1, help="channel intensity scale within 1 ± this"
    )
    parser.add_argument(
        "--shift-jitter", type=float, default=0.1, help="channel intensity shift within ± this"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (shared machine: 1)"
    )
    parser.add_argument(
        "--native-share",
        type=float,
        default=0.0,
        help="share of phantoms whose T1c is 1 mm isotropic, so reaches the network "
        "uninterpolated (0: every series interpolated, as phases 1-8 were trained)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/brain_cases.pkl"))
    parser.add_argument("--plots", type=Path, default=Path("train/brain/output"))
    parser.add_argument(
        "--resume", action="store_true", help="start from the bundle's models/model.pt"
    )
    args = parser.parse_args(argv)
    if args.crop == 0 and args.batch != 1:
        parser.error("--crop 0 (whole volumes of different sizes) needs --batch 1")
    return args


def build_network(bundle: Path) -> torch.nn.Module:
    """The bundle's ``network_def`` (so shipped config and weights always match)."""
    from dicomnode.pipelines.bundle import Bundle

    network: torch.nn.Module = Bundle(bundle.resolve()).parsed("network_def")
    return network


def load_cases(seeds: list[int], cache: Path, what: str, **options: Any) -> list[Case]:
    """Generate the phantoms of *seeds* (or read them from *cache*); *options* go to make_case."""
    normalization = options.get("normalization", "nonzero")
    tag = "" if normalization == "nonzero" else f"-{normalization}"
    if options.get("native_share"):
        tag += f"-native{options['native_share']:g}"
    path = cache.with_name(f"{cache.stem}-{what}-{len(seeds)}-{seeds[0]}{tag}{cache.suffix}")
    if path.is_file():
        with path.open("rb") as f:
            cases: list[Case] = pickle.load(f)
        return cases
    cases = [make_case(s, **options) for s in tqdm(seeds, desc=f"{what} phantoms", unit="case")]
    with path.open("wb") as f:
        pickle.dump(cases, f)
    return cases


def sample(
    case: Case, args: argparse.Namespace, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A training crop of *case*, or (``--crop 0``) the whole volume."""
    if args.crop == 0:
        return whole_volume(case)
    return random_crop(case, args.crop, rng, core_bias=args.core_bias)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * (prediction & truth).sum() / total)


def predict(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Whole-volume sigmoid output, padded to multiples of 8 like the pipeline."""
    spatial = image.shape[1:]
    padded = [-(-n // 8) * 8 for n in spatial]
    x = np.zeros((1, 4, *padded), dtype=np.float32)
    x[0, :, : spatial[0], : spatial[1], : spatial[2]] = image
    with torch.inference_mode():
        out = torch.sigmoid(network(torch.from_numpy(x)))[0].numpy()
    return out[:, : spatial[0], : spatial[1], : spatial[2]]


def validate(network: torch.nn.Module, cases: list[Case]) -> dict[str, float]:
    """Mean Dice per region over *cases* (threshold 0.5)."""
    network.eval()
    scores: dict[str, list[float]] = {r: [] for r in REGIONS}
    for case in cases:
        output = predict(network, case.image.astype(np.float32)) > 0.5
        for index, region in enumerate(REGIONS):
            scores[region].append(dice(output[index], case.target[index] > 0))
    network.train()
    return {r: float(np.mean(v)) for r, v in scores.items()}


def save_plots(
    history: dict[str, list[float]], validation: list[dict[str, float]], folder: Path
) -> None:
    """Training loss and validation Dice as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    losses = np.array(history["loss"])
    window = max(1, len(losses) // 50)
    ax.plot(losses, alpha=0.3, label="loss")
    if len(losses):  # none when the budget ran out before the first step
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window - 1, smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("Dice + BCE loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for region in REGIONS:
        ax.plot(
            [v["step"] for v in validation],
            [v[region] for v in validation],
            marker="o",
            label=region,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("validation Dice")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "val_dice.png", dpi=100)
    plt.close(fig)


def train(args: argparse.Namespace) -> dict[str, float]:
    """Train, validate, save weights, plots and metrics; return the final validation Dice."""
    from monai.losses import DiceLoss

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    # The bundle says how the pipeline normalises; training must feed the same.
    from dicomnode.pipelines.bundle import Bundle

    norm = str(Bundle(args.bundle.resolve()).raw("normalization", "nonzero"))
    common = {"normalization": norm, "native_share": args.native_share}
    train_cases = load_cases([1000 + i for i in range(args.cases)], args.cache, "train", **common)
    for name, (first_seed, options) in EXTRA_SETS.items():
        count = getattr(args, f"{name}_cases")
        if count:
            train_cases += load_cases(
                [first_seed + i for i in range(count)],
                args.cache,
                name,
                **common,
                tumour_probability=1.0,
                **options,
            )
    val_cases = load_cases([5000 + i for i in range(args.val_cases)], args.cache, "val", **common)
    network = build_network(args.bundle)
    if args.resume:
        state = torch.load(args.bundle / "models" / "model.pt", weights_only=True)
        network.load_state_dict(state)
    network.train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-5)
    dice_loss = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=True)
    bce = torch.nn.BCEWithLogitsLoss()
    history: dict[str, list[float]] = {"loss": []}
    validation: list[dict[str, float]] = []
    deadline = time.monotonic() + args.minutes * 60
    # Cosine decay over the expected number of steps; the budget stops the loop.
    progress = tqdm(range(args.iterations), desc="training", unit="step")
    for step in progress:
        if time.monotonic() > deadline:
            break
        lr = (
            args.lr
            * 0.5
            * (
                1
                + np.cos(
                    np.pi
                    * min(
                        1.0, (time.monotonic() - deadline + args.minutes * 60) / (args.minutes * 60)
                    )
                )
            )
        )
        for group in optimiser.param_groups:
            group["lr"] = max(lr, args.lr * 0.02)
        batch = [
            augment(
                *sample(train_cases[rng.integers(len(train_cases))], args, rng),
                rng,
                args.scale_jitter,
                args.shift_jitter,
            )
            for _ in range(args.batch)
        ]
        image = torch.from_numpy(np.stack([b[0] for b in batch]))
        target = torch.from_numpy(np.stack([b[1] for b in batch]))
        logits = network(image)
        loss = dice_loss(logits, target) + bce(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history["loss"].append(float(loss))
        progress.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.1e}")
        if (step + 1) % args.validate_every == 0:
            scores = validate(network, val_cases)
            validation.append({"step": step + 1, **scores})
            tqdm.write(
                f"step {step + 1}: validation Dice "
                + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            )
            save_plots(history, validation, args.plots)
            torch.save(network.state_dict(), args.bundle / "models" / "model.pt")
    scores = validate(network, val_cases)
    validation.append({"step": len(history["loss"]), **scores})
    network.eval()
    torch.save(network.state_dict(), args.bundle / "models" / "model.pt")
    save_plots(history, validation, args.plots)
    summary = {
        "steps": len(history["loss"]),
        "final_validation_dice": scores,
        "validation": validation,
    }
    (args.plots / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["final_validation_dice"]))
    return scores


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
