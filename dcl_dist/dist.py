"""Process group and collectives: the only module that touches torch.distributed.

Works the same under the deepspeed launcher, torchrun, srun (SLURM variables) and as one plain process,
which gets a gloo group of size 1 so that DeepSpeed never goes looking for MPI.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import inspect
import math
import os
import pickle
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist
import torch.distributed.nn.functional as tdist_nn


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_from_slurm() -> None:
    """Under `srun` with one task per GPU and no launcher, SLURM's variables name the rank."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_PORT", "29500")


def init(timeout_minutes: int = 30) -> None:
    """Join (or create) the process group; idempotent."""
    if tdist.is_initialized():
        return
    _env_from_slurm()
    if "RANK" not in os.environ:  # a lone process
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks on one machine share its cores: with more OpenMP threads than cores, every small matmul
        # waits on a descheduled thread (measured here: 20x slower), so each rank gets its share.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    tdist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def shutdown() -> None:
    """Leave the process group (safe to call when none exists)."""
    if tdist.is_initialized():
        tdist.destroy_process_group()


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Ranks on this machine (torchrun: LOCAL_WORLD_SIZE, deepspeed launcher: LOCAL_SIZE)."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return world_size() if os.environ.get("MASTER_ADDR", "127.0.0.1") in ("127.0.0.1", "localhost") else 1


def is_main() -> bool:
    """True on rank 0, the only rank that writes logs and artifacts."""
    return rank() == 0


def device() -> torch.device:
    """This rank's device: its GPU, or the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if tdist.is_initialized() and world_size() > 1:
        tdist.barrier()


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0, rank order, keeping the autograd graph.

    Backward sums each slice's gradient over ranks (torch.distributed.nn semantics: a reduce-scatter on NCCL, an
    all-to-all on gloo). A loss computed whole on every rank over the gathered batch therefore hands each rank
    world_size x dL/dx_rank, and a loss that each rank computes over its own rows only (losses/local_rows.py)
    hands it dL/dx_rank for the columns; losses/local_rows.py scales its gradient so that, after DeepSpeed's
    data-parallel average, the parameter gradients equal one process computing the loss on the concatenated
    batch (tests/multiproc/test_gathered_loss.py and test_local_rows.py prove both).
    Ranks may hold different numbers of rows (`sizes`: all_gather_ints of them, if already known).
    At world size 1 it returns `x` itself.
    """
    if world_size() == 1:
        return x
    sizes = sizes if sizes is not None else all_gather_ints(x.shape[0])
    longest = max(sizes)
    if longest != x.shape[0]:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = tdist_nn.all_gather(x)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


GLOO_SLAB_ELEMENTS = 1 << 18
"""gloo's all-gather (list or single tensor) receives the whole output into a flat temporary and then copies it
out: on gloo, all_gather_no_grad gathers slabs of rows so that temporary stays this many elements (1 MiB fp32),
not a second copy of the gathered batch (N x hidden in the contrastive losses)."""


