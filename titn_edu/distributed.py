"""Training on several processes at once: ``torchrun`` and ``DistributedDataParallel`` (DDP).

One command trains on every GPU of a machine (NCCL), or on several processes of a CPU (gloo)::

    torchrun --standalone --nproc_per_node=4 -m titn_edu train --preset paper-cifar10 --output runs/c10

``torchrun`` starts the processes and tells each its *rank* (0 … W-1, W the *world size*);
:func:`start` joins them into a process group. :func:`titn_edu.fit` notices the group (whoever
started it) and then

* wraps the student in :class:`~torch.nn.parallel.DistributedDataParallel`: each process computes
  the gradient of its share of the batch and DDP averages the gradients before every update, so all
  processes hold the same weights after every step;
* reads ``batch_size`` as the **global** batch, shared by all processes (``batch_size / W`` images
  each): the batch, the learning rate and its schedule are those of one process, whatever W;
* deals out the training data with :class:`ShardedSampler`: rank 0 draws the order of each epoch
  exactly as one process alone would, sends it to the others, and each process takes its slice of
  every batch. So W processes see the batches one process would see (:func:`shard_of_epoch`);
* runs the frozen teacher on every process, without gradients, on that process's images, and
  mixes (CutMix/MixUp) each process's share of the batch, with random draws of its own;
* scores validation and test data in whole batches dealt out to the processes
  (:func:`whole_batches`) and gathers the predictions: every process reports the metrics of the
  whole set, each image counted once;
* lets rank 0 alone write ``last.pt``, ``best.pt`` and ``history.json``; the others wait for it.

When a process fails: every collective operation has a timeout (:func:`start`), so a process
that dies or hangs stops the others within that time instead of forever (``torchrun`` itself
stops them at once when one exits); ``last.pt`` always holds the last complete epoch. The loss is
averaged over the processes before it is checked, so a NaN on one process stops all of them with
the same message; a callback or Ctrl-C that stops one stops all, after the same step or epoch.
Settings that differ between the processes are refused (:func:`check_same`).

Resuming: ``last.pt`` holds rank 0's random state, from which every epoch's order and the other
processes' seeds follow. Resumed on the same number of processes, a run goes on as if it had never
stopped; on another number that divides the global batch (one process alone included) it goes on
with the same batches and schedule, only the other processes' random draws differ.

In one process nothing here does anything: the functions answer as for a job of one.
"""

from __future__ import annotations

import copy
import datetime
import functools
import math
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from .device_data import DeviceLoader
from .utils import seed_everything

__all__ = [
    "World", "current", "start", "stop", "BACKENDS", "DEFAULT_TIMEOUT", "check_backend", "check_same",
    "wrap", "loader", "ShardedSampler", "shard_of_epoch", "whole_batches", "split_batch",
    "mean_over_processes", "sum_over_processes", "any_process", "gather", "barrier", "one_process_per_node_first",
    "lost_a_process",
]

#: ``start(backend=...)``: ``"auto"`` is NCCL on CUDA and gloo on a CPU.
BACKENDS = ("auto", "gloo", "nccl")
#: Seconds a collective operation waits for the other processes before it fails (NCCL's default too).
DEFAULT_TIMEOUT = 600.0


