"""loss.py against hand-computed values, a naive per-token Python loop, and finite differences."""
import math

import pytest
import torch

from loss import (AGG_MODES, LossConfig, aggregate_loss, amplify_mask, fork_token_mask, group_advantages,
                  hicra_advantages, policy_loss, token_advantages)

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
    g = torch.Generator().manual_seed(5)
    B, T, V = 3, 4, 5
    d = random_batch(B, T, seed=6, dtype=torch.float64)
    tokens = torch.randint(0, V, (B, T), generator=g)
    logits0 = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    old = torch.log_softmax(logits0, -1).gather(-1, tokens[..., None])[..., 0]
    cfg = LossConfig(agg=agg, norm_len=6, dual_clip=2.0, kl_coef=0.1, entropy_coef=0.05)
    amplify = amplify_mask(d["planning"], d["entropy"], d["mask"], "union", 0.3)
    adv = hicra_advantages(d["adv"], amplify, 0.2)

    def objective(logits):
        logprobs_all = torch.log_softmax(logits, -1)  # (B, T, V)
        logp = logprobs_all.gather(-1, tokens[..., None])[..., 0]  # (B, T)
        entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)  # (B, T)
        return policy_loss(logp, old, adv, d["mask"], cfg, ref_logprobs=d["ref"].double(), entropy=entropy)[0]

    logits = (logits0 + 0.6 * torch.randn(B, T, V, generator=g, dtype=torch.float64)).requires_grad_()
    ratios = (torch.log_softmax(logits.detach(), -1).gather(-1, tokens[..., None])[..., 0] - old).exp()
    assert ((ratios[d["mask"]] > 1.28) | (ratios[d["mask"]] < 0.8)).any()  # some clipping is exercised
    assert torch.autograd.gradcheck(objective, (logits,), eps=1e-6, atol=1e-7)


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
    d = random_batch(seed=13)
    pad = ~d["mask"]
    cfg = LossConfig(agg=agg, kl_coef=0.1, entropy_coef=0.01)
    results = []
    for fill in (0.0, NAN):
        logp = d["logp"].masked_fill(pad, fill).requires_grad_()
        entropy = d["entropy"].masked_fill(pad, fill).requires_grad_()
        old, adv, ref = (d[k].masked_fill(pad, fill) for k in ("old", "adv", "ref"))
        loss, m = policy_loss(logp, old, adv, d["mask"].float(), cfg, ref_logprobs=ref, entropy=entropy,
                              planning_mask=d["planning"])
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
