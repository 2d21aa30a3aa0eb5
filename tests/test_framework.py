"""The model pipeline framework: bundles, devices, sliding windows, OOM fallback, stage timing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dicomnode.config import PipelineConfig
from dicomnode.pipelines import JobContext, PipelineError
from dicomnode.pipelines.bundle import Bundle, load_bundle, resolve_bundle_path
from dicomnode.pipelines.inference import (
    Plan,
    Runtime,
    fallback_plans,
    resolve_device,
    run_with_fallback,
    sliding_window,
)
from dicomnode.pipelines.model import ModelPipeline

# Copies of the Model Zoo reference configurations (Apache-2.0), without weights.
MODEL_ZOO = Path(__file__).resolve().parent / "data" / "model_zoo"


def _tiny_bundle(root: Path, *, weights: bool = True) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(
        json.dumps(
            {
                "network_def": {
                    "_target_": "torch.nn.Conv3d",
                    "in_channels": 1,
                    "out_channels": 1,
                    "kernel_size": 1,
                },
                "roi": [8, 8, 8],
            }
        )
    )
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny", "version": "1.2"}))
    if weights:
        torch.manual_seed(0)
        net = torch.nn.Conv3d(1, 1, 1)
        torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


# -- devices -------------------------------------------------------------------------


def test_auto_device_is_cpu_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    runtime = Runtime.from_config("auto")
    assert runtime.device.type == "cpu"
    assert runtime.amp is False


@pytest.mark.parametrize(
    ("name", "sentence"),
    [("tpu", "not a torch device"), ("mps", "not supported"), ("cuda:7", "")],
)
def test_unusable_devices_are_named(name: str, sentence: str) -> None:
    if name.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(PipelineError, match=name) as caught:
        resolve_device(name)
    assert sentence in str(caught.value)


# -- out-of-memory fallback ----------------------------------------------------------


def test_fallback_plans_halve_then_stitch_on_cpu_then_cpu() -> None:
    gpu = Runtime(torch.device("cuda:0"), True)
    plans = fallback_plans(gpu, 4)
    assert [(p.batch_size, p.device.type, p.stitch_device.type) for p in plans] == [
        (4, "cuda", "cuda"),
        (2, "cuda", "cuda"),
        (1, "cuda", "cuda"),
        (1, "cuda", "cpu"),
        (1, "cpu", "cpu"),
    ]
    assert plans[-1].amp is False
    assert len(fallback_plans(Runtime(torch.device("cpu"), False), 4)) == 1


def test_out_of_memory_falls_back_until_a_plan_fits() -> None:
    # A GPU that runs out of memory cannot be caused on a CPU machine: simulate it.
    tried: list[Plan] = []
    messages: list[str] = []

    def attempt(plan: Plan) -> str:
        tried.append(plan)
        if plan.stitch_device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"ran with {plan.batch_size} on {plan.device}"

    result = run_with_fallback(attempt, Runtime(torch.device("cuda:0"), True), 2, messages.append)
    assert result == "ran with 1 on cuda:0"
    assert len(tried) == 3
    assert "out of GPU memory with batch 2" in messages[0]
    assert "output on cpu" in messages[-1]


def test_other_errors_are_not_retried() -> None:
    calls = []

    def attempt(plan: Plan) -> None:
        calls.append(plan)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_with_fallback(attempt, Runtime(torch.device("cuda:0"), True), 4)
    assert len(calls) == 1


def test_sliding_window_matches_whole_image_for_a_pointwise_network() -> None:
    torch.manual_seed(1)
    net = torch.nn.Conv3d(1, 2, 1).eval()
    image = torch.rand(1, 1, 20, 17, 9)
    with torch.inference_mode():
        whole = net(image)
    out = sliding_window(
        net,
        image,
        roi_size=(8, 8, 64),  # larger than the image along the last axis: cut to it
        overlap=0.5,
        batch_size=3,
        runtime=Runtime(torch.device("cpu"), False),
    )
    assert out.shape == (1, 2, 20, 17, 9)
    assert torch.allclose(out, whole, atol=1e-5)


# -- bundles -------------------------------------------------------------------------


def test_bundle_builds_its_network_and_loads_weights(tmp_path: Path) -> None:
    bundle = Bundle(_tiny_bundle(tmp_path / "tiny"))
    assert (bundle.name, bundle.version) == ("tiny", "1.2")
    assert bundle.raw("roi") == [8, 8, 8]
    net = bundle.parsed("network_def")
    bundle.load_weights(net, "cpu")
    expected = torch.load(tmp_path / "tiny" / "models" / "model.pt", weights_only=True)
    assert torch.equal(net.weight, expected["weight"])


def test_bundle_errors_are_sentences(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not found"):
        resolve_bundle_path(tmp_path / "absent", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no configs/inference.json"):
        Bundle(tmp_path / "empty")
    bundle = Bundle(_tiny_bundle(tmp_path / "noweights", weights=False))
    with pytest.raises(PipelineError, match="no weights"):
        bundle.load_weights(bundle.parsed("network_def"), "cpu")
    wrong = _tiny_bundle(tmp_path / "wrong")
    torch.save(torch.nn.Conv3d(1, 3, 1).state_dict(), wrong / "models" / "model.pt")
    bundle = Bundle(wrong)
    with pytest.raises(PipelineError, match="does not match its network_def"):
        bundle.load_weights(bundle.parsed("network_def"), "cpu")


def test_relative_bundle_paths_resolve_from_the_project(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout
    root = Path(__file__).resolve().parents[1]
    assert resolve_bundle_path(Path("tests"), "x") == root / "tests"


def test_model_zoo_brats_bundle_loads_with_its_checkpoint_layout(tmp_path: Path) -> None:
    root = tmp_path / "brats"
    shutil.copytree(MODEL_ZOO / "brats_mri_segmentation", root)
    (root / "models").mkdir()
    bundle = load_bundle(root, "unused")
    net = bundle.parsed("network_def")
    assert type(net).__name__ == "SegResNet"
    # Model Zoo checkpoints are sometimes saved as {"model": state_dict}.
    torch.save({"model": net.state_dict()}, root / "models" / "model.pt")
    bundle.load_weights(bundle.parsed("network_def"), "cpu")


# -- the stage order -----------------------------------------------------------------


class _Doubler(ModelPipeline):
    """A model pipeline whose network is the bundle's 1x1 convolution."""

    def load_model(self) -> None:
        self.network = self.bundle.parsed("network_def").eval()
        self.bundle.load_weights(self.network, self.runtime.device)

    def select(self, context: JobContext) -> int:
        return 3

    def load(self, selected: int, context: JobContext) -> torch.Tensor:
        return torch.ones(1, 1, selected, selected, selected)

    def preprocess(self, loaded: torch.Tensor, context: JobContext) -> torch.Tensor:
        return loaded * 2

    def infer(self, prepared: torch.Tensor, context: JobContext) -> torch.Tensor:
        roi = self.bundle.raw("roi")
        return sliding_window(
            self.network, prepared, roi_size=roi, overlap=0.25, batch_size=1, runtime=self.runtime
        )

    def postprocess(self, raw: Any, prepared: Any, loaded: Any, context: JobContext) -> float:
        return float(raw.mean())

    def write(self, findings: float, loaded: Any, context: JobContext) -> list[Any]:
        context.log(f"mean {findings:.4f}", stage="write")
        return []


