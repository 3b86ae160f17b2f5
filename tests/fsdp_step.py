"""One PPO update on a fixed batch, single process or under torchrun (FSDP2, gloo): used by test_train.py.

    python tests/fsdp_step.py MODEL_DIR OUT.pt
    torchrun --nproc_per_node 2 tests/fsdp_step.py MODEL_DIR OUT.pt
    python tests/fsdp_step.py MODEL_DIR OUT.pt bf16     # one-rank group, FSDP2 bf16 compute / fp32 master (CPU too)
    torchrun --nproc_per_node 2 tests/fsdp_step.py MODEL_DIR OUT.pt fp32 top_entropy_q=0.2,agg=seq-mean-token-mean
The optional 4th argument overrides LossConfig fields (comma-separated name=value; numbers as floats).
Each rank takes a contiguous share of the groups; rank 0 writes the step loss, the 80/20 entropy threshold and
the updated weights.
"""
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import distributed  # noqa: E402
import train  # noqa: E402
import update  # noqa: E402
from loss import LossConfig  # noqa: E402


def fixed_batch(vocab: int, groups: int = 4, group_size: int = 4) -> update.Batch:
    g = torch.Generator().manual_seed(0)
    seqs, old = [], []
    for _ in range(groups):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(group_size):
            n = int(torch.randint(1, 7, (1,), generator=g))
            seqs.append((prompt, torch.randint(3, vocab, (n,), generator=g).tolist()))
            old.append(-torch.rand(n, generator=g) * 3 - 2)  # plausible logprobs; ratios away from 1 exercise clipping
    rewards = torch.randint(0, 2, (len(seqs),), generator=g).float()
    planning = torch.rand(len(seqs), 6, generator=g) < 0.3
    from loss import group_advantages
    return update.Batch(seqs, old, group_advantages(rewards, group_size), planning)


def loss_config(options: str) -> LossConfig:
    """'name=value,...' -> LossConfig(eps_low=0.2, eps_high=0.28, agg='token-mean', **overrides)."""
    overrides = dict(item.split("=", 1) for item in options.split(",") if item)
    numeric = {f.name for f in dataclasses.fields(LossConfig) if isinstance(f.default, float)}
    overrides = {k: float(v) if k in numeric else v for k, v in overrides.items()}
    return LossConfig(**{"eps_low": 0.2, "eps_high": 0.28, "agg": "token-mean", **overrides})


def main(model_dir: str, out_path: str, precision: str = "fp32", loss_options: str = ""):
    rank, world, device, is_dist = distributed.dist_init(one_rank_group=precision == "bf16")
    torch.manual_seed(0)
    policy, _ = M.load_model(model_dir, device=device, tokenizer=False)
    hf_config = policy.hf_config
    if is_dist:
        param_dtype = torch.bfloat16 if precision == "bf16" else None
        policy = distributed.shard_policy(policy, device, activation_checkpointing=False, param_dtype=param_dtype)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    full = fixed_batch(policy.cfg.vocab_size if not is_dist else hf_config["vocab_size"])
    rows_per_rank = len(full.seqs) // world
    mine = slice(rank * rows_per_rank, (rank + 1) * rows_per_rank)
    batch = update.Batch(full.seqs[mine], full.old_logprobs[mine], full.seq_advantages[mine], full.planning[mine])
    cfg = train.resolve(train.TrainConfig(preset="cpu", algo="hicra", micro_batch_tokens=24))
    out = update.ppo_update(policy, optimizer, batch, cfg, loss_config(loss_options), 1, 1e-2, world, is_dist, device)
    loss = distributed.all_sum([float(out["loss"])], is_dist)[0]
    state = {k: v.detach().cpu().clone() for k, v in distributed.full_state_dict(policy, is_dist).items()}
    if rank == 0:
        torch.save({"loss": loss, "state": state, "grad_norm": out["grad_norm"], "threshold": out["entropy_threshold"],
                    "param_dtypes": sorted({str(p.dtype) for p in policy.parameters()})}, out_path)
    distributed.dist_cleanup(is_dist)


if __name__ == "__main__":
    main(*sys.argv[1:5])
