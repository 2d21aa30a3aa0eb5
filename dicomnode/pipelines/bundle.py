"""MONAI bundles as data: the network definition, its weights, its metadata.

A bundle directory holds ``configs/inference.json`` (or ``.yaml``),
``configs/metadata.json``, ``models/model.pt`` and ``docs/README.md``. The
pipelines take from it the network definition (``network_def``) and the
parameters they need (patch size, intensity window, thresholds) by key, and
do their own loading from DICOM; the bundle's own data loaders (files from a
data set list) are never run.

Relative bundle paths resolve against the working directory first, then
``$DICOMNODE_HOME`` (the container images set it to where ``models/`` was
copied), then the project checkout, so ``bundle = "models/x"`` works from
anywhere in a development install.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.pipelines.base import PipelineError

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def resolve_bundle_path(configured: Path | None, default: str | Path) -> Path:
    """The bundle directory for a pipeline: *configured*, else ``models/<default>``.

    An absolute *default* (a bundle shipped inside a plugin package) is used as it is.
    """
    path = Path(configured) if configured is not None else Path("models") / default
    roots = [
        Path.cwd(),
        *([Path(os.environ["DICOMNODE_HOME"])] if os.environ.get("DICOMNODE_HOME") else []),
        _PROJECT_ROOT,
    ]
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise PipelineError(f"model bundle {path} not found (looked in {tried})")


def bundle_identity(root: Path) -> str:
    """``name version`` of the bundle at *root* from its metadata, without loading it.

    The same words as :attr:`Bundle.name` and :attr:`Bundle.version`: backfill
    compares it with the ``model`` recorded on finished jobs.
    """
    try:
        metadata = json.loads((root / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        metadata = {}
    return f"{metadata.get('name') or root.name} {metadata.get('version') or '0'}"


@dataclass
class Bundle:
    """A loaded bundle configuration (weights are loaded on request).

    Parameters
    ----------
    root
        The bundle directory.
    """

    root: Path
    metadata: dict[str, Any] = field(init=False)
    _parser: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from monai.bundle import ConfigParser

        configs = self.root / "configs"
        config_file = next((configs / n for n in _CONFIG_NAMES if (configs / n).is_file()), None)
        if config_file is None:
            raise PipelineError(f"bundle {self.root}: no configs/inference.json")
        metadata_file = configs / "metadata.json"
        try:
            self.metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
            parser = ConfigParser()
            parser.read_config(str(config_file))
        except (OSError, ValueError) as exc:
            raise PipelineError(
                f"bundle {self.root}: cannot read its configuration: {exc}"
            ) from None
        # Expressions such as "$@bundle_root + '/models'" must see the real directory.
        parser["bundle_root"] = str(self.root)
        self._parser = parser

    @property
    def name(self) -> str:
        """Model name for results: metadata ``name``, else the directory name."""
        return str(self.metadata.get("name") or self.root.name)

    @property
    def version(self) -> str:
        """Model version for results."""
        return str(self.metadata.get("version") or "0")

    def __contains__(self, key: str) -> bool:
        return key in self._parser

    def raw(self, key: str, default: Any = None) -> Any:
        """The configuration item *key* as written (no references resolved)."""
        return self._parser.get(key, default) if key in self._parser else default

    def parsed(self, key: str, default: Any = None) -> Any:
        """The configuration item *key* with references and expressions evaluated.

        ``network_def`` gives a new network instance each call.
        """
        if key not in self._parser:
            return default
        try:
            return self._parser.get_parsed_content(key, instantiate=True, lazy=False)
        except Exception as exc:  # monai wraps import and instantiation errors variously
            raise PipelineError(f"bundle {self.root.name}: cannot build {key!r}: {exc}") from None

    def load_network(self, device: Any) -> Any:
        """``network_def`` with ``models/model.pt`` loaded, on *device*, in eval mode.

        Raises
        ------
        PipelineError
            The bundle has no ``network_def``, no weights, or weights of another network.
        """
        network = self.parsed("network_def")
        if network is None:
            raise PipelineError(f"bundle {self.root.name}: no network_def")
        self.load_weights(network, device)
        return network.to(device).eval()

    def weights_path(self) -> Path:
        """``models/model.pt``."""
        return self.root / "models" / "model.pt"

    def load_weights(self, network: Any, device: Any) -> None:
        """Load ``models/model.pt`` into *network* (plain state dict or ``{"model": ...}``)."""
        import torch

        path = self.weights_path()
        if not path.is_file():
            raise PipelineError(f"bundle {self.root.name}: no weights at models/model.pt")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise PipelineError(
                f"bundle {self.root.name}: cannot load models/model.pt: {exc}"
            ) from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise PipelineError(
                f"bundle {self.root.name}: models/model.pt does not match its network_def: {first}"
            ) from None


def load_bundle(configured: Path | None, default: str | Path) -> Bundle:
    """Resolve and read a bundle directory (see :func:`resolve_bundle_path`)."""
    return Bundle(resolve_bundle_path(configured, default))