def all_gather_no_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0 without gradients (embeddings, labels, ids); rows may differ per
    rank (`sizes`: all_gather_ints of them, if already known). Received straight into the one result buffer:
    NCCL in one collective, gloo in slabs of rows (GLOO_SLAB_ELEMENTS)."""
    if world_size() == 1:
        return x
    sizes = sizes if sizes is not None else all_gather_ints(x.shape[0])
    longest = max(sizes)
    padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))]) if longest != x.shape[0] else x
    padded = padded.contiguous()
    gathered = padded.new_empty((world_size() * longest, *padded.shape[1:]))
    if tdist.get_backend() == "gloo":
        parts = gathered.split(longest) if longest else []
        row_elements = world_size() * math.prod(padded.shape[1:])
        step = max(1, GLOO_SLAB_ELEMENTS // max(1, row_elements))
        for start in range(0, longest, step):  # longest is the same on every rank: so is the number of slabs
            tdist.all_gather([p[start : start + step] for p in parts], padded[start : start + step])
    else:
        tdist.all_gather_single(gathered, padded)
    if all(n == longest for n in sizes):
        return gathered
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(sizes)])


def all_gather_ints(value: int) -> list[int]:
    """One integer from every rank, in rank order."""
    if world_size() == 1:
        return [value]
    t = torch.tensor([value], dtype=torch.long, device=_collective_device())
    parts = [torch.empty_like(t) for _ in range(world_size())]
    tdist.all_gather(parts, t)
    return [int(p.item()) for p in parts]


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of a tensor over ranks (a new tensor, outside autograd; `t` itself at world size 1)."""
    if world_size() == 1:
        return t
    out = t.detach().clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Any picklable object from every rank, in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank src's object on every rank."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def sum_floats(*values: float) -> list[float]:
    """Element-wise sum of a few floats over ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    if world_size() > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.tolist()


def mean_float(value: float) -> float:
    """The mean of one float over ranks."""
    return sum_floats(value)[0] / world_size()


def any_true(flag: bool) -> bool:
    """True on every rank when any rank passes True (e.g. a stop request seen by one rank)."""
    return sum_floats(1.0 if flag else 0.0)[0] > 0


def same_on_all_ranks(obj: Any) -> bool:
    """Whether every rank holds an equal (picklable) object; used to check that weights stay in sync."""
    blobs = all_gather_object(pickle.dumps(obj))
    return all(b == blobs[0] for b in blobs)


def _collective_device() -> torch.device:
    # NCCL only moves GPU tensors; gloo only CPU ones.
    return device() if tdist.is_initialized() and tdist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------------
# Counting collectives (tests and benchmarks)

_COLLECTIVE_INPUTS = {
    "all_reduce": "tensor",
    "all_gather": "tensor",
    "all_gather_into_tensor": "input_tensor",
    "all_gather_single": "input_tensor",
    "reduce_scatter": "input_list",
    "reduce_scatter_tensor": "input",
    "all_to_all": "input_tensor_list",
    "all_to_all_single": "input",
    "broadcast": "tensor",
    "reduce": "tensor",
    "scatter": "scatter_list",
    "gather": "tensor",
    "all_gather_object": None,
    "broadcast_object_list": None,
}
"""The torch.distributed collectives counted, and the argument that holds what this rank sends into each."""


@dataclass
class CollectiveCounts:
    """Collectives this process started, by name, and the bytes of its input to them."""

    calls: collections.Counter = field(default_factory=collections.Counter)
    bytes: collections.Counter = field(default_factory=collections.Counter)

    def add(self, name: str, sent: Any) -> None:
        self.calls[name] += 1
        tensors = sent if isinstance(sent, (list, tuple)) else [sent]
        self.bytes[name] += sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


@contextlib.contextmanager
def counting_collectives() -> Iterator[CollectiveCounts]:
    """Count every collective started inside the block: ours, torch.distributed.nn's and DeepSpeed's.

    They all call torch.distributed's functions by name at call time, except two that DeepSpeed's communication
    backend looked up once at start-up (its all_gather_function and reduce_scatter_function), which are counted
    too. Bytes are what this rank hands in (an all-gather's own part, a reduction's whole buffer).
    """
    counts = CollectiveCounts()
    originals = {name: getattr(tdist, name) for name in _COLLECTIVE_INPUTS if hasattr(tdist, name)}

    def counted(name: str, fn: Any) -> Any:
        signature, argument = inspect.signature(fn), _COLLECTIVE_INPUTS[name]

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            sent = signature.bind(*args, **kwargs).arguments.get(argument) if argument else None
            counts.add(name, sent)
            return fn(*args, **kwargs)

        return wrapper

    backend = getattr(sys.modules.get("deepspeed.comm.comm"), "cdb", None)  # only if DeepSpeed is in use
    captured = {
        attr: getattr(backend, attr)
        for attr in ("all_gather_function", "reduce_scatter_function")
        if backend is not None and getattr(backend, attr, None) is not None
    }
    try:
        for name, fn in originals.items():
            setattr(tdist, name, counted(name, fn))
        for attr, fn in captured.items():
            name = next((n for n, f in originals.items() if f is fn), fn.__name__)
            if name in _COLLECTIVE_INPUTS:
                setattr(backend, attr, counted(name, fn))
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(tdist, name, fn)
        for attr, fn in captured.items():
            setattr(backend, attr, fn)
