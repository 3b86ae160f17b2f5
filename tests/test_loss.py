"""loss.py and pg_variants.py against hand-computed values, a naive per-token Python loop, and finite differences."""
import math

import numpy as np
import pytest
import torch

from loss import (AGG_MODES, LossConfig, aggregate_loss, amplify_mask, fork_token_mask, group_advantages,
                  hicra_advantages, policy_loss, token_advantages)
from pg_variants import (clip_cov_mask, gspo_ratio, high_entropy_threshold, kl_cov_mask, mismatch_weights, sapo_gate,
                         token_covariance)

NAN = float("nan")


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    # group 1: mean 1/4, unbiased var (9/16 + 3/16) / 3 = 1/4 -> std 1/2
    # group 2: mean 1/2, unbiased var 1/3
    # batch:   mean 3/8, unbiased var (3 * 25/64 + 5 * 9/64) / 7 = 120/448
    centered = [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]
    group = [1.5, -0.5, -0.5, -0.5] + [c / math.sqrt(1 / 3) for c in centered[4:]]
    batch = [c / math.sqrt(120 / 448) for c in centered]
    for scale, expected in (("none", centered), ("group", group), ("batch", batch)):
        got = group_advantages(rewards, 4, scale=scale, eps=0.0)
        torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7, msg=scale)
    # eps sits in the denominator
    torch.testing.assert_close(group_advantages(rewards, 4, eps=0.5)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_identical_group_gives_exact_zero(scale):
    # in fp32, 7 x 0.1 and 7 x 0.3 have a mean a few ulp away from 0.1 / 0.3: r - mean alone is not 0
    rewards = torch.tensor([0.1] * 7 + [0.3] * 7 + [0.3, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    adv = group_advantages(rewards, 7, scale=scale)
    assert torch.equal(adv[:14], torch.zeros(14))
    assert (adv[14:] != 0).all()
    assert torch.equal(group_advantages(torch.tensor([0.3, 1.0]), 1, scale=scale), torch.zeros(2))  # G = 1


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="global")


def test_token_advantages():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = token_advantages(torch.tensor([2.0, -1.0]), mask)
    assert torch.equal(got, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="seq_advantages"):
        token_advantages(torch.zeros(3), mask)


# ----------------------------------------------------------------------------- HICRA

def test_fork_token_mask_by_hand():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 5.0, NAN],
                            [0.2, 0.2, 0.1, 9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    # row 0: round(0.4 * 5) = 2 -> 0.9 and 0.7 (pads 5.0 / NaN never count); row 1: round(1.2) = 1 -> first 0.2 (tie)
    expected = torch.tensor([[0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(fork_token_mask(entropy, mask, 0.4), expected)
    # at least one token per non-empty response, none for an empty one
    small = fork_token_mask(torch.rand(2, 4), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]), 0.1)
    assert small.sum(1).tolist() == [1, 0]
    with pytest.raises(ValueError, match="top_q"):
        fork_token_mask(entropy, mask, 0.0)


def test_fork_token_mask_matches_sorting_loop():
    g = torch.Generator().manual_seed(1)
    entropy = torch.rand(16, 23, generator=g)
    lengths = torch.randint(0, 24, (16,), generator=g)
    mask = torch.arange(23)[None] < lengths[:, None]
    for q in (0.2, 0.3, 0.5, 1.0):
        got = fork_token_mask(entropy, mask, q)
        for i in range(16):
            n = int(lengths[i])
            values = entropy[i, :n].tolist()
            k = max(1, round(q * n)) if n else 0
            top = sorted(range(n), key=lambda t: -values[t])[:k]
            assert sorted(torch.nonzero(got[i]).flatten().tolist()) == sorted(top), (q, i)


def test_amplify_mask_modes():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    planning = torch.tensor([[1, 0, 0, 0, 1]], dtype=torch.bool)  # the pad is planning: must be dropped
    entropy = torch.tensor([[0.0, 0.0, 3.0, 0.0, 9.0]])
    assert amplify_mask(planning, entropy, mask, "planning").tolist() == [[True, False, False, False, False]]
    assert amplify_mask(planning, entropy, mask, "entropy", 0.25).tolist() == [[False, False, True, False, False]]
    assert amplify_mask(planning, entropy, mask, "union", 0.25).tolist() == [[True, False, True, False, False]]
    with pytest.raises(ValueError, match="mode"):
        amplify_mask(planning, entropy, mask, "fork")


def test_hicra_advantages_by_hand():
    adv = torch.tensor([[2.0, 2.0, 0.0], [-1.0, -1.0, 0.0]])
    amplify = torch.tensor([[1, 0, 1], [1, 0, 0]], dtype=torch.bool)
    got = hicra_advantages(adv, amplify, alpha=0.2)
    # positive: 2 + 0.2 * 2 = 2.4; negative: -1 + 0.2 * 1 = -0.8 (a smaller penalty); others unchanged
    assert torch.equal(got, torch.tensor([[2.4, 2.0, 0.0], [-0.8, -1.0, 0.0]]))
    with pytest.raises(ValueError, match="amplify"):
        hicra_advantages(adv, amplify[:, :2])


# ----------------------------------------------------------------------------- policy loss: hand values

def hand_case():
    """Row 0: ratios 1, 1.5, 0.5 with A = +1; row 1: ratios 0.5, 1.2 and a NaN pad with A = -2."""
    ratios = torch.tensor([[1.0, 1.5, 0.5], [0.5, 1.2, 1.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, NAN]])
    logp = (old + ratios.log()).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, NAN]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return logp, old, adv, mask


# per-token losses: row 0 -[1, min(1.5, 1.28), 0.5] = [-1, -1.28, -0.5]; row 1 2 * [max(0.5, 0.8), 1.2] = [1.6, 2.4]
HAND_LOSS = {"token-mean": (-2.78 + 4.0) / 5, "seq-mean-token-mean": (-2.78 / 3 + 4.0 / 2) / 2,
             "seq-mean-token-sum": (-2.78 + 4.0) / 2, "seq-mean-token-sum-norm": (-2.78 / 4 + 4.0 / 4) / 2}
# d loss / d logp: -A * r where unclipped, 0 where clipped (row 0 token 1, row 1 token 0), then the agg divisor
HAND_GRAD_NUMERATOR = torch.tensor([[-1.0, 0.0, -0.5], [0.0, 2.4, 0.0]])
HAND_GRAD_DIVISOR = {"token-mean": torch.tensor([[5.0], [5.0]]), "seq-mean-token-mean": torch.tensor([[6.0], [4.0]]),
                     "seq-mean-token-sum": torch.tensor([[2.0], [2.0]]), "seq-mean-token-sum-norm": torch.tensor([[8.0], [8.0]])}


@pytest.mark.parametrize("agg", AGG_MODES)
def test_policy_loss_by_hand(agg):
    logp, old, adv, mask = hand_case()
    loss, metrics = policy_loss(logp, old, adv, mask, LossConfig(agg=agg, norm_len=4))
    torch.testing.assert_close(loss, torch.tensor(HAND_LOSS[agg]))
    loss.backward()
    torch.testing.assert_close(logp.grad, HAND_GRAD_NUMERATOR / HAND_GRAD_DIVISOR[agg])


def test_metrics_by_hand():
    logp, old, adv, mask = hand_case()
    planning = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    _, m = policy_loss(logp, old, adv, mask, LossConfig(), planning_mask=planning)
    k3 = [r - 1 - math.log(r) for r in (1.0, 1.5, 0.5, 0.5, 1.2)]
    expected = dict(clip_frac_low=0.2, clip_frac_high=0.2, approx_kl=sum(k3) / 5, ratio_mean=4.7 / 5,
                    ratio_min=0.5, ratio_max=1.5, adv_planning_mean=(1 - 2 - 2) / 3, adv_execution_mean=1.0)
    for key, value in expected.items():
        torch.testing.assert_close(m[key], torch.tensor(value), msg=key)
    assert int(m["tokens"]) == 5
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    assert "entropy" not in m and "kl_ref" not in m and "clip_frac_dual" not in m


def test_dual_clip_by_hand():
    # A = -1 everywhere; ratios 4 (> c = 3: loss bounded at 3, zero gradient) and 2 (loss 2, gradient -A r = 2)
    old = torch.tensor([[0.0, 0.0]])
    logp = torch.tensor([[math.log(4.0), math.log(2.0)]], requires_grad=True)
    adv = torch.tensor([[-1.0, -1.0]])
    loss, m = policy_loss(logp, old, adv, torch.ones(1, 2), LossConfig(dual_clip=3.0, agg="seq-mean-token-sum"))
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(5.0))
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 2.0]]))
    torch.testing.assert_close(m["clip_frac_dual"], torch.tensor(0.5))