# ============================================================================ the processes of a job
@dataclass(frozen=True)
class World:
    """The processes of a job as one of them sees it: it is ``rank`` of ``size`` (0 of 1: a process alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # its rank among the processes of its machine (picks its GPU)
    local_size: int = 1  # processes on its machine
    backend: str | None = None  # "gloo" or "nccl"; None without a process group

    @property
    def distributed(self) -> bool:
        """Several processes train together."""
        return self.size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where the tensors of a collective operation live: this process's GPU with NCCL, else the CPU."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def current() -> World:
    """The job this process belongs to: the default process group, if one is initialised; else a world of one."""
    local = dict(local_rank=_env_int("LOCAL_RANK", 0), local_size=_env_int("LOCAL_WORLD_SIZE", 1))
    if not (dist.is_available() and dist.is_initialized()):
        return World(**local)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), backend=str(dist.get_backend()), **local)


def start(device: torch.device, *, backend: str = "auto",
          timeout: float = DEFAULT_TIMEOUT) -> tuple[World, torch.device]:
    """Join the job ``torchrun`` started (if it did) and return it with this process's device.

    ``torchrun`` puts ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the
    environment of every process it starts; with ``WORLD_SIZE`` 2 or more this initialises the
    process group (``backend``: ``"auto"`` = NCCL on CUDA, gloo on a CPU) with ``timeout`` seconds
    for every collective operation. A CUDA ``device`` becomes the GPU of the process's local rank.
    A backend that cannot carry the device's tensors is a ``ValueError`` on every process, raised once
    they have all met, so that each says why. Outside ``torchrun`` it returns a world of one and
    ``device`` as it is.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}.")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a number of seconds > 0; got {timeout!r}.")
    world = current()
    if _env_int("WORLD_SIZE", 1) < 2 or dist.is_initialized():
        check_backend(backend if backend == "nccl" else None, device)  # asked for by name: it must fit, even alone
        return world, device
    device = _device_of_process(device, world.local_rank, world.local_size)
    backend = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    try:
        check_backend(backend, device)
    except ValueError:
        # Every process finds the same problem. Meet over gloo (it runs anywhere) before stopping, so that
        # each one says so: one that stopped alone would have torchrun end the others before they could.
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
        dist.barrier()
        stop()
        raise
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return current(), device


def stop() -> None:
    """Leave the process group (at the end of a run), if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _device_of_process(device: torch.device, local_rank: int, local_size: int) -> torch.device:
    """``cuda`` → the GPU of this process's local rank, when several processes share a machine."""
    if device.type != "cuda" or local_size < 2:
        return device
    if device.index is not None and device.index != local_rank:
        raise ValueError(f"each of the {local_size} processes of this machine trains on the GPU of its local rank "
                         f"(cuda:0 … cuda:{local_size - 1}); give --device cuda (or auto), not {device}.")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"this process has local rank {local_rank} but sees {torch.cuda.device_count()} GPU(s): "
                         f"start at most one process per GPU (torchrun --nproc_per_node=gpu).")
    return torch.device("cuda", local_rank)


def check_backend(backend: str | None, device: torch.device) -> str | None:
    """``backend`` if it can carry this device's tensors; else a ``ValueError`` that says what to use."""
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the NCCL backend runs on CUDA GPUs only, but this process trains on {device}: "
                         f"use the gloo backend on CPUs (--dist-backend gloo or auto), or train on GPUs.")
    if backend == "nccl" and not dist.is_nccl_available():
        raise ValueError("this PyTorch was built without NCCL: use the gloo backend (--dist-backend gloo).")
    if backend is not None and device.type not in ("cpu", "cuda"):
        raise ValueError(f"several processes train on CUDA GPUs (NCCL) or CPUs (gloo), not on {device.type}.")
    return backend


# ============================================================================ collective operations
def _summed(values: Tensor, world: World) -> Tensor:
    total = values.detach().to(world.comm_device, torch.float64).clone()
    dist.all_reduce(total)  # sum over the processes, the result on every one
    return total.cpu()


def mean_over_processes(value: Tensor) -> float:
    """A scalar averaged over the processes (the loss of the whole batch); its own value in one process."""
    world = current()
    if not world.distributed:
        return float(value)
    return float(_summed(value.reshape(1), world)) / world.size


def sum_over_processes(values: Tensor) -> Tensor:
    """The element-wise sum over the processes (float64, CPU); ``values`` itself in one process."""
    world = current()
    return _summed(values, world) if world.distributed else values.detach().cpu().double()


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process: then every process acts on it, at the same step."""
    if not current().distributed:
        return bool(flag)
    return bool(sum_over_processes(torch.tensor([float(flag)]))[0] > 0)


def gather(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order: ``[value]`` in one process."""
    world = current()
    if not world.distributed:
        return [value]
    everyone: list[Any] = [None] * world.size
    dist.all_gather_object(everyone, value)
    return everyone


