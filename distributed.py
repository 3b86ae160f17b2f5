"""Distributed in one place: torchrun's environment, FSDP2 wrapping, the inference-copy refresh, and the few
collectives the loop uses.

Process group: gloo on CPU; on CUDA "cpu:gloo,cuda:nccl", so the loop's small host-side reductions (reward sums,
stop flags, round counts: CPU tensors) go through gloo and FSDP's tensors through NCCL, each on the device its
backend serves. A bounded timeout (RL ranks wait for each other's rollouts, which can take many minutes) and
collectives that say which rank gave up waiting and why. `dist_init(one_rank_group=True)` makes a 1-process
group, so a single GPU trains through the same FSDP2 mixed-precision code as 8 (bf16 compute, fp32 master
weights, gradients reduced in fp32).
Single-process runs without a group take the same code path: every helper here is the identity then.
"""
import datetime
import os

import torch
import torch.distributed as dist


def backend_for(device: torch.device) -> str:
    """The process-group backend string: every collective's tensors must live on a device it names."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def dist_init(device: str = "auto", one_rank_group: bool = False, timeout_s: float = 3600.0):
    """-> (rank, world, device, is_dist). Reads torchrun's environment; single process otherwise.

    device: 'auto' = cuda:LOCAL_RANK when CUDA is available, else cpu; or an explicit device ('cpu', 'cuda:1').
    one_rank_group: without torchrun, still make a process group of one (FSDP2 mixed precision on one device).
    timeout_s: how long a collective waits for the other ranks before it fails (naming this rank)."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if world == 1 and not one_rank_group:
        return 0, 1, device, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if world == 1:  # no torchrun rendezvous: an in-process store
        dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        dist.init_process_group(backend_for(device), timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device, True


def dist_cleanup(is_dist):
    if is_dist and dist.is_initialized():  # barrier first: no rank tears its group down while another still works
        dist.barrier()
        dist.destroy_process_group()


def _all_reduce(tensor, op, what: str):
    try:
        dist.all_reduce(tensor, op=op)
    except (RuntimeError, dist.DistBackendError) as e:
        raise RuntimeError(f"rank {dist.get_rank()} of {dist.get_world_size()}: {what} failed after waiting for the "
                           f"other ranks ({type(e).__name__}: {e}); another rank probably died or is stuck: see the "
                           "first error in its log") from None


def all_sum(values: list[float], is_dist) -> list[float]:
    """Elementwise sum over ranks of a short list of host numbers (a CPU tensor: gloo serves it)."""
    if not is_dist:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    _all_reduce(t, dist.ReduceOp.SUM, "all_sum")
    return t.tolist()


def max_over_ranks(value: int) -> int:
    t = torch.tensor([value], dtype=torch.long)
    _all_reduce(t, dist.ReduceOp.MAX, "max_over_ranks")
    return int(t[0])


def all_gather_1d(values: torch.Tensor, is_dist) -> torch.Tensor:
    """(n_r,) on each rank r -> (sum_r n_r,) the concatenation in rank order on every rank (lengths may differ);
    the identity in one process. Two sums over ranks: the lengths (a host tensor), then a zero-padded
    (world, max n_r) table on values' device in which each rank fills its own row. Adding zeros changes no value
    (only -0.0 becomes 0.0), and the sum reuses the all-reduce that names the rank that gave up waiting."""
    if not is_dist:
        return values
    rank, world = dist.get_rank(), dist.get_world_size()
    lengths = torch.zeros(world, dtype=torch.long)
    lengths[rank] = values.numel()
    _all_reduce(lengths, dist.ReduceOp.SUM, "all_gather_1d (lengths)")
    table = values.new_zeros(world, int(lengths.max()))  # (world, max n_r)
    table[rank, :values.numel()] = values
    _all_reduce(table, dist.ReduceOp.SUM, "all_gather_1d")
    return torch.cat([table[r, :n] for r, n in enumerate(lengths.tolist())])


def shard_policy(policy, device, activation_checkpointing, param_dtype="auto"):
    """FSDP2: one unit per decoder block plus the root. param_dtype (bf16; 'auto' = bf16 on CUDA, None on CPU)
    is the compute dtype of the unsharded parameters; master weights, optimizer state and gradient reduction
    stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if param_dtype == "auto":
        param_dtype = torch.bfloat16 if device.type == "cuda" else None
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    for block in policy.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    policy.activation_checkpointing = activation_checkpointing
    return policy


def full_state_dict(policy, is_dist):
    """All parameters as plain full tensors, for saving (a collective under FSDP: every rank calls it). Under FSDP
    they are gathered into rank 0's host memory and the other ranks get {}: no rank holds a full fp32 copy on
    its GPU (28 GB at 7B)."""
    if not is_dist:
        return policy.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@torch.no_grad()
def refresh_inference_copy(policy, infer):
    """infer <- policy's weights, one parameter at a time: under FSDP each is cast to the copy's dtype on its shard
    and then all-gathered, so the transient is one bf16 parameter, never a full fp32 state dict (30 GB at 7B).
    The copy's tensors are written in place, so CUDA graphs captured over them stay valid."""
    targets = dict(infer.named_parameters())
    for name, param in policy.named_parameters():
        value = param.detach().to(targets[name].dtype)
        targets[name].copy_(value.full_tensor() if hasattr(value, "full_tensor") else value)


def memory_plan(model_cfg, world: int, micro_batch_tokens: int, activation_checkpointing: bool, kv_bytes: int = 0,
                sampler_copy: bool = True, chunk_rows: int = 512) -> list[tuple[str, int]]:
    """Per-rank bytes of a bf16-compute / fp32-master training run, [(what, bytes)], last row the total.

    Estimates, from the shapes (N parameters, h hidden, i MLP width, kv = H_kv * D, L layers, V vocabulary):
      fp32 master weights, gradients, AdamW moments   4N + 4N + 8N, sharded over the ranks
      bf16 sampler copy                                2N on every rank (refreshed after each optimizer step)
      activations of one micro-batch of T tokens       T * L * (22h + 10i + 8kv) bytes, what our blocks keep for
                                                       backward in bf16 (norm statistics in fp32); with activation
                                                       checkpointing T * (L * 2h + one block's worth)
      logprob chunk                                    3 * chunk_rows * V * 4 (fp32 logits, softmax, gradient)
      KV pool                                          kv_bytes (rollout.Sampler sizes it from free memory)"""
    c = model_cfg
    n = (c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
         + c.num_layers * (c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                           + c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size))
    per_layer = 22 * c.hidden_size + 10 * c.intermediate_size + 8 * c.num_kv_heads * c.head_dim
    activations = micro_batch_tokens * ((c.num_layers * 2 * c.hidden_size + per_layer) if activation_checkpointing
                                        else c.num_layers * per_layer)
    rows = [("fp32 weights + grads + AdamW (sharded)", 16 * n // world), ("bf16 sampler copy", 2 * n if sampler_copy else 0),
            (f"activations, {micro_batch_tokens} tokens{' (checkpointed)' if activation_checkpointing else ''}", activations),
            ("logprob chunk", 3 * chunk_rows * c.vocab_size * 4), ("KV pool", kv_bytes)]
    return rows + [("total", sum(b for _, b in rows))]
