"""Where and how a network runs: device choice, AMP, sliding windows, OOM fallback.

``device = "auto"`` takes the first CUDA device when there is one (with
mixed precision), else the CPU. A GPU that runs out of memory does not fail
the job: :func:`run_with_fallback` retries with a smaller window batch, then
with the stitched output kept in host memory, and last entirely on the CPU,
logging each step into the job's timeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dicomnode.pipelines.base import PipelineError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """The device a pipeline's network lives on, and whether it uses AMP."""

    device: torch.device
    amp: bool

    @classmethod
    def from_config(cls, device: str = "auto", amp: bool | None = None) -> Runtime:
        """``device``: "auto", "cpu", "cuda" or "cuda:N"; ``amp`` defaults to on for CUDA."""
        resolved = resolve_device(device)
        return cls(
            resolved, resolved.type == "cuda" if amp is None else amp and resolved.type == "cuda"
        )

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision on CUDA when enabled; nothing on the CPU."""
        import torch

        context: Any = (
            torch.autocast(device_type="cuda", dtype=torch.float16) if self.amp else nullcontext()
        )
        with context:
            yield


def resolve_device(name: str) -> torch.device:
    """A torch device from a config value; PipelineError for an unusable one."""
    import torch

    text = (name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise PipelineError(
            f"device {name!r} is not a torch device (use auto, cpu or cuda:N)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"device {name!r} asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) present")
    elif device.type != "cpu":
        raise PipelineError(f"device {name!r} is not supported (use auto, cpu or cuda:N)")
    return device


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether *exc* is a device out-of-memory error."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class Plan:
    """One way to run: window batch size, device for windows, device for the stitched output."""

    batch_size: int
    device: torch.device
    stitch_device: torch.device
    amp: bool

    def autocast(self) -> Any:
        """Mixed precision as this plan says (the CPU fallback plan has none)."""
        return Runtime(self.device, self.amp).autocast()


@contextmanager
def placed(network: Any, plan: Plan, runtime: Runtime) -> Iterator[Any]:
    """*network* moved to the plan's device for one attempt, and back to the runtime's after.

    A fallback plan may move the network to the CPU; the next job must find it
    where the pipeline keeps it. Objects that are not modules are used as they are.
    """
    import torch

    if not isinstance(network, torch.nn.Module):
        yield network
        return
    try:
        yield network.to(plan.device)
    finally:
        network.to(runtime.device)


def fallback_plans(runtime: Runtime, batch_size: int) -> list[Plan]:
    """Plans from fastest to most frugal: halve the batch, stitch on the CPU, then all CPU."""
    import torch

    cpu = torch.device("cpu")
    if runtime.device.type == "cpu":
        return [Plan(max(1, batch_size), cpu, cpu, False)]
    plans, size = [], max(1, batch_size)
    while True:
        plans.append(Plan(size, runtime.device, runtime.device, runtime.amp))
        if size == 1:
            break
        size //= 2
    plans.append(Plan(1, runtime.device, cpu, runtime.amp))
    plans.append(Plan(1, cpu, cpu, False))
    return plans


def run_with_fallback(
    attempt: Callable[[Plan], T],
    runtime: Runtime,
    batch_size: int,
    log: Callable[[str], None] = lambda _: None,
) -> T:
    """Call ``attempt(plan)`` with each plan of :func:`fallback_plans` until one fits in memory."""
    import torch

    plans = fallback_plans(runtime, batch_size)
    for n, plan in enumerate(plans):
        try:
            return attempt(plan)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc) or n == len(plans) - 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            following = plans[n + 1]
            log(
                f"out of GPU memory with batch {plan.batch_size} on {plan.device}; retrying with "
                f"batch {following.batch_size} on {following.device}, output on {following.stitch_device}"
            )
    raise AssertionError("unreachable")


def sliding_window(
    network: Callable[[Any], Any],
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float,
    batch_size: int,
    runtime: Runtime,
    mode: str = "gaussian",
    log: Callable[[str], None] = lambda _: None,
) -> torch.Tensor:
    """Sliding-window inference of *network* on ``(1, C, *spatial)`` *image*; output on the CPU.

    Windows larger than the image are cut down to it, so a small volume runs in one
    window without padding work.
    """
    import torch
    from monai.inferers import sliding_window_inference

    roi = [min(int(r), int(s)) for r, s in zip(roi_size, image.shape[2:], strict=True)]

    def attempt(plan: Plan) -> torch.Tensor:
        with placed(network, plan, runtime) as module, torch.inference_mode(), plan.autocast():
            out = sliding_window_inference(
                image,
                roi_size=roi,
                sw_batch_size=plan.batch_size,
                predictor=module,
                overlap=overlap,
                mode=mode,
                sw_device=plan.device,
                device=plan.stitch_device,
            )
        return out.float().cpu()  # type: ignore[union-attr]

    return run_with_fallback(attempt, runtime, batch_size, log)