def barrier() -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a checkpoint)."""
    if current().distributed:
        dist.barrier()


@contextmanager
def one_process_per_node_first() -> Iterator[None]:
    """The first process of every machine runs the block (e.g. downloads data) before the others there."""
    world = current()
    if world.distributed and world.local_rank != 0:
        dist.barrier()
    yield
    if world.distributed and world.local_rank == 0:
        dist.barrier()


def check_same(what: str, settings: dict[str, Any]) -> None:
    """Raise the same ``ValueError`` on every process unless all of them hold the same ``settings``."""
    everyone = gather(settings)
    first = everyone[0]
    for rank, theirs in enumerate(everyone[1:], start=1):
        differ = sorted(k for k in first.keys() | theirs.keys() if first.get(k) != theirs.get(k))
        if differ:
            shown = ", ".join(f"{k}={theirs.get(k)!r} (process 0: {first.get(k)!r})" for k in differ[:4])
            raise ValueError(f"the processes of this job disagree on {what}: process {rank} has {shown}. "
                             f"Start every process with the same command, settings and data.")


def lost_a_process(err: BaseException) -> bool:
    """Whether ``err`` says that a collective operation failed: another process died or stopped answering."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        word in text for word in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out"))


# ============================================================================ the model
def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when several processes train (it averages the gradients); else itself.

    The wrapper is used for training steps only: checkpoints and evaluation use ``model`` itself, so
    saved ``state_dict`` keys never carry DDP's ``module.`` prefix.
    """
    if not current().distributed:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


# ============================================================================ the data
def split_batch(batch_size: int, size: int) -> int:
    """Images per process of a global batch of ``batch_size`` shared by ``size`` processes (it must divide evenly)."""
    if batch_size % size == 0:
        return batch_size // size
    lower = batch_size // size * size
    fits = f"{lower} or {lower + size}" if lower else f"{size}"
    if batch_size < size:
        raise ValueError(f"{size} processes cannot share a batch of {batch_size} image(s): each process needs "
                         f"images of every batch. batch_size (--batch-size) is the global batch: use {fits}.")
    raise ValueError(f"batch_size {batch_size} (--batch-size, the global batch) cannot be shared evenly by {size} "
                     f"processes: use a multiple of {size}, e.g. {fits}.")


def shard_of_epoch(order: Tensor, batch_size: int, rank: int, size: int, *, drop_last: bool = False) -> Tensor:
    """Process ``rank``'s images of an epoch whose order is ``order``: its slice of every global batch.

    Global batch j is ``order[j·B : (j+1)·B]`` (``B = batch_size``), as one process would take it;
    process r takes its r-th slice of ``B / size`` images. The last, incomplete batch of m images
    gives ``m // size`` to each (the ``m mod size`` left over sit this epoch out); it is dropped with
    ``drop_last``, when that leaves no image per process, or when m is 1 (as one process drops it).
    """
    share = split_batch(batch_size, size)
    full = len(order) // batch_size
    mine = [order[: full * batch_size].reshape(full, size, share)[:, rank].reshape(-1)]
    rest = order[full * batch_size:]
    last = len(rest) // size
    if not drop_last and last >= 1 and len(rest) > 1:
        mine.append(rest[rank * last: (rank + 1) * last])
    return torch.cat(mine)


def whole_batches(n: int, batch_size: int, world: World) -> list[int]:
    """This process's images when the job scores ``n`` images: whole batches dealt out in turn.

    Batch j holds images ``j·b … (j+1)·b - 1``, as when one process scores them all, and goes to
    process ``j mod size``: every image is scored once, in the same batch (so with the same result)
    as in one process.
    """
    batches = range(world.rank, math.ceil(n / batch_size), world.size)
    return [i for j in batches for i in range(j * batch_size, min(n, (j + 1) * batch_size))]


class ShardedSampler(Sampler[int]):
    """The indices of this process's share of every training epoch (for a ``DataLoader`` or a ``DeviceLoader``).

    Iterating it starts an epoch, on every process at once: rank 0 calls ``draw()``, which gives the
    epoch's order as one process training alone would draw it (from rank 0's random generator,
    which checkpoints save), and sends it to the others; every process then takes its slice of
    every global batch of ``batch_size`` (:func:`shard_of_epoch`). The processes other than rank 0
    seed their random generators (augmentation, mixing, dropout) from the order and their rank: a
    stream of their own, the same again when the run is repeated or resumed.
    """

    def __init__(self, n: int, batch_size: int, world: World, draw: Callable[[], Tensor], *,
                 drop_last: bool = False) -> None:
        split_batch(batch_size, world.size)  # checks that the processes can share the batch
        self.n, self.batch_size, self.world, self.draw, self.drop_last = n, batch_size, world, draw, drop_last

    def __len__(self) -> int:
        return len(shard_of_epoch(torch.arange(self.n), self.batch_size, 0, self.world.size, drop_last=self.drop_last))

    def __iter__(self) -> Iterator[int]:
        world = self.world
        if world.rank == 0:
            order = torch.as_tensor(self.draw(), dtype=torch.long).to(world.comm_device)
        else:
            order = torch.empty(self.n, dtype=torch.long, device=world.comm_device)
        dist.broadcast(order, src=0)
        order = order.cpu()
        if world.rank > 0:  # a stream of its own for this epoch, from numbers every process knows
            seed_everything(_seed_of(world.rank, *order[:64].tolist()))
        mine = shard_of_epoch(order, self.batch_size, world.rank, world.size, drop_last=self.drop_last)
        return iter(mine.tolist())


def _seed_of(*words: int) -> int:
    """A 32-bit seed mixed from any non-negative integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def _order_of_one_process(n: int) -> Tensor:
    """An epoch's order as a shuffling ``DataLoader`` draws it in one process (torch's RandomSampler)."""
    return torch.tensor(list(RandomSampler(range(n))), dtype=torch.long)


