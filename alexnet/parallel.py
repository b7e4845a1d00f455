"""AlexNet's two towers on two devices, and data parallelism over tower pairs.

The ranks form a 2-D mesh (dp, tp) with the tower axis innermost: rank = dp_rank * tp_size + tp_rank,
so a tower pair is two neighbouring ranks (one node). With tp_size = 2 each rank holds one tower, half
of every layer (48/128/192/192/128 conv kernels, 2048/2048 fc units, 500 of fc8's outputs): no
parameter is replicated inside a pair. The cross-tower inputs (conv3, fc6, fc7, fc8) and the logits
are all-gathers along the channel dimension whose backward is a reduce-scatter (sum). Both ranks of a
pair see the same batch and compute the same loss from the same full logits; the logits' gather
averages the two identical gradients instead of summing them, so ``loss.backward()`` gives exact
gradients with no scaling by the caller. With dp_size > 1, DDP averages gradients over the dp axis;
shard batches by ``ctx.dp_rank`` / ``ctx.dp_size`` (``shard_batch``), not by global rank.

Typical use, under torchrun or ``launch``:

    ctx = init_distributed(tp_size=2)
    torch.manual_seed(seed)
    model = AlexNet(config)                      # the full one-device model, the same on every rank
    module = parallelize(model, ctx)             # this rank's tower on ctx.device, DDP over dp if needed
    torch.manual_seed(seed + ctx.rank)           # dropout masks independent across towers and data ranks
    logits = module(shard_batch(x, ctx).to(ctx.device))        # (N / dp_size, num_classes) on every rank
    F.cross_entropy(logits, shard_batch(y, ctx).to(ctx.device)).backward()
    torch.save(full_state_dict(module, ctx), path) if ctx.is_main else None   # the one-device state dict
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from .launch import LaunchError, launch
from .model import AlexNet

__all__ = ["ParallelContext", "init_distributed", "parallelize", "full_state_dict", "load_full_state_dict",
           "gather_towers", "shard_batch", "destroy_distributed", "launch", "LaunchError", "TowerGather"]

TOWER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# Public names since torch 2.12; the older ones still work (deprecated) and are all torch 2.11 has.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    dp_rank: int = 0
    dp_size: int = 1
    tp_rank: int = 0  # which tower this rank holds (tp_size = 2)
    tp_size: int = 1  # 1: both towers on one device; 2: one tower per device
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: single process, no process group
    mesh: object | None = None  # DeviceMesh (dp, tp), or None for a single process
    dp_group: object | None = None
    tp_group: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(tp_size: int = 2, backend: str | None = None) -> ParallelContext:
    """Join the process group described by the environment (torchrun's, or ``launch``'s) and build the
    (dp, tp) mesh. Without WORLD_SIZE, or with WORLD_SIZE=1, this is a single process holding both
    towers (tp_size = 1, no process group, the GPU if there is one). backend: ``backend`` or
    $ALEXNET_BACKEND, else nccl when CUDA is available and gloo otherwise; with nccl each process
    uses GPU LOCAL_RANK, with gloo the CPU."""
    if tp_size not in (1, 2):
        raise ValueError(f"tp_size must be 1 (both towers per device) or 2 (one tower each), got {tp_size}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size == 1:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return ParallelContext(device=device)
    if world_size % tp_size:
        raise ValueError(f"WORLD_SIZE={world_size} is not a multiple of tp_size={tp_size}")

    rank = int(os.environ["RANK"])
    backend = backend or os.environ.get("ALEXNET_BACKEND")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":  # one GPU per process
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:  # gloo: the processes compute on the CPU
        device = torch.device("cpu")
    init_method = os.environ.get("ALEXNET_INIT_METHOD", "env://")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    dp_size = world_size // tp_size
    mesh = init_device_mesh(device.type, (dp_size, tp_size), mesh_dim_names=("dp", "tp"))
    return ParallelContext(rank=rank, world_size=world_size, dp_rank=rank // tp_size, dp_size=dp_size,
                           tp_rank=rank % tp_size, tp_size=tp_size, local_rank=local_rank, device=device,
                           backend=backend, mesh=mesh, dp_group=mesh.get_group("dp"),
                           tp_group=mesh.get_group("tp"))


def destroy_distributed() -> None:
    """Leave the process group (``launch`` does this for you when ``fn`` returns)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_batch(x: torch.Tensor, ctx: ParallelContext) -> torch.Tensor:
    """This data rank's contiguous slice of a global batch; both towers of a pair get the same one."""
    if x.shape[0] % ctx.dp_size:
        raise ValueError(f"batch of {x.shape[0]} does not split evenly over {ctx.dp_size} data ranks")
    return x.chunk(ctx.dp_size)[ctx.dp_rank]


