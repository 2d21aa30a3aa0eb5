"""Evaluate the fundus_dr bundle on held-out synthetic photographs.

    python -m train.fundus.evaluate [--bundle models/fundus_dr] [--count 1000]

Held-out photographs come from a seed range training never used, drawn at
512 px (training drew 320 px) and preprocessed as the pipeline does. Prints
quadratic weighted kappa, referable-DR ROC AUC (score: P(grade >= moderate)),
accuracy and the confusion matrix; then the review-flag rate on sharp
photographs and on degraded ones (defocused, half dark). Writes
``docs/heldout_confusion.png``, ``docs/entropy.png`` and ``docs/evaluation.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dicomnode.pipelines.bundle import Bundle
from dicomnode.pipelines.fundus_dr.inference import GRADE_NAMES, predict, predictive_entropy
from train.fundus.data import HELD_OUT_SEEDS, FundusSet, make_set
from train.fundus.metrics import confusion, plot_confusion, quadratic_kappa, roc_auc


def probabilities_of(network: torch.nn.Module, data: FundusSet, tta: list[str]) -> np.ndarray:
    return np.concatenate(
        [
            predict(network, torch.from_numpy(data.floats(slice(s, s + 64))), tta)
            for s in range(0, len(data.grades), 64)
        ]
    )


def plot_entropy(clean: np.ndarray, degraded: np.ndarray, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, np.log(5), 40).tolist()
    ax.hist(clean, bins=bins, alpha=0.6, label="sharp, well exposed")
    ax.hist(degraded, bins=bins, alpha=0.6, label="defocused or half dark")
    ax.axvline(threshold, color="k", linestyle="--", label=f"review threshold {threshold:g}")
    ax.set_xlabel("predictive entropy (nats, TTA mean)")
    ax.set_ylabel("photographs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/fundus_dr"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--degraded", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared box)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = Bundle(args.bundle.resolve())
    network = bundle.parsed("network_def")
    bundle.load_weights(network, torch.device("cpu"))
    network.eval()
    size = int(bundle.raw("image_size"))
    tta = [str(t) for t in bundle.raw("tta")]
    threshold = float(bundle.raw("review_entropy_threshold"))
    referable_from = int(bundle.raw("referable_min_grade"))

    clean = make_set(
        args.count, HELD_OUT_SEEDS, photo_size=512, image_size=size, description="held-out"
    )
    spoilt = make_set(
        args.degraded,
        HELD_OUT_SEEDS + 500_000,
        photo_size=512,
        image_size=size,
        degraded_fraction=1.0,
        description="degraded",
    )
    p_clean = probabilities_of(network, clean, tta)
    p_spoilt = probabilities_of(network, spoilt, tta)
    predicted = p_clean.argmax(1)
    matrix = confusion(clean.grades, predicted)
    referable = clean.grades >= referable_from
    h_clean, h_spoilt = predictive_entropy(p_clean), predictive_entropy(p_spoilt)
    result = {
        "held_out_photographs": int(len(clean.grades)),
        "quadratic_weighted_kappa": round(quadratic_kappa(clean.grades, predicted), 4),
        "referable_dr_auc": round(roc_auc(referable, p_clean[:, referable_from:].sum(1)), 4),
        "accuracy": round(float((predicted == clean.grades).mean()), 4),
        "review_threshold_nats": threshold,
        "review_rate_sharp": round(float((h_clean > threshold).mean()), 4),
        "review_rate_degraded": round(float((h_spoilt > threshold).mean()), 4),
        "degraded_photographs": int(len(spoilt.grades)),
        "tta": tta,
        "confusion_matrix": matrix.tolist(),
    }
    docs = args.bundle / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    plot_confusion(
        matrix,
        GRADE_NAMES,
        f"held-out synthetic (kappa {result['quadratic_weighted_kappa']:.3f})",
        docs / "heldout_confusion.png",
    )
    plot_entropy(h_clean, h_spoilt, threshold, docs / "entropy.png")
    (docs / "evaluation.json").write_text(json.dumps(result, indent=1))
    print("confusion matrix (rows: truth none..proliferative, columns: predicted):")
    print(matrix)
    for key in (
        "quadratic_weighted_kappa",
        "referable_dr_auc",
        "accuracy",
        "review_rate_sharp",
        "review_rate_degraded",
    ):
        print(f"{key:<26} {result[key]}")


if __name__ == "__main__":
    main()
