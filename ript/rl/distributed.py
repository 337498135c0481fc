"""Training processes: one, or one per GPU of a node with the model sharded by FSDP2.

With several processes every parameter, gradient and optimizer state is sharded
(`torch.distributed.fsdp.fully_shard`), not replicated. pi0's VLM layer i hands its keys and
values to action-expert layer i through the KV cache, outside either layer's outputs, so the
two form one FSDP unit: whichever of them backward reaches first finds both unsharded. SigLIP
layers are units of their own; the embeddings, projections and heads form the root unit.

Checkpoints hold whole tensors (gathered to rank 0, on the CPU), so a run resumes on any
number of processes.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from ript.models.policy import resolve_device

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
# some of the model: parameters no loss reaches (the expert's unused token embeddings) have no
# optimizer state, and LoRA's frozen weights come from the base, not the checkpoint
SCATTER_SOME = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun the environment says it all; a plain
    process gets RANK=0, WORLD_SIZE=1 and a free local port, so it needs nothing set."""
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = resolve_device(device)  # torchrun's LOCAL_RANK, or the least-used GPU (ript.gpus)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    return rank, world, dev


def shard(model: nn.Module, device: torch.device) -> None:
    """FSDP2 over all processes, in place; `model.compute_loss` runs its hooks like
    `forward` does."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    vlm = model.model.vlm
    for pair in zip(vlm.language_model.layers, model.model.dit.layers, strict=True):
        fully_shard(list(pair), mesh=mesh)
    for layer in vlm.vision_tower.encoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    register_fsdp_forward_method(model, "compute_loss")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank calls it), or `t` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `target` is: this rank's shard of it, or itself."""
    full = full.to(target.device, target.dtype)
    if isinstance(target, DTensor):
        return distribute_tensor(full, target.device_mesh, target.placements)
    return full


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as a whole CPU tensor on rank 0 (empty elsewhere)."""
    return get_model_state_dict(model, options=GATHER)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    """Rank 0's whole tensors into every rank's shards; `strict`: all of them."""
    options = SCATTER if strict else SCATTER_SOME
    set_model_state_dict(model, state, options=options)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, whole tensors on rank 0."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=SCATTER_SOME)
