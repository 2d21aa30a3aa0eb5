"""Brain tumour pipeline benchmark: time per stage for a 4 x 240x240x155 MR study.

A synthetic head MR study with four co-registered 1 mm series of 240x240x155
(the BraTS shape) is written to a temporary folder and run through the
``brain_tumor`` pipeline as a worker would (select → load → preprocess →
infer → postprocess → write), once with the shipped bundle and once with the
Model Zoo ``brats_mri_segmentation`` network shape (init_filters 16, random
weights: timing only). Reference figures: the SPEC's SegResNet (BraTS bundle
shape) on one 4x240x240x155 volume on CPU, 18.7 s; the Model Zoo's published
inference time, 435 ms per volume on an A100 with AMP.

Usage: ``python bench/brain_tumor.py [--rounds 1] [--threads 1] [--device auto]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py must not shadow the standard library's queue module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dicomnode.config import PipelineConfig  # noqa: E402
from dicomnode.pipelines.base import JobContext, SeriesInput  # noqa: E402
from dicomnode.pipelines.brain_tumor import BrainTumorPipeline  # noqa: E402
from dicomnode.pipelines.bundle import Bundle  # noqa: E402
from dicomnode.pipelines.model import STAGES  # noqa: E402
from dicomnode.synthetic.mr import ROLES, Geometry, write_mr_study  # noqa: E402
from train.brain.evaluate import series_inputs  # noqa: E402

CPU_REFERENCE_S = 18.7  # SPEC: SegResNet, BraTS bundle shape, one 4x240x240x155 volume, CPU
GPU_REFERENCE_S = 0.435  # Model Zoo brats_mri_segmentation: A100, AMP
MODEL_ZOO = ROOT / "tests" / "data" / "model_zoo" / "brats_mri_segmentation"


def brats_study(folder: Path) -> list[SeriesInput]:
    """Four 240x240x155 series at 1 mm, one Frame of Reference; as a worker sees them."""
    grid = Geometry.covering((0.0, 0.0, 0.0), (240, 240, 155), (1.0, 1.0), 1.0)
    truth = write_mr_study(folder, seed=3, geometries={role: grid for role in ROLES})
    return series_inputs(truth)


def model_zoo_bundle(folder: Path) -> Path:
    """The Model Zoo configuration with random weights (the network's shape is what is timed)."""
    bundle = folder / "brats_mri_segmentation"
    shutil.copytree(MODEL_ZOO, bundle)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(Bundle(bundle).parsed("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def time_stages(
    pipeline: BrainTumorPipeline, series: list[SeriesInput], work: Path
) -> dict[str, float]:
    """Seconds per stage of one run (from the job timeline events)."""
    durations: dict[str, float] = {}

    def sink(stage: str, _message: str, duration: float | None, _level: str) -> None:
        if duration is not None:
            durations[stage] = duration

    work.mkdir(parents=True, exist_ok=True)
    pipeline.run(JobContext(1, "1.2.3", series, work, event_sink=sink))
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")
    parser.add_argument("--skip-model-zoo", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        series = brats_study(folder / "study")
        print(
            f"data: 4 MR series 240x240x155 at 1 mm (written in {time.perf_counter() - start:.1f} s)"
        )
        bundles = {"shipped brain_tumor_mri": None}
        if not args.skip_model_zoo:
            bundles["Model Zoo shape (random weights)"] = model_zoo_bundle(folder)  # type: ignore[assignment]
        results: dict[str, dict[str, float]] = {}
        for name, bundle in bundles.items():
            config = PipelineConfig(bundle=bundle, device=args.device)
            pipeline = BrainTumorPipeline("brain_tumor", config)
            # On a GPU the first run warms up (CUDA context, cuDNN, allocator) and is dropped.
            warm = 1 if pipeline.runtime.device.type == "cuda" else 0
            runs = [
                time_stages(pipeline, series, folder / f"work-{name[:4]}-{n}")
                for n in range(args.rounds + warm)
            ][warm:]
            results[name] = {s: statistics.median(r[s] for r in runs) for s in STAGES}
            device = pipeline.runtime.device
            amp = pipeline.runtime.amp
        print(f"device: {device}{' (AMP)' if amp else ''}, torch threads {torch.get_num_threads()}")
        print(f"{'stage':<12}" + "".join(f"{name:>34}" for name in results))
        for stage in STAGES:
            print(f"{stage:<12}" + "".join(f"{r[stage]:>33.2f}s" for r in results.values()))
        print(f"{'total':<12}" + "".join(f"{sum(r.values()):>33.2f}s" for r in results.values()))
        zoo = results.get("Model Zoo shape (random weights)")
        if zoo is not None:
            reference, where = (
                (GPU_REFERENCE_S, "Model Zoo published, A100 + AMP")
                if device.type == "cuda"
                else (CPU_REFERENCE_S, "SPEC reference, CPU")
            )
            print(
                f"Model Zoo shape inference {zoo['infer']:.2f} s vs {reference:.3f} s ({where}): "
                f"ratio {zoo['infer'] / reference:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