def test_kl_and_entropy_by_hand():
    logp = torch.tensor([[-1.0, -2.0, NAN]], requires_grad=True)
    entropy = torch.tensor([[0.5, 1.5, NAN]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, NAN]])
    mask = torch.tensor([[True, True, False]])
    cfg = LossConfig(kl_coef=0.1, entropy_coef=0.01)
    loss, m = policy_loss(logp, logp.detach(), torch.zeros(1, 3), mask, cfg, ref_logprobs=ref, entropy=entropy)
    d = [-0.5, 1.0]  # ref - logp
    kl = [math.exp(x) - x - 1 for x in d]
    torch.testing.assert_close(loss, torch.tensor((0.1 * sum(kl) - 0.01 * 2.0) / 2))
    loss.backward()
    # d kl / d logp = 1 - exp(ref - logp); d loss / d H = -entropy_coef / N
    torch.testing.assert_close(logp.grad, torch.tensor([[0.1 * (1 - math.exp(x)) / 2 for x in d] + [0.0]]))
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.005, -0.005, 0.0]]))
    torch.testing.assert_close(m["kl_ref"], torch.tensor(sum(kl) / 2))
    torch.testing.assert_close(m["entropy"], torch.tensor(1.0))


# ----------------------------------------------------------------------------- against a naive loop

def random_batch(B=6, T=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[2] = 0  # an empty response
    mask = torch.arange(T)[None] < lengths[:, None]  # (B, T)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    logp = old + (torch.rand(B, T, generator=g, dtype=dtype) - 0.5) * 1.6  # ratios in ~[0.45, 2.2]
    adv = token_advantages(torch.randn(B, generator=g, dtype=dtype), mask)
    adv = adv + 0.3 * torch.randn(B, T, generator=g, dtype=dtype) * mask  # per-token values, as after HICRA
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=dtype)
    entropy = torch.rand(B, T, generator=g, dtype=dtype) * 2
    planning = torch.rand(B, T, generator=g) < 0.3
    return dict(logp=logp, old=old, adv=adv, mask=mask, ref=ref, entropy=entropy, planning=planning)


def naive_loss(logp, entropy, d, cfg):
    """The loss written token by token with Python control flow (independent of loss.py's tensor code)."""
    seq_losses, seq_counts = [], []
    for i in range(logp.shape[0]):
        token_losses = []
        for t in range(logp.shape[1]):
            if not d["mask"][i, t]:
                continue
            a = float(d["adv"][i, t])
            r = torch.exp(logp[i, t] - d["old"][i, t])
            r_value = float(r.detach())
            if a > 0 and r_value > 1 + cfg.eps_high:
                objective = torch.tensor(a * (1 + cfg.eps_high), dtype=logp.dtype)
            elif a < 0 and cfg.dual_clip is not None and r_value > cfg.dual_clip:
                objective = torch.tensor(a * cfg.dual_clip, dtype=logp.dtype)
            elif a < 0 and r_value < 1 - cfg.eps_low:
                objective = torch.tensor(a * (1 - cfg.eps_low), dtype=logp.dtype)
            else:
                objective = a * r
            x = d["ref"][i, t] - logp[i, t]
            token_losses.append(-objective + cfg.kl_coef * (torch.exp(x) - x - 1) - cfg.entropy_coef * entropy[i, t])
        seq_losses.append(sum(token_losses, torch.tensor(0.0, dtype=logp.dtype)))
        seq_counts.append(len(token_losses))
    return naive_aggregate(seq_losses, seq_counts, cfg)


def naive_aggregate(seq_losses, seq_counts, cfg):
    """The four aggregation modes over per-response summed losses and token counts, written out."""
    nonempty = [(s, n) for s, n in zip(seq_losses, seq_counts) if n]
    if cfg.agg == "token-mean":
        return sum(s for s, _ in nonempty) / sum(seq_counts)
    if cfg.agg == "seq-mean-token-mean":
        return sum(s / n for s, n in nonempty) / len(nonempty)
    if cfg.agg == "seq-mean-token-sum":
        return sum(s for s, _ in nonempty) / len(nonempty)
    return sum(s / cfg.norm_len for s, _ in nonempty) / len(nonempty)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("dual_clip", [None, 1.8])
def test_gradient_matches_naive_loop(agg, dual_clip):
    d = random_batch(seed=3)
    cfg = LossConfig(agg=agg, dual_clip=dual_clip, norm_len=5, kl_coef=0.05, entropy_coef=0.02)
    grads = []
    for fn in ("ours", "naive"):
        logp = d["logp"].clone().requires_grad_()
        entropy = d["entropy"].clone().requires_grad_()
        if fn == "ours":
            loss, _ = policy_loss(logp, d["old"], d["adv"], d["mask"], cfg, ref_logprobs=d["ref"], entropy=entropy)
        else:
            loss = naive_loss(logp, entropy, d, cfg)
        loss.backward()
        grads.append((loss.detach(), logp.grad, entropy.grad))
    for ours, naive in zip(*grads):
        torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_finite_differences_on_toy_policy(agg):
    """float64 toy policy (free logits per position) -> logprobs and entropy -> loss, checked by gradcheck."""
    d, old, logits, outputs, _ = toy_policy(5, 6)
    cfg = LossConfig(agg=agg, norm_len=6, dual_clip=2.0, kl_coef=0.1, entropy_coef=0.05)
    amplify = amplify_mask(d["planning"], d["entropy"], d["mask"], "union", 0.3)
    adv = hicra_advantages(d["adv"], amplify, 0.2)

    def objective(logits):
        logp, entropy = outputs(logits)  # (B, T) each
        return policy_loss(logp, old, adv, d["mask"], cfg, ref_logprobs=d["ref"].double(), entropy=entropy)[0]

    ratios = (outputs(logits.detach())[0] - old).exp()
    assert ((ratios[d["mask"]] > 1.28) | (ratios[d["mask"]] < 0.8)).any()  # some clipping is exercised
    assert torch.autograd.gradcheck(objective, (logits,), eps=1e-6, atol=1e-7)


def toy_policy(seed, batch_seed, B=3, T=4, V=5):
    """-> (float64 batch, old logprobs, perturbed logits leaf (B, T, V), logits -> (logp, entropy), the generator)."""
    g = torch.Generator().manual_seed(seed)
    d = random_batch(B, T, seed=batch_seed, dtype=torch.float64)
    tokens = torch.randint(0, V, (B, T), generator=g)
    logits0 = torch.randn(B, T, V, generator=g, dtype=torch.float64)

    def outputs(logits):
        logprobs_all = torch.log_softmax(logits, -1)  # (B, T, V)
        entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)  # (B, T)
        return logprobs_all.gather(-1, tokens[..., None])[..., 0], entropy  # (B, T) each

    logits = (logits0 + 0.6 * torch.randn(B, T, V, generator=g, dtype=torch.float64)).requires_grad_()
    return d, outputs(logits0)[0], logits, outputs, g


