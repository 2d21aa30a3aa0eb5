"""Train the fundus_dr bundle's network on synthetic fundus photographs.

    python -m train.fundus.train [--train-size 4500] [--epochs 8] [--out models/fundus_dr]

Writes ``<out>/models/model.pt`` (the best epoch by validation kappa),
``<out>/docs/training_curves.png``, ``<out>/docs/validation_confusion.png`` and
``<out>/docs/training_history.json``. Degraded photographs (defocused, half
dark) are trained toward a uniform distribution, so the network says "I do
not know" on them and the pipeline's entropy flag fires.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dicomnode.pipelines.bundle import Bundle
from dicomnode.pipelines.fundus_dr.inference import GRADE_NAMES, predict, predictive_entropy
from train.fundus.data import TRAIN_SEEDS, VALIDATION_SEEDS, FundusSet, make_set
from train.fundus.metrics import confusion, plot_confusion, plot_curves, quadratic_kappa


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/fundus_dr"))
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--validation-size", type=int, default=500)
    parser.add_argument("--degraded-fraction", type=float, default=0.12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared box)")
    return parser.parse_args(argv)


def soft_targets(data: FundusSet, index: np.ndarray) -> torch.Tensor:
    """One-hot grades; uniform for degraded (ungradable) photographs."""
    targets = np.eye(5, dtype=np.float32)[data.grades[index]]
    targets[data.degraded[index]] = 1.0 / 5.0
    return torch.from_numpy(targets)


def augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flips and quarter turns (the fundus has no fixed up in these phantoms)."""
    if rng.uniform() < 0.5:
        batch = torch.flip(batch, (3,))
    if rng.uniform() < 0.5:
        batch = torch.flip(batch, (2,))
    return torch.rot90(batch, int(rng.integers(4)), (2, 3))


def train_epoch(
    network: torch.nn.Module,
    data: FundusSet,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
    batch_size: int,
    rng: np.random.Generator,
    epoch: int,
) -> float:
    network.train()
    order = rng.permutation(len(data.grades))
    losses = []
    bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch}", unit="batch")
    for start in bar:
        index = order[start : start + batch_size]
        inputs = augment(torch.from_numpy(data.floats(index)), rng)
        log_p = torch.log_softmax(network(inputs), dim=1)
        loss = -(soft_targets(data, index) * log_p).sum(dim=1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return float(np.mean(losses))


def validate(network: torch.nn.Module, data: FundusSet) -> dict[str, Any]:
    network.eval()
    probabilities = np.concatenate(
        [
            predict(network, torch.from_numpy(data.floats(slice(s, s + 64))))
            for s in range(0, len(data.grades), 64)
        ]
    )
    clean = ~data.degraded
    index = np.arange(len(data.grades))
    log_p = np.log(np.clip(probabilities, 1e-12, 1))
    loss = float(-(soft_targets(data, index).numpy() * log_p).sum(1).mean())
    predicted = probabilities.argmax(1)
    entropy = predictive_entropy(probabilities)
    return {
        "loss": loss,
        "accuracy": float((predicted[clean] == data.grades[clean]).mean()),
        "kappa": quadratic_kappa(data.grades[clean], predicted[clean]),
        "entropy_clean": float(entropy[clean].mean()),
        "entropy_degraded": float(entropy[~clean].mean()) if (~clean).any() else 0.0,
        "confusion": confusion(data.grades[clean], predicted[clean]),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    bundle = Bundle(args.out.resolve())
    size = int(bundle.raw("image_size"))
    docs = args.out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    train = make_set(
        args.train_size,
        TRAIN_SEEDS,
        image_size=size,
        degraded_fraction=args.degraded_fraction,
        description="training set",
    )
    validation = make_set(
        args.validation_size,
        VALIDATION_SEEDS,
        image_size=size,
        degraded_fraction=args.degraded_fraction,
        description="validation set",
    )
    network = bundle.parsed("network_def")
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-args.train_size // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=steps)
    history: dict[str, list[float]] = {
        k: [] for k in ("epoch", "train_loss", "val_loss", "val_kappa", "val_accuracy")
    }
    best = -1.0
    weights = args.out / "models" / "model.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, args.epochs + 1):
        train_loss = train_epoch(network, train, optimiser, scheduler, args.batch_size, rng, epoch)
        result = validate(network, validation)
        for key, value in (
            ("epoch", epoch),
            ("train_loss", train_loss),
            ("val_loss", result["loss"]),
            ("val_kappa", result["kappa"]),
            ("val_accuracy", result["accuracy"]),
        ):
            history[key].append(float(value))
        print(
            f"epoch {epoch}: train loss {train_loss:.3f}, val loss {result['loss']:.3f}, "
            f"kappa {result['kappa']:.3f}, accuracy {result['accuracy']:.3f}, entropy clean "
            f"{result['entropy_clean']:.2f} / degraded {result['entropy_degraded']:.2f}",
            flush=True,
        )
        if result["kappa"] > best:
            best = result["kappa"]
            torch.save(network.state_dict(), weights)
            plot_confusion(
                result["confusion"],
                GRADE_NAMES,
                f"validation, epoch {epoch} (kappa {best:.3f})",
                docs / "validation_confusion.png",
            )
        plot_curves(history, docs / "training_curves.png")
    minutes = (time.monotonic() - started) / 60.0
    summary = {"history": history, "best_val_kappa": best, "minutes": round(minutes, 1)}
    (docs / "training_history.json").write_text(json.dumps(summary, indent=1))
    print(f"best validation kappa {best:.3f}; {minutes:.1f} min; weights in {weights}")


if __name__ == "__main__":
    main()
