"""Distributed in one place: torchrun's environment, FSDP2 wrapping, and the few collectives the loop uses.

Single-process runs take the same code path: every helper here is the identity when is_dist is False.
"""
import os

import torch
import torch.distributed as dist


def dist_init(device: str = "auto"):
    """-> (rank, world, device, is_dist). Reads torchrun's environment; single process otherwise.

    device: 'auto' = cuda:LOCAL_RANK when CUDA is available, else cpu; or an explicit device ('cpu', 'cuda:1')."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if world == 1:
        return 0, 1, device, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device, True


def dist_cleanup(is_dist):
    if is_dist:  # barrier first: no rank tears its group down while another still has work in flight with it
        dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], is_dist) -> list[float]:
    if not is_dist:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def shard_policy(policy, device, activation_checkpointing):
    """FSDP2: one unit per decoder block plus the root; bf16 compute with fp32 reductions on CUDA."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
    for block in policy.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    policy.activation_checkpointing = activation_checkpointing
    return policy


def full_state_dict(policy, is_dist):
    """All parameters as plain full tensors (a collective under FSDP: every rank calls it)."""
    if not is_dist:
        return policy.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def max_over_ranks(value: int) -> int:
    t = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0])