# ----------------------------------------------------------------------------- HICRA leaves the loss exact

def test_hicra_alpha_zero_or_empty_mask_is_plain_loss_exactly():
    d = random_batch(seed=7)
    plain = policy_loss(d["logp"], d["old"], d["adv"], d["mask"], LossConfig())[0]
    amplify = amplify_mask(d["planning"], d["entropy"], d["mask"], "union", 0.3)
    assert amplify.any()
    for adv in (hicra_advantages(d["adv"], amplify, 0.0), hicra_advantages(d["adv"], torch.zeros_like(amplify), 0.2)):
        assert torch.equal(policy_loss(d["logp"], d["old"], adv, d["mask"], LossConfig())[0], plain)
    boosted = hicra_advantages(d["adv"], amplify, 0.2)
    diff = boosted - d["adv"]
    assert torch.equal(diff[~amplify], torch.zeros_like(diff[~amplify]))
    torch.testing.assert_close(diff[amplify], 0.2 * d["adv"][amplify].abs())
    positive, negative = amplify & (d["adv"] > 0), amplify & (d["adv"] < 0)
    assert positive.any() and negative.any()
    assert (boosted[positive] > d["adv"][positive]).all()
    assert (boosted[negative].abs() < d["adv"][negative].abs()).all()


# ----------------------------------------------------------------------------- micro-batches

