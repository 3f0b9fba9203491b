"""Checkpoints: weights as safetensors beside a JSON file that says everything else.

The JSON holds the :class:`ModelConfig` (architecture, region/finding order, adjacency,
thresholds), the weights file name with its SHA-256, the training provenance and the measured
metrics. Loading checks the hash before any weight is used; nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ..errors import ConfigurationError, WeightsError
from .config import ModelConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from .anaxnet import AnaXNet

__all__ = [
    "CheckpointInfo",
    "fill",
    "load_checkpoint",
    "read_arrays",
    "read_weights",
    "resolve_checkpoint",
    "save_checkpoint",
    "sha256",
]

FORMAT = "anaxreport.checkpoint/1"

_Module = TypeVar("_Module", bound="torch.nn.Module")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself, for ``anaxreport info`` and every output."""

    config: ModelConfig
    weights_file: str
    weights_sha256: str
    weights_dtype: str
    parameters: int
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "weights": {
                "file": self.weights_file,
                "sha256": self.weights_sha256,
                "dtype": self.weights_dtype,
                "parameters": self.parameters,
            },
            "provenance": self.provenance,
            "metrics": self.metrics,
        }


def resolve_checkpoint(path: str | Path) -> Path:
    """The JSON file of a checkpoint given as its JSON, its safetensors or its folder."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.json"))
        if len(candidates) != 1:
            raise WeightsError(
                f"checkpoint folder {path} must hold exactly one .json, found {len(candidates)}"
            )
        return candidates[0]
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    return path


def save_checkpoint(
    model: AnaXNet,
    json_path: str | Path,
    *,
    provenance: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> CheckpointInfo:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; floating tensors are stored in
    ``dtype``, by default float16 (half precision halves the repository cost at no measurable
    accuracy loss)."""
    import torch
    from safetensors.torch import save_file

    dtype = torch.float16 if dtype is None else dtype
    json_path = Path(json_path)
    weights_path = json_path.with_suffix(".safetensors")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        name: (t.to(dtype) if t.is_floating_point() else t).contiguous()
        for name, t in model.state_dict().items()
    }
    save_file(state, str(weights_path), metadata={"format": FORMAT})
    info = CheckpointInfo(
        config=model.config,
        weights_file=weights_path.name,
        weights_sha256=sha256(weights_path),
        weights_dtype=str(dtype).removeprefix("torch."),
        parameters=sum(p.numel() for p in model.parameters()),
        provenance={"created": dt.datetime.now(dt.UTC).isoformat(), **provenance},
        metrics=metrics or {},
    )
    json_path.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    return info


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Parse and validate a checkpoint's JSON without touching its weights."""
    json_path = resolve_checkpoint(path)
    try:
        data = json.loads(json_path.read_text())
        if data.get("format") != FORMAT:
            raise WeightsError(f"{json_path}: format {data.get('format')!r} is not {FORMAT!r}")
        weights = data["weights"]
        return CheckpointInfo(
            config=ModelConfig.from_dict(data["config"]),
            weights_file=weights["file"],
            weights_sha256=weights["sha256"],
            weights_dtype=weights.get("dtype", "float32"),
            parameters=int(weights.get("parameters", 0)),
            provenance=data.get("provenance", {}),
            metrics=data.get("metrics", {}),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ConfigurationError) as exc:
        raise WeightsError(f"{json_path}: not a valid anaxreport checkpoint ({exc})") from exc


def read_arrays(path: str | Path) -> tuple[dict[str, np.ndarray], CheckpointInfo]:
    """A checkpoint's state dict as float32 NumPy arrays and its :class:`CheckpointInfo`,
    hash verified, without torch (the ONNX Runtime engine's load)."""
    json_path = resolve_checkpoint(path)
    info = read_checkpoint_info(json_path)
    weights_path = json_path.parent / info.weights_file
    if not weights_path.is_file():
        raise WeightsError(f"weights file {weights_path} named by {json_path.name} is missing")
    # hashing releases the GIL, so it runs beside the parse and the float conversion (a third
    # of the load); safetensors' parser is safe on any bytes, and nothing is used unchecked
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(sha256, weights_path)
        try:
            state: dict[str, np.ndarray] | SafetensorError = {
                k: (v.astype(np.float32) if v.dtype.kind == "f" else v)
                for k, v in load_file(str(weights_path)).items()
            }
        except SafetensorError as exc:
            state = exc
        actual = digest.result()
    if actual != info.weights_sha256:
        raise WeightsError(
            f"{weights_path.name}: sha256 {actual[:12]}… does not match the recorded "
            f"{info.weights_sha256[:12]}…"
        )
    if isinstance(state, SafetensorError):
        raise WeightsError(f"{weights_path.name}: unreadable safetensors ({state})") from state
    return state, info


def read_weights(path: str | Path) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """:func:`read_arrays` as torch tensors (sharing their memory)."""
    import torch

    state, info = read_arrays(path)
    return {name: torch.from_numpy(array) for name, array in state.items()}, info


def load_checkpoint(path: str | Path) -> tuple[AnaXNet, CheckpointInfo]:
    """The model in eval mode (float32) and its :class:`CheckpointInfo`, hash verified."""
    from .anaxnet import AnaXNet  # torchvision: imported only by what trains or compares

    state, info = read_weights(path)
    return fill(AnaXNet(info.config), state, info), info


def fill(model: _Module, state: dict[str, Tensor], info: CheckpointInfo) -> _Module:
    """``model`` with the checkpoint's weights, in eval mode; a mismatch is a WeightsError."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{info.weights_file} does not fit its config: {str(exc).splitlines()[0]}"
        ) from exc
    return model.eval()
