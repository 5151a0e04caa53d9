"""torch.distributed glue: process group set-up from ``torchrun``'s environment, DDP / FSDP wrapping, collectives.

One process per device (``torchrun --nproc_per_node N``): NCCL on CUDA, gloo on CPU. Without ``WORLD_SIZE`` in the
environment everything degrades to a single process and the collectives are no-ops, so stage code never branches
on whether it runs distributed.

* DDP replicates the objective and averages gradients; every trainable parameter must receive a gradient (stages
  freeze what they do not use), so ``find_unused_parameters`` stays off.
* FSDP (``train.strategy = "fsdp"``) uses ``torch.distributed.fsdp.fully_shard`` (FSDP2): each module named by the
  stage's ``shard_units()`` (the UNet's resnets and transformers, called through ``forward``) becomes one sharded
  unit, the objective the root.
  Full, unsharded state dicts for checkpoints come from ``torch.distributed.checkpoint.state_dict``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from mindvideo.errors import MindVideoError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this rank's CUDA device when there is one, else the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise MindVideoError(
            "expected a CUDA device for train.device=cuda",
            "torch.cuda.is_available() is False",
            "set train.device=cpu (or auto)",
        )
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistInfo(rank, world, local, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks (for logging only)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (in rank order) on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B_local, …) from every rank in rank order → (B_global, …), differentiable.

    The backward sums the gradients of every rank's copy, so a loss computed identically on all ranks over the
    gathered batch, with DDP's gradient averaging, gives exactly the single-process gradient (open_clip's
    ``gather_with_grad`` without ``local_loss``)."""
    if not dist.is_initialized():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))


def wrap(objective: nn.Module, info: DistInfo, strategy: str, shard_units: Iterable[nn.Module]) -> nn.Module:
    """The objective as the training loop calls it: itself (one process), DDP, or FSDP2-sharded in place."""
    if not info.distributed:
        return objective
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        units = list(shard_units)
        if not units:
            raise MindVideoError(
                "expected a stage with a UNet for train.strategy=fsdp",
                "a stage without shardable units",
                "use train.strategy=ddp for this stage",
            )
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(objective, mesh=mesh)
        return objective
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=device_ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The objective inside a DDP wrapper (FSDP2 shards in place, so the module is the objective)."""
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered to a plain tensor; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