@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batch_invariance(agg):
    d = random_batch(B=8, T=9, seed=11)
    cfg = LossConfig(agg=agg, norm_len=7, kl_coef=0.05, entropy_coef=0.01)

    def leaves():
        return d["logp"].clone().requires_grad_(), d["entropy"].clone().requires_grad_()

    logp, entropy = leaves()
    whole, _ = policy_loss(logp, d["old"], d["adv"], d["mask"], cfg, ref_logprobs=d["ref"], entropy=entropy)
    whole.backward()
    total_tokens = int(d["mask"].sum())
    total_seqs = int((d["mask"].sum(1) > 0).sum())

    mb_logp, mb_entropy = leaves()
    summed = 0.0
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)):
        width = int(d["mask"][rows].sum(1).max())  # each micro-batch padded to its own longest response
        cut = (rows, slice(0, max(width, 1)))
        loss, _ = policy_loss(mb_logp[cut], d["old"][cut], d["adv"][cut], d["mask"][cut], cfg,
                              total_tokens=total_tokens, total_seqs=total_seqs, ref_logprobs=d["ref"][cut],
                              entropy=mb_entropy[cut])
        loss.backward()
        summed = summed + loss.detach()
    torch.testing.assert_close(summed, whole.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(mb_logp.grad, logp.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(mb_entropy.grad, entropy.grad, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- clipping

def test_clipped_tokens_have_zero_gradient_and_are_counted():
    g = torch.Generator().manual_seed(2)
    B, T = 8, 50
    old = -torch.rand(B, T, generator=g) * 4
    ratio = torch.exp((torch.rand(B, T, generator=g) - 0.5) * 2.5)  # ~[0.29, 3.5]
    logp = (old + ratio.log()).requires_grad_()
    adv = torch.randn(B, T, generator=g)
    mask = torch.arange(T)[None] < torch.randint(10, T + 1, (B,), generator=g)[:, None]
    cfg = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip=2.5)
    loss, m = policy_loss(logp, old, adv, mask, cfg)
    loss.backward()
    high, low, dual = 0, 0, 0
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                assert logp.grad[i, t] == 0
                continue
            r, a = float(ratio[i, t]), float(adv[i, t])
            clipped = (a > 0 and r > 1.28) or (a < 0 and r < 0.8) or (a < 0 and r > 2.5)
            high += a > 0 and r > 1.28
            low += a < 0 and r < 0.8
            dual += a < 0 and r > 2.5
            assert (logp.grad[i, t] == 0) == clipped, (i, t, r, a)
    n = int(mask.sum())
    assert high and low and dual
    torch.testing.assert_close(m["clip_frac_high"], torch.tensor(high / n))
    torch.testing.assert_close(m["clip_frac_low"], torch.tensor(low / n))
    torch.testing.assert_close(m["clip_frac_dual"], torch.tensor(dual / n))


# ----------------------------------------------------------------------------- pads and bad input

@pytest.mark.parametrize("agg", AGG_MODES)
def test_nan_in_pads_changes_nothing(agg):
    assert_pads_change_nothing(random_batch(seed=13), LossConfig(agg=agg, kl_coef=0.1, entropy_coef=0.01))


def assert_pads_change_nothing(d, cfg, sampler=None, threshold=None):
    """0 or NaN in every pad of every input: the same loss, gradients and metrics, all finite, no pad gradient."""
    pad = ~d["mask"]
    results = []
    for fill in (0.0, NAN):
        logp = d["logp"].masked_fill(pad, fill).requires_grad_()
        entropy = d["entropy"].masked_fill(pad, fill).requires_grad_()
        old, adv, ref = (d[k].masked_fill(pad, fill) for k in ("old", "adv", "ref"))
        samp = sampler.masked_fill(pad, fill) if sampler is not None else None
        loss, m = policy_loss(logp, old, adv, d["mask"].float(), cfg, ref_logprobs=ref, entropy=entropy,
                              planning_mask=d["planning"], sampler_logprobs=samp, entropy_threshold=threshold,
                              generator=torch.Generator().manual_seed(5))
        loss.backward()
        results.append((loss, logp.grad, entropy.grad, m))
    (loss0, glogp0, gent0, m0), (loss1, glogp1, gent1, m1) = results
    assert torch.isfinite(loss1) and torch.isfinite(glogp1).all() and torch.isfinite(gent1).all()
    assert torch.equal(loss0, loss1) and torch.equal(glogp0, glogp1) and torch.equal(gent0, gent1)
    assert torch.equal(glogp1[pad], torch.zeros(int(pad.sum())))
    for key in m0:
        assert torch.equal(m0[key], m1[key]), key


def test_empty_call_gives_zero_loss():
    z = torch.zeros(2, 3, requires_grad=True)
    loss, m = policy_loss(z, z.detach(), torch.zeros(2, 3), torch.zeros(2, 3), LossConfig())
    assert loss == 0 and int(m["tokens"]) == 0 and torch.isnan(m["ratio_mean"]) and m["ratio_min"] == math.inf


def test_bad_input_raises_naming_the_argument():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="agg"):
        LossConfig(agg="sum")
    with pytest.raises(ValueError, match="dual_clip"):
        LossConfig(dual_clip=0.9)
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_loss(z, torch.zeros(2, 4), z, z, LossConfig())
    with pytest.raises(ValueError, match="planning_mask"):
        policy_loss(z, z, z, z, LossConfig(), planning_mask=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(z, z, z, z, LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(z, z, z, z, LossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="total_tokens"):
        aggregate_loss(z, z, "token-mean", total_tokens=0)


# ============================================================================= issue 19: loss variants and corrections
# Every expected number below is worked out from the formula in the test (math / numpy), never by the code under test.

LN = math.log


def grad_of(cfg, logp, old, adv, mask, **kw):
    """(loss, d loss / d logp, metrics) of one policy_loss call on a fresh leaf."""
    leaf = logp.detach().clone().requires_grad_()
    loss, metrics = policy_loss(leaf, old, adv, mask, cfg, **kw)
    loss.backward()
    return loss.detach(), leaf.grad, metrics


# ----------------------------------------------------------------------------- hand values

def test_gspo_by_hand():
    # row 0: ratios 1.3, 0.8 -> s = sqrt(1.04), inside [0.9, 1.1] although token 0 alone is outside (PPO would clip
    # it): both tokens keep the gradient -A s; per-token (HICRA-like) advantages 1.2, 1.0
    # row 1: ratios 2, 2, 2 -> s = 2 > 1.1 with A = +1: clipped, loss -1.1 per token, no gradient
    # row 2: ratio 0.5 -> s = 0.5 < 0.9 with A = -2: clipped, loss 2 * 0.9 = 1.8, no gradient; pads are NaN
    old = torch.tensor([[-1.0, -2.0, NAN], [-0.5, -1.5, -2.5], [-1.0, NAN, NAN]])
    ratios = torch.tensor([[1.3, 0.8, 1.0], [2.0, 2.0, 2.0], [0.5, 1.0, 1.0]])
    logp = old + ratios.log()
    adv = torch.tensor([[1.2, 1.0, NAN], [1.0, 1.0, 1.0], [-2.0, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    s0 = math.sqrt(1.3 * 0.8)
    cfg = LossConfig(loss="gspo", gspo_eps_low=0.1, gspo_eps_high=0.1)
    loss, grad, m = grad_of(cfg, logp, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor((-2.2 * s0 - 3.3 + 1.8) / 6))
    torch.testing.assert_close(grad, torch.tensor([[-1.2 * s0 / 6, -1.0 * s0 / 6, 0], [0, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(m["clip_frac_high"], torch.tensor(3 / 6))
    torch.testing.assert_close(m["clip_frac_low"], torch.tensor(1 / 6))
    loss, _, _ = grad_of(LossConfig(loss="gspo", gspo_eps_low=0.1, gspo_eps_high=0.1, agg="seq-mean-token-mean"),
                         logp, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor((-2.2 * s0 / 2 - 3.3 / 3 + 1.8) / 3))
    # the ratio itself: value s_i on every token of response i
    torch.testing.assert_close(gspo_ratio(logp, old, mask)[mask], torch.tensor([s0, s0, 2.0, 2.0, 2.0, 0.5]))


def test_cispo_by_hand():
    logp, old, adv, mask = hand_case()  # ratios [1, 1.5, 0.5] A = +1; [0.5, 1.2] A = -2
    cfg = LossConfig(loss="cispo", cispo_eps_low=0.2, cispo_eps_high=0.28)
    w = [[1.0, 1.28, 0.8], [0.8, 1.2]]  # clip(r, 0.8, 1.28), a constant
    lp = [[-1.0, -2.0 + LN(1.5), -0.5 + LN(0.5)], [-1.5 + LN(0.5), -0.7 + LN(1.2)]]
    a = [1.0, -2.0]
    expected = -sum(w[i][t] * a[i] * lp[i][t] for i in range(2) for t in range(len(w[i]))) / 5
    loss, grad, m = grad_of(cfg, logp, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor(expected))
    # every token keeps a gradient -w A / N, also the two that PPO clips (r = 1.5 with A > 0, r = 0.5 with A < 0)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, -1.28, -0.8], [1.6, 2.4, 0.0]]) / 5)
    torch.testing.assert_close(m["clip_frac_low"], torch.tensor(2 / 5))  # r < 0.8, whatever the sign of A
    torch.testing.assert_close(m["clip_frac_high"], torch.tensor(1 / 5))


def test_sapo_by_hand():
    logp, old, adv, mask = hand_case()
    cfg = LossConfig(loss="sapo", sapo_tau_pos=1.0, sapo_tau_neg=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))
    cells = [(1.0, 1.0), (1.5, 1.0), (0.5, 1.0), (0.5, -2.0), (1.2, -2.0)]  # (r, A)
    tau = [1.0 if a > 0 else 2.0 for _, a in cells]
    gate = [sig(t * (r - 1)) * 4 / t for (r, _), t in zip(cells, tau)]
    expected_loss = -sum(g * a for g, (_, a) in zip(gate, cells)) / 5
    # d/dlogp of -A f(r) = -A 4 sigma (1 - sigma) r
    grads = [-a * 4 * sig(t * (r - 1)) * (1 - sig(t * (r - 1))) * r / 5 for (r, a), t in zip(cells, tau)]
    loss, grad, _ = grad_of(cfg, logp, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor(expected_loss))
    torch.testing.assert_close(grad[mask.bool()], torch.tensor(grads))
    ratio = torch.tensor([[1.0, 1.5, 0.5], [0.5, 1.2, 1.0]])
    torch.testing.assert_close(sapo_gate(ratio, adv.nan_to_num(), 1.0, 2.0)[mask.bool()], torch.tensor(gate))


def mismatch_case():
    """hand_case with sampler logprobs such that rho = pi_old / pi_sampler = [1, 3, 0.25] and [0.5, 1] (pad NaN)."""
    logp, old, adv, mask = hand_case()
    rho = torch.tensor([[1.0, 3.0, 0.25], [0.5, 1.0, 1.0]])
    return logp, old, adv, mask, old - rho.log()


# ppo per-token losses of hand_case and their gradient numerators (see HAND_LOSS above)
PPO_TOKEN_LOSS = [[-1.0, -1.28, -0.5], [1.6, 2.4]]
PPO_GRAD = [[-1.0, 0.0, -0.5], [0.0, 2.4]]


@pytest.mark.parametrize("mode, level, bounds, weights", [
    ("tis", "token", dict(tis_cap=2.0), [[1.0, 2.0, 0.25], [0.5, 1.0]]),             # min(rho, 2)
    ("mis", "token", dict(mis_low=0.4, mis_high=2.5), [[1.0, 0.0, 0.0], [0.5, 1.0]]),  # rho in [0.4, 2.5], else 0
    ("tis", "sequence", dict(tis_cap=2.0), [[0.75] * 3, [0.5] * 2]),                 # products 0.75 and 0.5
    ("mis", "sequence", dict(mis_low=0.6, mis_high=2.0), [[0.75] * 3, [0.0] * 2]),   # response 1 dropped
])
def test_mismatch_correction_by_hand(mode, level, bounds, weights):
    logp, old, adv, mask, sampler = mismatch_case()
    cfg = LossConfig(mismatch_correction=mode, mismatch_level=level, **bounds)
    loss, grad, m = grad_of(cfg, logp, old, adv, mask, sampler_logprobs=sampler)
    cells = [(i, t) for i in range(2) for t in range(len(weights[i]))]
    torch.testing.assert_close(loss, torch.tensor(sum(weights[i][t] * PPO_TOKEN_LOSS[i][t] for i, t in cells) / 5))
    expected_grad = torch.zeros(2, 3)
    for i, t in cells:
        expected_grad[i, t] = weights[i][t] * PPO_GRAD[i][t] / 5
    torch.testing.assert_close(grad, expected_grad)
    torch.testing.assert_close(m["mismatch_weight_mean"], torch.tensor(sum(weights[i][t] for i, t in cells) / 5))


def test_mismatch_metrics_by_hand_and_without_correction():
    logp, old, adv, mask, sampler = mismatch_case()
    cfg = LossConfig(mis_low=0.4, mis_high=2.5, tis_cap=2.0)  # correction off: the metrics are still there
    _, _, m = grad_of(cfg, logp, old, adv, mask, sampler_logprobs=sampler)
    torch.testing.assert_close(m["mismatch_abs_mean"], torch.tensor((LN(3) + LN(4) + LN(2)) / 5))
    torch.testing.assert_close(m["mismatch_abs_max"], torch.tensor(LN(4)))
    torch.testing.assert_close(m["mismatch_seq_ratio_min"], torch.tensor(0.5))
    torch.testing.assert_close(m["mismatch_seq_ratio_max"], torch.tensor(0.75))
    torch.testing.assert_close(m["mismatch_masked_frac"], torch.tensor(2 / 5))  # 3 and 0.25 leave [0.4, 2.5]
    torch.testing.assert_close(m["mismatch_truncated_frac"], torch.tensor(1 / 5))  # 3 > 2
    assert "mismatch_weight_mean" not in m
    _, _, m_seq = grad_of(LossConfig(mismatch_level="sequence", mis_low=0.6), logp, old, adv, mask,
                          sampler_logprobs=sampler)
    torch.testing.assert_close(m_seq["mismatch_masked_frac"], torch.tensor(2 / 5))  # the 2 tokens of response 1
    weights, metrics = mismatch_weights(old, sampler, mask, cfg)
    assert weights is None and set(metrics) == {k for k in m if k.startswith("mismatch_")}


def test_high_entropy_threshold_matches_numpy_quantile():
    g = torch.Generator().manual_seed(4)
    for n in (1, 2, 5, 11, 64, 1001):
        values = torch.rand(n, generator=g, dtype=torch.float64) * 3
        for q in (0.2, 0.5, 0.37, 1.0):
            expected = np.quantile(values.numpy(), 1 - q)  # linear interpolation, numpy's default
            torch.testing.assert_close(high_entropy_threshold(values, q), torch.tensor(expected, dtype=torch.float64))
    assert high_entropy_threshold(values, 1.0) == values.min()  # q = 1: every token is at or above tau, exactly
    assert high_entropy_threshold(torch.zeros(0), 0.2) == -math.inf
    with pytest.raises(ValueError, match="top_q"):
        high_entropy_threshold(values, 0.0)
    with pytest.raises(ValueError, match="entropies"):
        high_entropy_threshold(values.view(7, 143), 0.2)


def test_high_entropy_selection_by_hand():
    logp, old, adv, mask = hand_case()
    entropy = torch.tensor([[2.0, 0.5, 1.0], [0.1, 3.0, NAN]])
    tau = high_entropy_threshold(entropy[mask.bool()], 0.4)
    # 0.6 quantile of [0.1, 0.5, 1, 2, 3]: position 4 * 0.6 = 2.4 -> 1 + 0.4 (2 - 1) = 1.4: keeps 2.0 and 3.0
    torch.testing.assert_close(tau, torch.tensor(1.4))
    loss, grad, m = grad_of(LossConfig(top_entropy_q=0.4), logp, old, adv, mask, entropy=entropy,
                            entropy_threshold=tau)
    torch.testing.assert_close(loss, torch.tensor((-1.0 + 2.4) / 5))  # the divisor stays every token (5)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, 0, 0], [0, 2.4, 0]]) / 5)
    torch.testing.assert_close(m["entropy_selected_frac"], torch.tensor(2 / 5))


def cov_case():
    """One response of 5 tokens (+ a NaN pad): ratios [1, 1.1, 2, 0.9, 1], A = [2, -1, 3, 1, -2].
    cov = (A - 0.6)(logp - mean logp) = [1.657, 2.434, 2.824, -0.489, -0.997] (numpy, checked in the tests);
    token 2 (r = 2, A > 0) is clipped by PPO's 1.28."""
    old = torch.tensor([[-0.2, -3.0, -0.9, -2.5, -1.0, NAN]])
    ratios = torch.tensor([[1.0, 1.1, 2.0, 0.9, 1.0, 1.0]])
    adv = torch.tensor([[2.0, -1.0, 3.0, 1.0, -2.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    return old + ratios.log(), old, adv, mask


def test_token_covariance_by_hand():
    logp, old, adv, mask = cov_case()
    lp, a = logp[0, :5].double().numpy(), adv[0, :5].double().numpy()
    expected = (a - a.mean()) * (lp - lp.mean())
    np.testing.assert_allclose(expected, [1.65673, 2.43409, 2.82367, -0.48879, -0.99679], atol=1e-5)
    cov = token_covariance(logp, adv, mask)
    torch.testing.assert_close(cov[0, :5], torch.tensor(expected, dtype=torch.float32))
    assert cov[0, 5] == 0


def test_clip_cov_by_hand():
    logp, old, adv, mask = cov_case()
    # band (2, 5) holds tokens 1 and 2; token 2 is PPO-clipped, so token 1 is the only candidate; k = max(1, 0) = 1
    cfg = LossConfig(cov_mode="clip", clip_cov_lb=2.0, clip_cov_ub=5.0)
    loss, grad, m = grad_of(cfg, logp, old, adv, mask, generator=torch.Generator().manual_seed(0))
    ppo_loss, ppo_grad, _ = grad_of(LossConfig(), logp, old, adv, mask)
    torch.testing.assert_close(loss, ppo_loss)  # detached, not zeroed: the value is kept
    # ppo gradient -A r / 5: [-2, 1.1, 0 (clipped), -0.9, 2] / 5; Clip-Cov removes token 1's
    torch.testing.assert_close(ppo_grad, torch.tensor([[-2.0, 1.1, 0.0, -0.9, 2.0, 0.0]]) / 5)
    torch.testing.assert_close(grad, torch.tensor([[-2.0, 0.0, 0.0, -0.9, 2.0, 0.0]]) / 5)
    torch.testing.assert_close(m["cov_selected_frac"], torch.tensor(1 / 5))
    # fraction 1 in the default band (1, 5): every unclipped in-band token (0 and 1), never the clipped token 2
    _, grad, m = grad_of(LossConfig(cov_mode="clip", clip_cov_frac=1.0), logp, old, adv, mask,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, 0.0, -0.9, 2.0, 0.0]]) / 5)
    torch.testing.assert_close(m["cov_selected_frac"], torch.tensor(2 / 5))


def test_clip_cov_draws_a_reproducible_uniform_subset():
    logp, old, adv, mask = cov_case()  # default band (1, 5): tokens 0, 1, 2; candidates 0 and 1 (2 is clipped)
    cov = token_covariance(logp, adv, mask)
    unclipped = torch.tensor([[1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    everything = clip_cov_mask(cov, unclipped, mask, 1.0, 1.0, 5.0, torch.Generator().manual_seed(0))
    assert everything.tolist() == [[True, True, False, False, False, False]]  # k = 5 >= 2 candidates: both
    picks = [clip_cov_mask(cov, unclipped, mask, 2e-4, 1.0, 5.0, torch.Generator().manual_seed(s)) for s in range(400)]
    assert all(int(p.sum()) == 1 and not (p & ~everything).any() for p in picks)
    first = sum(int(p[0, 0]) for p in picks)
    assert 150 < first < 250, first  # ~Binomial(400, 1/2): 5 sigma is +-50
    again = clip_cov_mask(cov, unclipped, mask, 2e-4, 1.0, 5.0, torch.Generator().manual_seed(7))
    assert torch.equal(again, picks[7])  # same seed, same tokens
    # a larger case: exactly k = floor(0.1 * N) tokens, all candidates, each candidate about equally often
    g = torch.Generator().manual_seed(3)
    big_cov = torch.randn(8, 25, generator=g)
    big_mask = torch.rand(8, 25, generator=g) < 0.8
    candidates = torch.rand(8, 25, generator=g) < 0.7
    band = big_mask & candidates & (big_cov > -1.0) & (big_cov < 1.5)
    k, m = math.floor(0.1 * int(big_mask.sum())), int(band.sum())
    assert k < m
    counts = torch.zeros(8, 25)
    for s in range(300):
        chosen = clip_cov_mask(big_cov, candidates, big_mask, 0.1, -1.0, 1.5, torch.Generator().manual_seed(s))
        assert int(chosen.sum()) == k and not (chosen & ~band).any()
        counts += chosen.float()
    p = k / m
    assert (counts[band] - 300 * p).abs().max() < 5 * math.sqrt(300 * p * (1 - p))


def test_kl_cov_by_hand():
    logp, old, adv, mask = cov_case()
    # k = floor(0.4 * 5) = 2: the tokens of largest cov are 2 (2.824) and 1 (2.434); no ratio clip under KL-Cov
    cfg = LossConfig(cov_mode="kl", kl_cov_frac=0.4, kl_cov_coef=0.5)
    loss, grad, m = grad_of(cfg, logp, old, adv, mask)
    r, a = [1.0, 1.1, 2.0, 0.9, 1.0], [2.0, -1.0, 3.0, 1.0, -2.0]
    pg = sum(-ai * ri for ai, ri in zip(a, r))
    torch.testing.assert_close(loss, torch.tensor((pg + 0.5 * (LN(2.0) + LN(1.1))) / 5))
    # d/dlogp: -A r, plus 0.5 sign(log r) on the two penalised tokens (both have r > 1)
    expected = [-ai * ri / 5 for ai, ri in zip(a, r)]
    expected[1] += 0.5 / 5
    expected[2] += 0.5 / 5
    torch.testing.assert_close(grad, torch.tensor([expected + [0.0]]))
    torch.testing.assert_close(m["cov_selected_frac"], torch.tensor(2 / 5))
    assert m["clip_frac_high"] == 0 and m["clip_frac_low"] == 0
    # ties go to the earlier token
    tied = kl_cov_mask(torch.tensor([[1.0, 3.0, 3.0, 3.0]]), torch.ones(1, 4), 0.5)
    assert tied.tolist() == [[False, True, True, False]]


# ----------------------------------------------------------------------------- against per-token loops

def with_sampler(d, seed):
    g = torch.Generator().manual_seed(seed)
    return d["old"] + 0.15 * torch.randn(d["old"].shape, generator=g, dtype=d["old"].dtype)


def naive_variant_loss(logp, d, cfg, sampler=None, entropy=None, threshold=None):
    """ppo / gspo / cispo / sapo with TIS / MIS and the 80/20 selection, token by token in Python (no KL / entropy)."""
    seq_losses, seq_counts = [], []
    for i in range(logp.shape[0]):
        tokens = [t for t in range(logp.shape[1]) if d["mask"][i, t]]
        log_r = [float(logp[i, t].detach() - d["old"][i, t]) for t in tokens]
        s = math.exp(sum(log_r) / len(tokens)) if tokens else 1.0
        log_rho = [float(d["old"][i, t] - sampler[i, t]) for t in tokens] if sampler is not None else []
        token_losses = []
        for j, t in enumerate(tokens):
            a, r = float(d["adv"][i, t]), math.exp(log_r[j])
            r_with_grad = torch.exp(logp[i, t] - d["old"][i, t])
            if cfg.loss in ("ppo", "gspo"):
                ratio = r if cfg.loss == "ppo" else s
                lo, hi = (1 - cfg.eps_low, 1 + cfg.eps_high) if cfg.loss == "ppo" else \
                    (1 - cfg.gspo_eps_low, 1 + cfg.gspo_eps_high)
                if (a > 0 and ratio > hi) or (a < 0 and ratio < lo):
                    objective = torch.tensor(a * min(max(ratio, lo), hi), dtype=logp.dtype)
                elif cfg.loss == "ppo":
                    objective = a * r_with_grad
                else:  # GSPO-token: value s, gradient s d logp_t
                    objective = a * s * torch.exp(logp[i, t] - logp[i, t].detach())
            elif cfg.loss == "cispo":
                objective = a * min(max(r, 1 - cfg.cispo_eps_low), 1 + cfg.cispo_eps_high) * logp[i, t]
            else:
                tau = cfg.sapo_tau_pos if a > 0 else cfg.sapo_tau_neg
                objective = a * torch.sigmoid(tau * (r_with_grad - 1)) * 4 / tau
            token_loss = -objective
            if cfg.mismatch_correction != "none":
                rho = math.exp(log_rho[j] if cfg.mismatch_level == "token" else sum(log_rho))
                if cfg.mismatch_correction == "tis":
                    weight = min(rho, cfg.tis_cap)
                else:
                    weight = rho if cfg.mis_low <= rho <= cfg.mis_high else 0.0
                token_loss = token_loss * weight
            if cfg.top_entropy_q < 1 and float(entropy[i, t]) < threshold:
                token_loss = token_loss * 0.0
            token_losses.append(token_loss)
        seq_losses.append(sum(token_losses, torch.tensor(0.0, dtype=logp.dtype)))
        seq_counts.append(len(tokens))
    return naive_aggregate(seq_losses, seq_counts, cfg)


def compare_with_loop(d, cfg, loop, **kw):
    """policy_loss and `loop(logp)` give the same loss and gradient."""
    results = []
    for fn in ("ours", "loop"):
        logp = d["logp"].clone().requires_grad_()
        loss = policy_loss(logp, d["old"], d["adv"], d["mask"], cfg, **kw)[0] if fn == "ours" else loop(logp)
        loss.backward()
        results.append((loss.detach(), logp.grad))
    for ours, naive in zip(*results):
        torch.testing.assert_close(ours, naive, rtol=1e-5, atol=1e-7)


VARIANT_EPS = dict(gspo_eps_low=0.05, gspo_eps_high=0.08, cispo_eps_low=0.3, cispo_eps_high=0.5,
                   sapo_tau_pos=1.0, sapo_tau_neg=1.7)  # tighter than the defaults, so that the clips act here


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("loss_type", ["ppo", "gspo", "cispo", "sapo"])
def test_variants_match_naive_loop(loss_type, agg):
    d = random_batch(seed=17)
    sampler = with_sampler(d, 18)
    entropy = d["entropy"]
    threshold = float(np.quantile(entropy[d["mask"]].numpy(), 1 - 0.5))
    cfg = LossConfig(loss=loss_type, agg=agg, norm_len=5, mismatch_correction="tis", tis_cap=1.1,
                     top_entropy_q=0.5, **VARIANT_EPS)
    loop = lambda logp: naive_variant_loss(logp, d, cfg, sampler, entropy, threshold)
    compare_with_loop(d, cfg, loop, sampler_logprobs=sampler, entropy=entropy, entropy_threshold=threshold)


@pytest.mark.parametrize("correction", [("none", "token"), ("tis", "sequence"), ("mis", "token"), ("mis", "sequence")])
@pytest.mark.parametrize("loss_type", ["ppo", "gspo", "cispo", "sapo"])
def test_corrections_match_naive_loop(loss_type, correction):
    d = random_batch(seed=23)
    sampler = with_sampler(d, 24)
    mode, level = correction
    cfg = LossConfig(loss=loss_type, mismatch_correction=mode, mismatch_level=level, tis_cap=1.2,
                     mis_low=0.5 if level == "sequence" else 0.85, mis_high=1.6 if level == "sequence" else 1.15,
                     **VARIANT_EPS)
    if mode != "none":
        weights = mismatch_weights(d["old"], sampler, d["mask"], cfg)[0][d["mask"]]
        assert (weights == 0).any() and (weights != 0).any() if mode == "mis" else (weights == 1.2).any()
    compare_with_loop(d, cfg, lambda logp: naive_variant_loss(logp, d, cfg, sampler), sampler_logprobs=sampler)


def naive_cov_loss(logp, d, cfg):
    """PPO with Clip-Cov (every in-band unclipped token detached: use fraction 1) or KL-Cov, token by token."""
    cells = [(i, t) for i in range(logp.shape[0]) for t in range(logp.shape[1]) if d["mask"][i, t]]  # row-major
    adv_mean = sum(float(d["adv"][c]) for c in cells) / len(cells)
    logp_mean = sum(float(logp[c].detach()) for c in cells) / len(cells)
    cov = {c: (float(d["adv"][c]) - adv_mean) * (float(logp[c].detach()) - logp_mean) for c in cells}
    penalised = set(sorted(cells, key=lambda c: -cov[c])[:max(1, int(cfg.kl_cov_frac * len(cells)))])
    seq_losses = [torch.tensor(0.0, dtype=logp.dtype) for _ in range(logp.shape[0])]
    seq_counts = [0] * logp.shape[0]
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    for c in cells:
        a, r_with_grad = float(d["adv"][c]), torch.exp(logp[c] - d["old"][c])
        r = float(r_with_grad.detach())
        if cfg.cov_mode == "kl":
            token_loss = -a * r_with_grad + (cfg.kl_cov_coef * (logp[c] - d["old"][c]).abs() if c in penalised else 0.0)
        elif (a > 0 and r > hi) or (a < 0 and r < lo):
            token_loss = torch.tensor(-a * min(max(r, lo), hi), dtype=logp.dtype)
        else:
            token_loss = -a * r_with_grad
            if cfg.clip_cov_lb < cov[c] < cfg.clip_cov_ub:
                token_loss = token_loss.detach()
        seq_losses[c[0]] = seq_losses[c[0]] + token_loss
        seq_counts[c[0]] += 1
    return naive_aggregate(seq_losses, seq_counts, cfg)


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("cov_mode", ["clip", "kl"])
def test_covariance_modes_match_naive_loop(cov_mode, agg):
    d = random_batch(seed=29)
    cfg = LossConfig(cov_mode=cov_mode, agg=agg, norm_len=5, clip_cov_frac=1.0, clip_cov_lb=-0.05, clip_cov_ub=0.2,
                     kl_cov_frac=0.2, kl_cov_coef=0.7)
    cov = token_covariance(d["logp"], d["adv"], d["mask"])[d["mask"]]
    assert ((cov > -0.05) & (cov < 0.2)).any() and ((cov <= -0.05) | (cov >= 0.2)).any()  # the band splits tokens
    compare_with_loop(d, cfg, lambda logp: naive_cov_loss(logp, d, cfg), generator=torch.Generator().manual_seed(0))


def test_gspo_token_equals_sequence_level_gspo():
    """With one advantage per response and seq-mean-token-mean, GSPO-token's loss and gradient are those of GSPO's
    sequence objective -1/G sum_i min(s_i A_i, clip(s_i) A_i) with s_i's full gradient (the paper's Eq. 5 and 7)."""
    d = random_batch(seed=31)
    seq_adv = torch.randn(6, generator=torch.Generator().manual_seed(32))
    d["adv"] = token_advantages(seq_adv, d["mask"])
    cfg = LossConfig(loss="gspo", agg="seq-mean-token-mean", gspo_eps_low=0.05, gspo_eps_high=0.08)

    def sequence_gspo(logp):
        terms, clipped = [], []
        for i in range(logp.shape[0]):
            n = int(d["mask"][i].sum())
            if not n:
                continue
            s = torch.exp((logp[i, :n] - d["old"][i, :n]).sum() / n)  # full autograd through every token
            a, lo, hi = float(seq_adv[i]), 0.95, 1.08
            s_value = float(s.detach())
            is_clipped = (a > 0 and s_value > hi) or (a < 0 and s_value < lo)
            clipped.append(is_clipped)
            terms.append(-(a * s.clamp(lo, hi).detach() if is_clipped else a * s))
        assert any(clipped) and not all(clipped)
        return sum(terms) / len(terms)

    compare_with_loop(d, cfg, sequence_gspo)


@pytest.mark.parametrize("option", ["sapo", "tis-sequence", "mis", "kl-cov", "entropy-80-20"])
def test_finite_differences_of_variants(option):
    """float64 toy policy through gradcheck, for the variants whose gradient is the derivative of their value
    (GSPO-token and CISPO use stop-gradients by design: they are checked against GSPO's sequence objective and the
    loops above)."""
    d, old, logits, outputs, g = toy_policy(41, 42)
    sampler = old + 0.2 * torch.randn(old.shape, generator=g, dtype=torch.float64)
    cfg = dict(sapo=LossConfig(loss="sapo", sapo_tau_neg=1.7, entropy_coef=0.05),
               **{"tis-sequence": LossConfig(mismatch_correction="tis", mismatch_level="sequence", tis_cap=1.1)},
               mis=LossConfig(mismatch_correction="mis", mis_low=0.9, mis_high=1.2),
               **{"kl-cov": LossConfig(cov_mode="kl", kl_cov_frac=0.3)},
               **{"entropy-80-20": LossConfig(top_entropy_q=0.5, loss="sapo")})[option]
    values = outputs(logits.detach())[1][d["mask"]].sort().values
    threshold = float(values[len(values) // 2 - 1] + values[len(values) // 2]) / 2  # halfway: gradcheck flips nothing

    def objective(logits):
        logp, entropy = outputs(logits)  # (B, T) each
        return policy_loss(logp, old, d["adv"], d["mask"], cfg, entropy=entropy, sampler_logprobs=sampler,
                           entropy_threshold=threshold)[0]

    assert torch.autograd.gradcheck(objective, (logits,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- neutral settings reduce to today's loss

def plain(d, **kw):
    return grad_of(LossConfig(**kw.pop("cfg", {})), d["logp"], d["old"], d["adv"], d["mask"], **kw)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_on_policy_variants_have_the_ppo_gradient(agg):
    """At r = 1 every variant's gradient is vanilla PG's -A: bitwise for gspo and cispo, 1e-7 for sapo (tau 4 / tau)."""
    d = random_batch(seed=43)
    d["logp"] = d["old"].clone()
    ppo_loss, ppo_grad, _ = plain(d, cfg=dict(agg=agg, norm_len=5))
    for loss_type, exact in (("gspo", True), ("cispo", True), ("sapo", False)):
        loss, grad, _ = plain(d, cfg=dict(loss=loss_type, agg=agg, norm_len=5))
        if exact:
            assert torch.equal(grad, ppo_grad), loss_type
        else:
            torch.testing.assert_close(grad, ppo_grad, rtol=0, atol=1e-7)
    assert torch.equal(plain(d, cfg=dict(loss="gspo", agg=agg, norm_len=5))[0], ppo_loss)  # and gspo's value


def test_gspo_on_one_token_responses_is_ppo_exactly():
    d = random_batch(B=40, seed=47)
    d["mask"] = torch.zeros_like(d["mask"])
    d["mask"][:, 0] = True  # every response has one token: s_i is that token's ratio
    ppo = plain(d, cfg=dict(eps_low=0.2, eps_high=0.28))
    gspo = plain(d, cfg=dict(loss="gspo", gspo_eps_low=0.2, gspo_eps_high=0.28))
    assert torch.equal(ppo[0], gspo[0]) and torch.equal(ppo[1], gspo[1])
    assert ppo[2]["clip_frac_high"] > 0 or ppo[2]["clip_frac_low"] > 0


@pytest.mark.parametrize("agg", AGG_MODES)
def test_cispo_without_bounds_is_vanilla_policy_gradient(agg):
    d = random_batch(seed=53)
    loss, grad, m = plain(d, cfg=dict(loss="cispo", agg=agg, norm_len=5, cispo_eps_low=math.inf,
                                       cispo_eps_high=math.inf))
    ratio = (d["logp"] - d["old"]).exp()
    vanilla = aggregate_loss(torch.where(d["mask"], -d["adv"] * ratio, 0.0), d["mask"], agg, 5)  # -A r, no clip
    leaf = d["logp"].clone().requires_grad_()
    aggregate_loss(torch.where(d["mask"], -d["adv"] * (leaf - d["old"]).exp(), 0.0), d["mask"], agg, 5).backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=0, atol=1e-7)
    assert m["clip_frac_low"] == 0 and m["clip_frac_high"] == 0
    assert not torch.isclose(loss, vanilla)  # only the gradient is vanilla PG's; the value is -A r logp


@pytest.mark.parametrize("agg", AGG_MODES)
def test_neutral_corrections_and_selections_are_bitwise_no_ops(agg):
    d = random_batch(seed=59)
    base = dict(agg=agg, norm_len=5, kl_coef=0.05, entropy_coef=0.01)
    kw = dict(ref_logprobs=d["ref"])

    def run(cfg, **extra):
        entropy = d["entropy"].clone().requires_grad_()
        loss, grad, m = grad_of(LossConfig(**{**base, **cfg}), d["logp"], d["old"], d["adv"], d["mask"],
                                entropy=entropy, **kw, **extra)
        return loss, grad, m

    ref_loss, ref_grad, ref_m = run({})
    same_logprobs = d["old"].clone()
    cases = [
        ({}, dict(sampler_logprobs=with_sampler(d, 60))),  # sampler logprobs, no correction: metrics only
        (dict(mismatch_correction="tis", tis_cap=math.inf), dict(sampler_logprobs=same_logprobs)),
        (dict(mismatch_correction="tis", mismatch_level="sequence"), dict(sampler_logprobs=same_logprobs)),
        (dict(mismatch_correction="mis"), dict(sampler_logprobs=same_logprobs)),
        (dict(mismatch_correction="mis", mismatch_level="sequence"), dict(sampler_logprobs=same_logprobs)),
        (dict(top_entropy_q=1.0), dict(entropy_threshold=10.0)),  # q = 1: the threshold is not even read
        (dict(top_entropy_q=0.5), dict(entropy_threshold=high_entropy_threshold(d["entropy"][d["mask"]], 1.0))),
        (dict(cov_mode="clip", clip_cov_lb=1e8, clip_cov_ub=2e8), dict(generator=torch.Generator().manual_seed(0))),
    ]
    for cfg, extra in cases:
        loss, grad, m = run(cfg, **extra)
        assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad), cfg
        for key in ref_m:
            assert torch.equal(m[key], ref_m[key]), (cfg, key)


def test_kl_cov_with_zero_coefficient_is_unclipped_policy_gradient():
    d = random_batch(seed=61)
    loss, grad, _ = plain(d, cfg=dict(cov_mode="kl", kl_cov_coef=0.0))
    leaf = d["logp"].clone().requires_grad_()
    vanilla = aggregate_loss(torch.where(d["mask"], -d["adv"] * (leaf - d["old"]).exp(), 0.0), d["mask"], "token-mean")
    vanilla.backward()
    assert torch.equal(loss, vanilla.detach()) and torch.equal(grad, leaf.grad)


# ----------------------------------------------------------------------------- micro-batches, pads

OPTION_SETS = {
    "gspo": dict(loss="gspo", **VARIANT_EPS), "cispo": dict(loss="cispo", **VARIANT_EPS),
    "sapo": dict(loss="sapo", **VARIANT_EPS),
    "tis-sequence": dict(mismatch_correction="tis", mismatch_level="sequence"),
    "mis": dict(mismatch_correction="mis", mis_low=0.9, mis_high=1.1), "entropy-80-20": dict(top_entropy_q=0.3),
}


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("option", list(OPTION_SETS))
def test_variant_micro_batch_invariance(option, agg):
    """Splitting the step between responses changes nothing (the 80/20 threshold is computed once for the step)."""
    d = random_batch(B=8, T=9, seed=67)
    sampler = with_sampler(d, 68)
    cfg = LossConfig(agg=agg, norm_len=7, **OPTION_SETS[option])
    threshold = high_entropy_threshold(d["entropy"][d["mask"]], 0.3)
    kw = dict(entropy_threshold=threshold)
    whole = grad_of(cfg, d["logp"], d["old"], d["adv"], d["mask"], sampler_logprobs=sampler, entropy=d["entropy"], **kw)
    leaf = d["logp"].clone().requires_grad_()
    summed = 0.0
    totals = dict(total_tokens=int(d["mask"].sum()), total_seqs=int((d["mask"].sum(1) > 0).sum()))
    for rows in (slice(0, 3), slice(3, 4), slice(4, 8)):
        width = max(int(d["mask"][rows].sum(1).max()), 1)
        cut = (rows, slice(0, width))
        loss, _ = policy_loss(leaf[cut], d["old"][cut], d["adv"][cut], d["mask"][cut], cfg, **totals, **kw,
                              sampler_logprobs=sampler[cut], entropy=d["entropy"][cut])
        loss.backward()
        summed = summed + loss.detach()
    torch.testing.assert_close(summed, whole[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(leaf.grad, whole[1], rtol=0, atol=1e-6)


PAD_OPTION_SETS = {**OPTION_SETS,
                   "clip-cov": dict(cov_mode="clip", clip_cov_frac=0.5, clip_cov_lb=-0.1, clip_cov_ub=0.3),
                   "kl-cov": dict(cov_mode="kl", kl_cov_frac=0.3),
                   "mis-sequence": dict(mismatch_correction="mis", mismatch_level="sequence")}


@pytest.mark.parametrize("option", list(PAD_OPTION_SETS))
def test_variant_nan_in_pads_changes_nothing(option):
    d = random_batch(seed=71)
    cfg = LossConfig(kl_coef=0.1, entropy_coef=0.01, **PAD_OPTION_SETS[option])
    assert_pads_change_nothing(d, cfg, with_sampler(d, 72), high_entropy_threshold(d["entropy"][d["mask"]], 0.3))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, field", [
    (dict(loss="grpo"), "loss"), (dict(cov_mode="both"), "cov_mode"),
    (dict(mismatch_correction="is"), "mismatch_correction"),
    (dict(mismatch_level="seq"), "mismatch_level"), (dict(eps_low=1.0), "eps_low"), (dict(eps_high=NAN), "eps_high"),
    (dict(dual_clip=3.0, loss="gspo"), "dual_clip"), (dict(dual_clip=3.0, cov_mode="kl"), "dual_clip"),
    (dict(norm_len=0), "norm_len"), (dict(kl_coef=-1.0), "kl_coef"), (dict(gspo_eps_low=1.0), "gspo_eps_low"),
    (dict(gspo_eps_high=-1e-4), "gspo_eps_high"), (dict(cispo_eps_low=-0.1), "cispo_eps_low"),
    (dict(cispo_eps_high=-1.0), "cispo_eps_high"), (dict(sapo_tau_pos=0.0), "sapo_tau_pos"),
    (dict(sapo_tau_neg=math.inf), "sapo_tau_neg"), (dict(top_entropy_q=0.0), "top_entropy_q"),
    (dict(top_entropy_q=1.5), "top_entropy_q"), (dict(cov_mode="clip", loss="cispo"), "cov_mode"),
    (dict(clip_cov_frac=0.0), "clip_cov_frac"), (dict(clip_cov_lb=5.0, clip_cov_ub=1.0), "clip_cov_ub"),
    (dict(kl_cov_frac=2.0), "kl_cov_frac"), (dict(kl_cov_coef=-1.0), "kl_cov_coef"), (dict(tis_cap=0.0), "tis_cap"),
    (dict(mis_low=-0.1), "mis_low"), (dict(mis_low=2.0, mis_high=1.0), "mis_high"),
    (dict(mis_high=NAN), "mis_high"),
])
def test_loss_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^LossConfig\.{field} must"):
        LossConfig(**kwargs)


def test_missing_inputs_of_the_options_raise():
    z = torch.zeros(2, 3)
    for cfg, extra, name in ((LossConfig(mismatch_correction="tis"), {}, "sampler_logprobs"),
                             (LossConfig(top_entropy_q=0.2), dict(entropy_threshold=0.5), "entropy"),
                             (LossConfig(top_entropy_q=0.2), dict(entropy=z), "entropy_threshold"),
                             (LossConfig(cov_mode="clip"), {}, "generator"),
                             (LossConfig(), dict(sampler_logprobs=torch.zeros(2, 4)), "sampler_logprobs")):
        with pytest.raises(ValueError, match=name):
            policy_loss(z, z, z, torch.ones(2, 3), cfg, **extra)
