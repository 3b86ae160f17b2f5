"""update.py's issue-19 wiring: sampler logprobs kept beside the (recomputed) old ones, the no-grad pre-pass, the
step-wide 80/20 threshold (one process and two ranks), Clip-Cov's seeded generator, the mismatch metrics in
plot.update_metrics, the default path unchanged bit for bit, and should_stop (nothing applied, ranks agree)."""
import copy
import dataclasses
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model as M
import update
from conftest import ROOT
from fsdp_step import fixed_batch
from loss import LossConfig, amplify_mask, hicra_advantages, policy_loss, token_advantages
from plot import update_metrics
from rollout import Interrupted

# the TrainConfig fields ppo_update reads (train.resolve's cpu preset with algo hicra)
CFG = SimpleNamespace(share_prompt=True, micro_batch_tokens=24, temperature=1.0, recompute_old_logprobs=False,
                      hicra_alpha=0.2, hicra_tokens="planning", hicra_top_q=0.2, grad_clip=1.0)
LOSS = LossConfig(eps_low=0.2, eps_high=0.28, agg="token-mean")


def train_cfg(**changes):
    return SimpleNamespace(**{**vars(CFG), **changes})


@pytest.fixture
def model_dir(tiny_checkpoint):
    return tiny_checkpoint("qwen2")


def load(model_dir):
    policy, _ = M.load_model(model_dir, tokenizer=False)
    return policy, torch.optim.AdamW(policy.parameters(), lr=1e-2)


def new_batch(policy):
    """fsdp_step's fixed batch (4 groups of 4, sampler logprobs far from the model's) as fresh tensors."""
    b = fixed_batch(policy.cfg.vocab_size)
    return update.Batch(b.seqs, [x.clone() for x in b.old_logprobs], b.seq_advantages, b.planning)


def run(model_dir, cfg=CFG, loss_cfg=LOSS, epochs=1, **kwargs):
    policy, optimizer = load(model_dir)
    batch = new_batch(policy)
    out = update.ppo_update(policy, optimizer, batch, cfg, loss_cfg, epochs, 1e-2, 1, False, "cpu", **kwargs)
    return out, policy.state_dict(), batch


@torch.no_grad()
def full_forward(policy, seqs, temperature=1.0):
    """Per row: (response logprobs, entropies) from a plain full-sequence forward over all logits (no packing)."""
    out = []
    for prompt, response in seqs:
        full = torch.tensor(prompt + response)
        logits = policy(full, torch.arange(len(full)), M.AttnMeta.packed([len(full)], "cpu"))[len(prompt) - 1:-1]
        logp = F.log_softmax(logits / temperature, -1)
        out.append((logp[torch.arange(len(response)), torch.tensor(response)], -(logp.exp() * logp).sum(-1)))
    return out


def plain_update(policy, optimizer, batch, cfg, loss_cfg, epochs, lr):
    """The update as update.py ran it before the pre-pass (one process): old logprobs from the batch or, under
    recompute, epoch 0's own forward detached, kept for the later epochs."""
    units, total_tokens, total_seqs = update.plan_micro_batches(batch.seqs, cfg, False)
    old_rows = list(batch.old_logprobs)
    for epoch in range(epochs):
        for unit in units:
            rows = [i for u in unit for i in u]
            segments = [(batch.seqs[u[0]][0], [batch.seqs[i][1] for i in u]) for u in unit]
            logp, ent, mask = update.policy_logprobs(policy, segments, cfg.temperature, "cpu")
            lengths = [len(batch.seqs[i][1]) for i in rows]
            if cfg.recompute_old_logprobs and epoch == 0:
                old = logp.detach()
                for j, i in enumerate(rows):
                    old_rows[i] = old[j, :lengths[j]]
            else:
                old = update.pad_rows(torch.cat([old_rows[i] for i in rows]), lengths, mask.shape[1])[0]
            plan = batch.planning[rows, :mask.shape[1]]
            adv = token_advantages(batch.seq_advantages[rows], mask)
            adv = hicra_advantages(adv, amplify_mask(plan, ent.detach(), mask, cfg.hicra_tokens, cfg.hicra_top_q),
                                   cfg.hicra_alpha)
            loss, _ = policy_loss(logp, old, adv, mask, loss_cfg, total_tokens=total_tokens, total_seqs=total_seqs,
                                  entropy=ent, planning_mask=plan)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return policy.state_dict()