class _GatherChannels(torch.autograd.Function):
    """All-gather along dim 1 over ``group``; backward: reduce-scatter (sum) times ``grad_scale``."""

    @staticmethod
    def forward(ctx, x, group, grad_scale):
        ctx.group, ctx.grad_scale = group, grad_scale
        world = dist.get_world_size(group)
        x = x.contiguous()
        n, c = x.shape[:2]
        out = x.new_empty((world * n, *x.shape[1:]))  # (world * N, C, ...), rank r's x at rows r*N...
        _all_gather(out, x, group=group)
        out = out.view(world, n, *x.shape[1:]).transpose(0, 1)  # (N, world, C, ...)
        return out.reshape(n, world * c, *x.shape[2:])  # (N, world * C, ...), rank r's channels at r*C...

    @staticmethod
    def backward(ctx, grad):
        world = dist.get_world_size(ctx.group)
        n, wc = grad.shape[:2]
        grad = grad.reshape(n, world, wc // world, *grad.shape[2:]).transpose(0, 1).contiguous()
        out = grad.new_empty(grad.shape[1:])  # (N, C, ...)
        _reduce_scatter(out, grad.view(world * n, *grad.shape[2:]), op=dist.ReduceOp.SUM, group=ctx.group)
        if ctx.grad_scale != 1.0:
            out.mul_(ctx.grad_scale)
        return out, None, None


class TowerGather(nn.Module):
    """Concatenates both towers' halves along dim 1: (N, C/2, ...) on each rank -> (N, C, ...) on each.

    replicated_output=False: each rank's copy of the output feeds a different computation (conv3,
    fc6-8 of its own tower), so the gradient of the input is the sum over ranks (reduce-scatter).
    replicated_output=True (the logits): every rank computes the same loss from the same output, so
    the ranks' gradients are copies of one gradient: average them instead of summing.
    """

    def __init__(self, group, replicated_output: bool = False):
        super().__init__()
        self.group = group
        self.replicated_output = replicated_output

    def forward(self, x):
        scale = 1.0 / dist.get_world_size(self.group) if self.replicated_output else 1.0
        return _GatherChannels.apply(x, self.group, scale)

    def extra_repr(self) -> str:
        return f"replicated_output={self.replicated_output}"


def _unwrap(module: nn.Module) -> AlexNet:
    return module.module if isinstance(module, DistributedDataParallel) else module


@torch.no_grad()
def _keep_tower(model: AlexNet, tp_rank: int) -> None:
    """Shrink every layer of ``model`` (both towers) to tower ``tp_rank`` in place: the rows
    [tp_rank * out/2, (tp_rank + 1) * out/2) of each weight and bias. A groups=2 convolution's rows
    of one tower only read that tower's input maps, so it becomes an ordinary convolution."""
    for name in TOWER_LAYERS:
        layer = getattr(model, name)
        for pname in ("weight", "bias"):
            p = getattr(layer, pname)
            setattr(layer, pname, nn.Parameter(p.chunk(2)[tp_rank].clone(), requires_grad=p.requires_grad))
        if isinstance(layer, nn.Conv2d):
            layer.out_channels //= 2
            if layer.groups == 2:
                layer.in_channels //= 2
                layer.groups = 1
        else:
            layer.out_features //= 2
    model.towers = 1


def parallelize(model: AlexNet, ctx: ParallelContext) -> nn.Module:
    """What this rank trains: ``model`` reduced in place to tower ``ctx.tp_rank`` (tp_size = 2), moved
    to ``ctx.device``, wrapped in DDP over the dp axis when dp_size > 1. Its forward returns the full
    logits on every rank. Build ``model`` identically on the two ranks of a pair (same seed, or load
    a checkpoint afterwards with ``load_full_state_dict``); DDP copies dp rank 0's weights to the
    other replicas. After this call ``model.state_dict()`` is one tower's: checkpoint with
    ``full_state_dict``."""
    if ctx.tp_size == 2:
        if model.towers != 2:
            raise ValueError("model is already split into towers")
        if model.config.num_classes % 2:
            raise ValueError(f"num_classes={model.config.num_classes} must be even to split fc8 in two")
        _keep_tower(model, ctx.tp_rank)
        model.tower_rank = ctx.tp_rank
        model.join_towers = TowerGather(ctx.tp_group)
        model.join_logits = TowerGather(ctx.tp_group, replicated_output=True)
    model.data_rank = ctx.dp_rank  # the fused dropout then draws the full batch's masks for its shard
    model.to(ctx.device)
    if ctx.dp_size > 1:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, process_group=ctx.dp_group)
    return model


def gather_towers(tensors: dict[str, torch.Tensor], ctx: ParallelContext) -> dict[str, torch.Tensor]:
    """One-device tensors from each rank's tower tensors (weights, biases, their gradients, optimizer
    state of the same shapes): tower halves concatenated along dim 0. Collective over the tower pair,
    in the dict's order (the same on both ranks); returns CPU tensors on every rank."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if ctx.tp_size == 1:
            out[name] = t.to("cpu", copy=True)
            continue
        full = t.new_empty((ctx.tp_size * t.shape[0], *t.shape[1:]))
        _all_gather(full, t, group=ctx.tp_group)
        out[name] = full.cpu()
    return out


def full_state_dict(module: nn.Module, ctx: ParallelContext) -> dict[str, torch.Tensor]:
    """The one-device ``AlexNet`` state dict (CPU tensors), whichever way ``module`` is split.
    Collective over the tower pair: call it on every rank."""
    return gather_towers(_unwrap(module).state_dict(), ctx)


@torch.no_grad()
def load_full_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor],
                         ctx: ParallelContext) -> None:
    """Load a one-device ``AlexNet`` state dict into this rank's part of ``module`` (every rank loads
    the same dict, so DDP replicas stay equal). No communication."""
    local = _unwrap(module).state_dict()
    if set(local) != set(state_dict):
        raise KeyError(f"state dict keys differ: missing {sorted(set(local) - set(state_dict))}, "
                       f"unexpected {sorted(set(state_dict) - set(local))}")
    for name, t in local.items():
        full = state_dict[name]
        if full.shape != (ctx.tp_size * t.shape[0], *t.shape[1:]):
            raise ValueError(f"{name}: checkpoint shape {tuple(full.shape)} does not fit tower shape "
                             f"{tuple(t.shape)} x {ctx.tp_size} towers")
        t.copy_(full.chunk(ctx.tp_size)[ctx.tp_rank])