def _context(tmp_path: Path, events: list[tuple[str, str, float | None]], **kw: Any) -> JobContext:
    return JobContext(
        job_id=1,
        study_instance_uid="1.2.3",
        series=[],
        work_dir=tmp_path,
        event_sink=lambda stage, message, duration, level: events.append(
            (stage, message, duration)
        ),
        **kw,
    )


def test_model_pipeline_times_each_stage_in_order(tmp_path: Path) -> None:
    root = _tiny_bundle(tmp_path / "tiny")
    pipeline = _Doubler("doubler", PipelineConfig(bundle=root))
    events: list[tuple[str, str, float | None]] = []
    assert pipeline.run(_context(tmp_path, events)) == []
    timed = [stage for stage, _, duration in events if duration is not None]
    assert timed == ["select", "load", "preprocess", "infer", "postprocess", "write"]
    assert "tiny 1.2 on cpu" in dict((s, m) for s, m, _ in events)["infer"]
    weight, bias = (float(p.detach()) for p in (pipeline.network.weight, pipeline.network.bias))
    logged = [m for s, m, d in events if d is None]
    assert logged == [f"mean {2 * weight + bias:.4f}"]


def test_model_pipeline_stops_when_cancelled(tmp_path: Path) -> None:
    pipeline = _Doubler("doubler", PipelineConfig(bundle=_tiny_bundle(tmp_path / "tiny")))
    events: list[tuple[str, str, float | None]] = []
    with pytest.raises(PipelineError, match="cancelled"):
        pipeline.run(_context(tmp_path, events, cancelled=lambda: True))
    assert [s for s, _, _ in events] == ["select"]