@pytest.mark.parametrize("recompute", [False, True])
def test_update_without_new_options_is_the_plain_loop_bitwise(model_dir, recompute):
    cfg = train_cfg(recompute_old_logprobs=recompute)
    out, state, _ = run(model_dir, cfg, epochs=3)
    policy, optimizer = load(model_dir)
    expected = plain_update(policy, optimizer, new_batch(policy), cfg, LOSS, 3, 1e-2)
    initial = M.read_state_dict(model_dir)
    assert max((state[k] - initial[k]).abs().max().item() for k in initial) > 1e-3  # the update moved the weights
    for name, value in expected.items():
        assert torch.equal(state[name], value), name
    assert out["entropy_threshold"] is None and out["skipped"] == 0


def test_batch_keeps_sampler_logprobs_and_recompute_replaces_old(model_dir):
    policy, _ = load(model_dir)
    sampler = [x.clone() for x in new_batch(policy).old_logprobs]
    plain = new_batch(policy)
    assert all(s is o for s, o in zip(plain.sampler_logprobs, plain.old_logprobs))  # default: the sampler's are old
    cfg = train_cfg(recompute_old_logprobs=True)
    out, _, batch = run(model_dir, cfg, epochs=2)
    reference = full_forward(policy, batch.seqs)  # the initial weights: theta_old
    for i, (logp, _) in enumerate(reference):
        assert torch.equal(batch.sampler_logprobs[i], sampler[i])  # never overwritten
        assert torch.allclose(batch.old_logprobs[i], logp, atol=1e-5)  # the trainer's, not the sampler's
        assert (batch.old_logprobs[i] - sampler[i]).abs().max() > 0.1
    row = update_metrics(out["loss_stats"], out["token_stats"], {})
    assert row["ratio_min"] == pytest.approx(1.0, abs=1e-6) and row["ratio_max"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("recompute", [False, True])
def test_mismatch_metrics_reach_update_metrics(model_dir, recompute):
    """Trainer at theta_old vs sampler, whether old comes from the sampler (metrics from epoch 0's forward) or from
    the pre-pass (metrics from policy_loss): the same numbers, checked against a plain forward."""
    cfg = train_cfg(recompute_old_logprobs=recompute)
    out, _, batch = run(model_dir, cfg)
    row = update_metrics(out["loss_stats"], out["token_stats"], {})
    policy, _ = load(model_dir)
    gaps = [logp - s for (logp, _), s in zip(full_forward(policy, batch.seqs), batch.sampler_logprobs)]
    flat = torch.cat(gaps)
    seq_ratio = torch.stack([g.sum().exp() for g in gaps])
    assert row["mismatch_abs_mean"] == pytest.approx(flat.abs().mean().item(), rel=1e-5)
    assert row["mismatch_abs_max"] == pytest.approx(flat.abs().max().item(), rel=1e-5)
    assert row["mismatch_seq_ratio_min"] == pytest.approx(seq_ratio.min().item(), rel=1e-4)
    assert row["mismatch_seq_ratio_max"] == pytest.approx(seq_ratio.max().item(), rel=1e-4)
    ratio = flat.exp()
    assert row["mismatch_masked_frac"] == pytest.approx(((ratio < 0.5) | (ratio > 5.0)).float().mean().item())
    assert row["logprob_gap"] == pytest.approx(flat.abs().mean().item(), rel=1e-5)


def test_mismatch_correction_is_refused_without_recompute(model_dir):
    with pytest.raises(ValueError, match=r"mismatch_correction='tis' needs recompute_old_logprobs.*'none'"):
        run(model_dir, loss_cfg=dataclasses.replace(LOSS, mismatch_correction="tis"))


def on_policy_cfg(**changes):
    """recompute on (ratio 1 at epoch 0, so ppo's pg is -A) and no HICRA: the loss is -sum_kept w A / N by hand."""
    return train_cfg(recompute_old_logprobs=True, hicra_alpha=0.0, **changes)


def test_tis_weights_use_the_sampler_logprobs(model_dir):
    out, _, batch = run(model_dir, on_policy_cfg(), loss_cfg=dataclasses.replace(LOSS, mismatch_correction="tis"))
    policy, _ = load(model_dir)
    expected, n = 0.0, 0
    for i, ((logp, _), sampler) in enumerate(zip(full_forward(policy, batch.seqs), batch.sampler_logprobs)):
        weight = (logp - sampler).exp().clamp(max=2.0)  # min(pi_old / pi_sampler, C)
        expected -= (weight * batch.seq_advantages[i]).sum().item()
        n += len(logp)
    assert float(out["loss"]) == pytest.approx(expected / n, rel=1e-5)
    plain, _, _ = run(model_dir, on_policy_cfg())
    assert abs(float(plain["loss"]) - float(out["loss"])) > 1e-3  # the weights mattered


def test_80_20_threshold_is_the_quantile_of_the_whole_step(model_dir):
    """Many micro-batches (8 tokens each), one threshold: the 0.8 quantile of every token's entropy in the step."""
    q = 0.2
    cfg = on_policy_cfg(micro_batch_tokens=8, share_prompt=False, temperature=0.05)  # entropies spread out
    out, _, batch = run(model_dir, cfg, loss_cfg=dataclasses.replace(LOSS, top_entropy_q=q))
    policy, _ = load(model_dir)
    reference = full_forward(policy, batch.seqs, cfg.temperature)
    entropies = torch.cat([ent for _, ent in reference])
    tau = float(np.quantile(entropies.numpy().astype(np.float64), 1 - q))
    assert out["entropy_threshold"] == pytest.approx(tau, rel=1e-5)
    assert (entropies - tau).abs().min() > 1e-4  # no token so close to tau that rounding could flip it
    kept = [ent >= tau for _, ent in reference]
    n_kept = sum(int(k.sum()) for k in kept)
    assert 0 < n_kept < len(entropies) and len(out["loss_stats"]) > 3
    expected = -sum(batch.seq_advantages[i].item() * int(k.sum()) for i, k in enumerate(kept)) / len(entropies)
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    row = update_metrics(out["loss_stats"], out["token_stats"], {})
    assert row["entropy_selected_frac"] == pytest.approx(n_kept / len(entropies), rel=1e-6)


def test_clip_cov_generator_is_seeded(model_dir):
    clip_cov = dataclasses.replace(LOSS, cov_mode="clip", clip_cov_frac=0.5, clip_cov_lb=-1e9, clip_cov_ub=1e9)
    with pytest.raises(ValueError, match="seed"):
        run(model_dir, loss_cfg=clip_cov)
    states = [run(model_dir, loss_cfg=clip_cov, epochs=2, seed=seed)[1] for seed in (1, 1, 2)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # same seed: the same tokens detached
    assert max((states[0][k] - states[2][k]).abs().max().item() for k in states[0]) > 1e-4  # another seed: others


def test_update_metrics_combines_min_max_and_token_weighted_means():
    stats = [dict(tokens=torch.tensor(1), ratio_min=torch.tensor(0.5), mismatch_seq_ratio_min=torch.tensor(0.9),
                  mismatch_abs_max=torch.tensor(0.2), mismatch_abs_mean=torch.tensor(0.1)),
             dict(tokens=torch.tensor(3), ratio_min=torch.tensor(0.7), mismatch_seq_ratio_min=torch.tensor(math.inf),
                  mismatch_abs_max=torch.tensor(0.6), mismatch_abs_mean=torch.tensor(0.3))]
    token_stats = [(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([True]), torch.tensor([0.1]),
                    torch.tensor([0.5]))]
    row = update_metrics(stats, token_stats, {})
    assert row["ratio_min"] == 0.5 and row["mismatch_seq_ratio_min"] == pytest.approx(0.9)
    assert row["mismatch_abs_max"] == pytest.approx(0.6)
    assert row["mismatch_abs_mean"] == pytest.approx((0.1 * 1 + 0.3 * 3) / 4)


def test_two_rank_80_20_update_equals_one_process(tmp_path, model_dir):
    """torchrun, 2 ranks (FSDP2, gloo) with 8 rows each vs one process with all 16: the threshold is the quantile of
    the whole step's entropies, so the updates agree; and it is not the q = 1 update."""
    script = os.path.join(ROOT, "tests", "fsdp_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    options = "top_entropy_q=0.2"
    runs = {"one": [sys.executable, script], "all": [sys.executable, script],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
                    script]}
    for name, command in runs.items():
        extra = ["fp32", options] if name != "all" else []
        done = subprocess.run(command + [model_dir, str(tmp_path / f"{name}.pt")] + extra, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two, every = (torch.load(tmp_path / f"{name}.pt") for name in ("one", "two", "all"))
    assert one["threshold"] is not None and abs(one["threshold"] - two["threshold"]) < 1e-6
    assert abs(one["loss"] - two["loss"]) < 1e-5 and one["loss"] != 0.0
    for name, value in one["state"].items():
        assert (value - two["state"][name]).abs().max().item() < 1e-5, name
    assert max((value - every["state"][name]).abs().max().item() for name, value in one["state"].items()) > 1e-4


# ----------------------------------------------------------------------------- stopping before the first optimizer step

def snapshot(policy, optimizer):
    return {k: v.clone() for k, v in policy.state_dict().items()}, copy.deepcopy(optimizer.state_dict())


def assert_same_state(before, after):
    (weights, opt), (weights_now, opt_now) = before, after
    assert weights.keys() == weights_now.keys() and all(torch.equal(weights[k], weights_now[k]) for k in weights)
    assert opt["param_groups"] == opt_now["param_groups"] and opt["state"].keys() == opt_now["state"].keys()
    for index, state in opt["state"].items():
        assert all(torch.equal(value, opt_now["state"][index][name]) for name, value in state.items()), index


def stop_at_check(n, rank_stops=True):
    """should_stop() that turns True at its n-th call (on this rank); .calls counts the calls."""
    def should_stop():
        should_stop.calls += 1
        return rank_stops and should_stop.calls >= n
    should_stop.calls = 0
    return should_stop


@pytest.mark.parametrize("recompute", [False, True])
def test_a_stop_at_the_second_micro_batch_raises_and_applies_nothing(model_dir, recompute):
    policy, optimizer = load(model_dir)
    update.ppo_update(policy, optimizer, new_batch(policy), CFG, LOSS, 1, 1e-2, 1, False, "cpu")  # AdamW has a state
    before = snapshot(policy, optimizer)
    assert before[1]["state"]  # moments and step counts to compare
    cfg = train_cfg(recompute_old_logprobs=recompute)
    assert len(update.plan_micro_batches(new_batch(policy).seqs, cfg, False)[0]) > 2
    should_stop = stop_at_check(3 if recompute else 2)  # recompute: the pre-pass asks first
    with pytest.raises(Interrupted, match="before the first optimizer step"):
        update.ppo_update(policy, optimizer, new_batch(policy), cfg, LOSS, 2, 1e-2, 1, False, "cpu",
                          should_stop=should_stop)
    assert should_stop.calls == (3 if recompute else 2)
    assert all(p.grad is None for p in policy.parameters()) and not policy.training
    assert_same_state(before, snapshot(policy, optimizer))


@pytest.mark.parametrize("recompute", [False, True])
def test_a_stop_that_never_comes_changes_nothing_and_is_asked_in_the_first_epoch_only(model_dir, recompute):
    cfg = train_cfg(recompute_old_logprobs=recompute)
    _, plain, _ = run(model_dir, cfg, epochs=3)
    policy, _ = load(model_dir)
    micro_batches = len(update.plan_micro_batches(new_batch(policy).seqs, cfg, False)[0])
    should_stop = stop_at_check(micro_batches + 1 + recompute)  # True from the first check after epoch 0
    _, state, _ = run(model_dir, cfg, epochs=3, should_stop=should_stop)
    assert should_stop.calls == micro_batches + recompute  # later epochs are not interrupted, nor asked
    assert all(torch.equal(plain[k], state[k]) for k in plain)


def _stop_rank(rank, store, model_dir, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        policy, optimizer = load(model_dir)
        before = snapshot(policy, optimizer)
        should_stop = stop_at_check(2, rank_stops=rank == 1)  # only rank 1 is told to stop
        try:
            update.ppo_update(policy, optimizer, new_batch(policy), CFG, LOSS, 1, 1e-2, 2, True, "cpu",
                              should_stop=should_stop)
            result = "finished"
        except Interrupted:
            result = "interrupted"
        unchanged = all(torch.equal(v, policy.state_dict()[k]) for k, v in before[0].items())
        with open(f"{out}.{rank}", "w") as f:
            f.write(f"{result} {should_stop.calls} {unchanged}")
    finally:
        dist.destroy_process_group()


def test_one_rank_asked_to_stop_stops_every_rank(tmp_path, model_dir):
    import torch.multiprocessing as mp
    mp.spawn(_stop_rank, args=(str(tmp_path / "store"), model_dir, str(tmp_path / "out")), nprocs=2)
    assert [open(tmp_path / f"out.{rank}").read() for rank in (0, 1)] == ["interrupted 2 True"] * 2
