"""Training across processes (``torchrun``), devices and mixed precision.

One :class:`Runtime` says where a training process runs: its rank among ``world_size``
processes (from the variables torchrun sets: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), its
device, and the autocast dtype of its training steps (``None`` = full precision). Without
torchrun it is one process and everything below is the identity, so a single-process CPU run
computes exactly what it computed before distribution existed.

Data are split the way ``torch.utils.data.DistributedSampler`` splits them: every rank draws the
same permutation from the shared seed, pads it by wrapping round to a multiple of the world size
(so every rank takes the same number of steps and no collective waits for a missing one) and
keeps every ``world_size``-th index from its rank on.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch import distributed as dist

from .errors import ConfigurationError

__all__ = [
    "LOCAL",
    "Runtime",
    "gather_rows",
    "interleave_shards",
    "is_main_process",
    "launch_env",
    "resolve_amp",
    "resolve_device",
    "runtime",
    "shard_indices",
    "shard_order",
]

T = TypeVar("T")

#: How long a rank waits in a collective for the others before it fails (not hangs).
TIMEOUT = dt.timedelta(minutes=30)
#: Rows moved per all-gather, so gathering a large split never needs it twice on the GPU.
_GATHER_CHUNK = 2048


@dataclass(frozen=True)
class Runtime:
    """Where one training process runs; the default is one process on the CPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates, selects and writes files; the others follow it."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision for a training step; a no-op context when it is off."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed by float16 only (bfloat16 has float32's exponent range);
        a disabled scaler calls ``optimizer.step()`` unchanged."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel when there are several processes; DDP
        broadcasts rank 0's weights and buffers on construction."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a decision all ranks must share)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_state(self, module: nn.Module) -> None:
        """Overwrite every rank's weights and buffers of ``module`` with rank 0's."""
        if not self.distributed:
            return
        comm = self.device if self.backend == "nccl" else torch.device("cpu")
        for tensor in module.state_dict().values():
            moved = tensor.to(comm)
            dist.broadcast(moved, src=0)
            if moved is not tensor:
                tensor.copy_(moved)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


#: One process on the CPU: what every function gets when no runtime is given.
LOCAL = Runtime()


def launch_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ConfigurationError(f"RANK, WORLD_SIZE, LOCAL_RANK must be integers ({exc})") from exc
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigurationError(
            f"inconsistent launch environment: RANK={rank}, WORLD_SIZE={world_size}, "
            f"LOCAL_RANK={local_rank}"
        )
    return rank, world_size, local_rank


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one): the one that prints and logs."""
    return os.environ.get("RANK", "0") == "0"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` → this process's device; under torchrun each process takes
    the GPU of its ``LOCAL_RANK`` (and makes it current, as NCCL needs)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigurationError(f"device {name!r} is not one of auto, cpu, cuda")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigurationError("--device cuda: no CUDA device is available")
    if local_rank >= torch.cuda.device_count():
        raise ConfigurationError(
            f"LOCAL_RANK {local_rank} has no GPU: {torch.cuda.device_count()} visible; start "
            "at most one process per GPU (torchrun --nproc_per_node)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def resolve_amp(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype: bfloat16 where the GPU has it natively, else float16; ``None``
    (full precision) on the CPU, and on the GPU when ``amp`` is False."""
    if device.type != "cuda":
        if amp:
            raise ConfigurationError(
                "--amp needs a CUDA device (mixed precision is not used on the CPU); "
                "drop --amp or use --device cuda"
            )
        return None
    if amp is False:
        return None
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


@contextmanager
def runtime(
    device: str = "auto", amp: bool | None = None, timeout: dt.timedelta = TIMEOUT
) -> Iterator[Runtime]:
    """This process's :class:`Runtime`, inside a process group when torchrun started several.

    The group is destroyed on the way out, also after an error: the failing rank exits, torchrun
    stops its peers, and a peer stuck in a collective fails after ``timeout`` instead of hanging.
    """
    rank, world_size, local_rank = launch_env()
    where = resolve_device(device, local_rank)
    state = Runtime(rank, world_size, local_rank, where, resolve_amp(where, amp))
    if not state.distributed:
        yield state
        return
    dist.init_process_group(
        backend=state.backend,
        timeout=timeout,
        device_id=where if where.type == "cuda" else None,
    )
    try:
        yield state
    finally:
        dist.destroy_process_group()


def shard_indices(n: int, rank: int, world_size: int) -> Tensor:
    """Indices ``rank, rank + world_size, …`` of ``n`` items: this rank's share of work that
    is done once per item (feature extraction, validation)."""
    return torch.arange(rank, max(n, rank), world_size)  # empty when n <= rank


def shard_order(
    n: int, generator: torch.Generator | None, rank: int = 0, world_size: int = 1
) -> Tensor:
    """This rank's part of one epoch's order of ``n`` items (see the module docstring).

    ``generator`` seeded alike on every rank gives every rank the same permutation (None: in
    order). With one process it is the permutation itself.
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    padded = math.ceil(n / world_size) * world_size
    if n and padded > n:
        order = order.repeat(math.ceil(padded / n))[:padded]
    return order[rank::world_size]


def interleave_shards(stacked: Tensor, n: int) -> Tensor:
    """Undo :func:`shard_indices`: ``stacked[j, r]`` is item ``j * W + r`` (rank ``r``'s
    ``j``-th, shards padded to one length); the result holds items ``0 … n-1`` in order."""
    return stacked.flatten(0, 1)[:n]


def gather_rows(rows: Tensor, n: int, state: Runtime = LOCAL) -> Tensor:
    """Every rank's rows of a split sharded by :func:`shard_indices`, in item order, on every
    rank (on the CPU). NCCL moves CUDA tensors only, so rows travel through the device."""
    if not state.distributed:
        return rows
    if rows.dtype == torch.bool:  # not every backend reduces bool
        return gather_rows(rows.to(torch.uint8), n, state).bool()
    per_rank = math.ceil(n / state.world_size)
    padded = rows.new_zeros((per_rank, *rows.shape[1:]))
    padded[: len(rows)] = rows
    comm = state.device if state.backend == "nccl" else torch.device("cpu")
    chunks = []
    for start in range(0, per_rank, _GATHER_CHUNK):
        part = padded[start : start + _GATHER_CHUNK].to(comm)
        received = [torch.empty_like(part) for _ in range(state.world_size)]
        dist.all_gather(received, part)
        chunks.append(torch.stack(received, dim=1).cpu())
    if not chunks:
        return rows.new_zeros((0, *rows.shape[1:]))
    return interleave_shards(torch.cat(chunks), n)
