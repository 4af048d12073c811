"""Process-group state of a multi-process run (``torchrun``), on ``torch.distributed``.

A plain process (no ``torchrun``) is a world of one: every helper here is then a no-op that
returns its input, nothing is initialised, and ``mulact-train`` behaves exactly as without
this module. Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables in the environment) :func:`init` joins the process group:

- **CUDA**: backend NCCL, one GPU per local rank (``cuda:<LOCAL_RANK>``), plus a gloo group
  for the CPU-side collectives (confusion matrices, pool statistics, Python objects), so
  large host tables never have to be copied to the GPU to be reduced;
- **CPU**: backend gloo for everything.

Every collective runs under the process group's timeout (``timeout_s``, default 30 min,
``--dist-timeout``): when a rank dies or stalls, the others stop with
:class:`DistributedError` naming the collective, this rank and the timeout, instead of hanging.
(NCCL enforces it through its asynchronous error handling, which torch enables by default.)

Sharding is **batch-granular**: :func:`shard_batches` cuts the global list into the batches a
single process would form and deals whole batches round-robin to the ranks, so every image is
processed in exactly the same batch as in a one-process run. Forward passes — whose float
results may depend on the batch they run in — are therefore bitwise those of one process, and
the reductions below (zero-filled tables summed across ranks, per-batch partials gathered and
summed in batch order) make sharded results identical to unsharded ones.
"""
from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = [
    "DistributedError",
    "env_world_size",
    "init",
    "shutdown",
    "is_initialized",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "barrier",
    "local_batch_size",
    "shard_batches",
    "all_reduce_sum",
    "all_gather_objects",
    "broadcast_object",
    "DEFAULT_TIMEOUT_S",
]

DEFAULT_TIMEOUT_S = 1800.0

_state = {"cpu_group": None, "timeout_s": DEFAULT_TIMEOUT_S, "owned": False}


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died, stalled or diverged."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment: {name}={value!r} is not an integer (set by torchrun)") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    return _env_int("WORLD_SIZE") or 1


def init(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group when launched with ``WORLD_SIZE > 1``; return this rank's device.

    ``device``: ``'auto'`` (CUDA when available), ``'cpu'`` or ``'cuda'``. Under torchrun with
    CUDA each rank takes ``cuda:<LOCAL_RANK>``; an explicit index (``cuda:1``) is refused
    there, since ranks would collide on one GPU. Idempotent.
    """
    if timeout_s is None or not timeout_s > 0:
        raise ValueError(f"dist_timeout: expected a positive number of seconds, got {timeout_s!r}")
    world = env_world_size()
    want_cuda = device == "auto" and torch.cuda.is_available() or str(device).startswith("cuda")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    if world <= 1:
        if device == "auto":
            return torch.device("cuda" if want_cuda else "cpu")
        return torch.device(device)
    r, lr = _env_int("RANK"), _env_int("LOCAL_RANK")
    if r is None or lr is None:
        raise ValueError(f"environment: WORLD_SIZE={world} but RANK/LOCAL_RANK are not set; "
                         "launch multi-process runs with torchrun")
    if want_cuda:
        if device not in ("auto", "cuda"):
            raise ValueError(f"device: {device!r} names one GPU, but under torchrun every rank takes "
                             f"cuda:<LOCAL_RANK>; use --device cuda or auto")
        if lr >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={lr} but this node has {torch.cuda.device_count()} GPU(s); "
                             "use --nproc-per-node <= the number of GPUs")
        dev = torch.device("cuda", lr)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if dist.is_initialized():
        return dev
    timeout = datetime.timedelta(seconds=float(timeout_s))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kw = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=timeout, **kw)
    _state.update(timeout_s=float(timeout_s), owned=True,
                  cpu_group=dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None)
    log.info("rank %d/%d (local %d) joined the %s process group on %s", dist.get_rank(),
             dist.get_world_size(), lr, backend, dev)
    return dev


def shutdown() -> None:
    """Leave the process group if :func:`init` created it."""
    if _state["owned"] and dist.is_initialized():
        dist.destroy_process_group()
    _state.update(cpu_group=None, owned=False)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return (_env_int("LOCAL_RANK") or 0) if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


@contextmanager
def _collective(what: str):
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, dist.DistBackendError) as err:  # gloo/NCCL report peers lost or timeouts so
        raise DistributedError(
            f"rank {rank()}/{world_size()}: collective {what!r} failed ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}). Another rank probably died or "
            f"stalled for longer than the timeout ({_state['timeout_s']:.0f} s, --dist-timeout); "
            "stop every rank and rerun the same command to resume") from err


def _cpu_group():
    return _state["cpu_group"]


def barrier(what: str = "barrier") -> None:
    """Wait for every rank (CPU/gloo group, so no GPU work is queued)."""
    if world_size() == 1:
        return
    with _collective(what):
        dist.barrier(group=_cpu_group())


def local_batch_size(global_batch: int, world: int | None = None) -> int:
    """This rank's share of a global batch; a clear error when it does not divide."""
    world = world_size() if world is None else int(world)
    if global_batch % world:
        raise ValueError(f"batch_size: the global batch {global_batch} does not divide by the {world} ranks of "
                         f"this run; use a multiple of {world} (e.g. {world * max(global_batch // world, 1)}) "
                         "or another --nproc-per-node")
    return global_batch // world


def shard_batches(items, batch_size: int, rank_: int | None = None, world: int | None = None) -> list[list]:
    """The batches of ``items`` (consecutive, as one process forms them) owned by this rank.

    Batch ``j`` goes to rank ``j % world``; each rank gets a list of batches (lists).
    """
    items = list(items)
    rank_ = rank() if rank_ is None else int(rank_)
    world = world_size() if world is None else int(world)
    batches = [items[i:i + batch_size] for i in range(0, len(items), max(int(batch_size), 1))]
    return batches[rank_::world]


def all_reduce_sum(tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it). CPU tensors use the gloo group."""
    if world_size() == 1:
        return tensor
    group = _cpu_group() if tensor.device.type == "cpu" else None
    with _collective(what):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_gather_objects(obj, what: str = "all_gather") -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled, CPU group)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    with _collective(what):
        dist.all_gather_object(out, obj, group=_cpu_group())
    return out


def broadcast_object(obj, src: int = 0, what: str = "broadcast"):
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    with _collective(what):
        dist.broadcast_object_list(box, src=src, group=_cpu_group())
    return box[0]
