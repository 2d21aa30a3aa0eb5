"""fundus_dr throughput: photographs per second through the whole pipeline.

A synthetic OP study (both eyes, ``--per-eye`` JPEG photographs each, ``--size``
pixels square) goes through :class:`FundusDR` as a worker runs it: JPEG
decoding, field-of-view crop, test-time augmentation (uncertainty), Grad-CAM,
the Secondary Capture overlays and the SR. Reference in the same run: the
same pipeline with uncertainty and heat maps off (one forward pass, SR only).
Median of ``--rounds``; the per-stage split of the last round is printed.

Usage: ``python bench/fundus.py [--device cpu|cuda] [--threads 1] [--per-eye 8] [--size 1024]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py must not shadow the standard library's queue module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from dicomnode.config import PipelineConfig  # noqa: E402
from dicomnode.pipelines import JobContext, SeriesInput, pipeline_class  # noqa: E402
from dicomnode.synthetic.fundus import write_fundus_study  # noqa: E402


def build(device: str, uncertainty: bool) -> Any:
    extra = {} if uncertainty else {"tta": ["none"], "heat_maps": False}
    config = PipelineConfig.model_validate({"device": device, **extra})
    return pipeline_class("fundus_dr")("fundus_dr", config)


def one_round(pipeline: Any, paths: list[Path], study: str, work: Path) -> tuple[float, dict]:  # type: ignore[type-arg]
    stages: dict[str, float] = {}

    def sink(stage: str, message: str, duration: float | None, level: str) -> None:
        if duration is not None:
            stages[stage] = stages.get(stage, 0.0) + duration

    series = [SeriesInput("1.2.3", "OP", None, {}, tuple(paths))]
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipeline.run(JobContext(1, study, series, work, event_sink=sink))
    return time.perf_counter() - start, stages


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--per-eye", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        truth = write_fundus_study(
            Path(tmp) / "in", {"R": 2, "L": 0}, seed=5, size=args.size, images_per_eye=args.per_eye
        )
        paths = [i.path for i in truth.images]
        print(
            f"{len(paths)} photographs {args.size}x{args.size} JPEG, device {args.device}, "
            f"{args.threads} CPU thread(s), {torch.__version__}"
        )
        results = {}
        for name, uncertainty in (
            ("TTA x4 + Grad-CAM + SC", True),
            ("single pass, SR only", False),
        ):
            pipeline = build(args.device, uncertainty)
            one_round(pipeline, paths[:2], truth.study_instance_uid, Path(tmp) / "warm")
            times = []
            for n in range(args.rounds):
                seconds, stages = one_round(
                    pipeline, paths, truth.study_instance_uid, Path(tmp) / f"{name[:4]}{n}"
                )
                times.append(seconds)
            median = statistics.median(times)
            results[name] = median
            split = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            print(f"{name:<24} {len(paths) / median:6.2f} images/s  ({median:.2f} s; {split})")
        full, plain = results.values()
        print(f"uncertainty + explanation cost: {full / plain:.2f}x the single pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