def _seed_worker(worker_id: int, rank: int) -> None:
    """DataLoader workers of a process other than rank 0: random streams apart from rank 0's workers'."""
    seed = _seed_of(torch.initial_seed(), rank)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _share_of(data: DeviceLoader, order: Any, batch_size: int) -> DeviceLoader:
    """A copy of ``data`` (sharing its images) that yields the images of ``order`` in batches of ``batch_size``."""
    share = copy.copy(data)
    share.sampler, share.batch_size, share.drop_last = order, batch_size, False
    return share


def loader(data: Dataset | DeviceLoader, *, batch_size: int, train: bool, world: World, num_workers: int = 0,
           pin: bool = False) -> DataLoader | DeviceLoader:
    """This process's loader of ``data`` (a Dataset, or a DeviceLoader whose batch size counts) in a job.

    Training: its share of every global batch of ``batch_size`` (:class:`ShardedSampler`); evaluation:
    its whole batches (:func:`whole_batches`).
    """
    if isinstance(data, DataLoader):
        raise ValueError("with several processes, fit and evaluate share the data out themselves: give them the "
                         "Dataset (or a titn_edu DeviceLoader), not a DataLoader.")
    on_device = isinstance(data, DeviceLoader)
    n, batch_size = (data.images.shape[0], data.batch_size) if on_device else (len(data), batch_size)
    if not train:
        order = whole_batches(n, batch_size, world)
        if on_device:
            return _share_of(data, order, batch_size)
        return DataLoader(data, batch_size=batch_size, sampler=order, num_workers=num_workers, pin_memory=pin)
    draw = data.epoch_order if on_device else functools.partial(_order_of_one_process, n)
    sampler = ShardedSampler(n, batch_size, world, draw, drop_last=data.drop_last if on_device else False)
    share = batch_size // world.size
    if len(sampler) == 0:
        raise ValueError(f"the {n} training images give no batch to share among {world.size} processes (global "
                         f"batch {batch_size}, {share} per process): use more data, a smaller batch or fewer "
                         f"processes.")
    if on_device:
        return _share_of(data, sampler, share)
    seed_workers = functools.partial(_seed_worker, rank=world.rank) if world.rank > 0 and num_workers else None
    return DataLoader(data, batch_size=share, sampler=sampler, num_workers=num_workers, pin_memory=pin,
                      worker_init_fn=seed_workers)
