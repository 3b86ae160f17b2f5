"""Group advantages, HICRA credit assignment, and the clipped token-level policy-gradient loss.

Pure tensor functions (no module state, no `.item()`, no device logic): train.py calls them as
    A_i   = group_advantages(rewards, G)                 # (B,) one advantage per response
    A_it  = token_advantages(A_i, mask)                   # (B, T) broadcast over response tokens
    A'_it = hicra_advantages(A_it, amplify_mask(...))     # HICRA on planning (or fork) tokens
    loss, metrics = policy_loss(logp, old_logp, A', mask, LossConfig(...), total_tokens=..., total_seqs=...)
Every per-token tensor is (B, T), right-padded, with a bool/float response `mask`; pad positions are
excluded with `torch.where` (never by multiplying with the mask), so NaN or garbage in pads cannot leak
into the loss, its gradient or the metrics.

Group advantages (rows [g*G, (g+1)*G) are the G samples of prompt g):
    group (GRPO):     A_i = (r_i - mean_g(r)) / (std_g(r) + eps)
    batch (LitePPO):  A_i = (r_i - mean_g(r)) / (std_batch(r) + eps)    std of the raw rewards of the whole batch
    none (Dr.GRPO):   A_i =  r_i - mean_g(r)
std is the unbiased (Bessel, n - 1) sample std, as in TRL and verl (a group of one has std 0). A group of
identical rewards gets advantage 0 exactly (not a rounding residue of r - mean).

HICRA ("Emergent Hierarchical Reasoning in LLMs through RL"), applied after group normalisation:
    A'_it = A_it + alpha * |A_it|   if token t of response i is amplified,   A'_it = A_it otherwise
The amplified set is the planning-token mask (the paper), the "fork" tokens (the round(q * n_i)
highest-entropy tokens of response i, at least one; ties go to the earlier token), or their union: the
paper's planning-vs-high-entropy ablation. Deviation: the fork-token paper thresholds at a batch-wide
entropy quantile; here the top-q is taken per response, as the issue asks.

Policy loss, per valid token, with r = exp(logp - old_logp) and A the (HICRA) advantage:
    pg     = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)          clip-higher (DAPO)
    pg     = min(pg, -c * A)   where A < 0, when dual_clip = c > 1          dual-clip (Ye et al. 2020)
    kl     = exp(ref - logp) - (ref - logp) - 1                            k3 estimator of KL(pi || ref)
    l_it   = pg + kl_coef * kl - entropy_coef * H_it
A clipped token has zero gradient: A > 0 and r > 1 + eps_high ("high"), A < 0 and r < 1 - eps_low ("low"),
A < 0 and r > c ("dual"). Aggregation over the whole optimizer step (N = total_tokens over all
micro-batches and ranks, S = total_seqs, n_i = valid tokens of response i):
    token-mean              (DAPO):    sum_it l_it / N
    seq-mean-token-mean     (GRPO):    sum_i (sum_t l_it / n_i) / S
    seq-mean-token-sum:                sum_i  sum_t l_it / S
    seq-mean-token-sum-norm (Dr.GRPO): sum_i (sum_t l_it / norm_len) / S
Each micro-batch divides by the step's totals, so the sum of the micro-batch losses has exactly the
gradient of one call on the whole batch (a per-micro-batch mean would silently re-weight tokens).
Deviation: verl's seq-mean-token-sum-norm divides the summed sequence losses by the padded width and
not by S; we follow Dr.GRPO's code (a mean over sequences of sum / constant length).

Metrics (0-dim, detached), over this call's valid tokens: clip_frac_low / clip_frac_high (/ clip_frac_dual
with dual-clip), approx_kl = mean((r - 1) - log r) (k3 estimator of KL(old || new), sampled from old),
ratio_mean / ratio_min / ratio_max, adv_planning_mean / adv_execution_mean (with planning_mask), entropy
(with entropy), kl_ref (with ref_logprobs), tokens (the valid-token count, to weight means when combining
micro-batches). A mean over no tokens is NaN; ratio_min / ratio_max over no tokens are +inf / -inf.
"""
from dataclasses import dataclass

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
ADV_SCALES = ("group", "batch", "none")
AMPLIFY_MODES = ("planning", "entropy", "union")


@dataclass
class LossConfig:
    eps_low: float = 0.2            # clip-higher lower bound: ratio >= 1 - eps_low
    eps_high: float = 0.28          # clip-higher upper bound: ratio <= 1 + eps_high
    dual_clip: float | None = None  # dual-clip bound c (> 1) for negative advantages, None = off
    agg: str = "token-mean"         # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    norm_len: int = 1024            # constant length divisor of seq-mean-token-sum-norm (Dr.GRPO)
    kl_coef: float = 0.0            # k3 KL to a reference policy, 0 = off (no reference needed)
    entropy_coef: float = 0.0       # entropy bonus coefficient

    def __post_init__(self):
        if self.agg not in AGG_MODES:
            raise ValueError(f"agg must be one of {AGG_MODES}, got {self.agg!r}")
        if not 0.0 <= self.eps_low < 1.0:
            raise ValueError(f"eps_low must be in [0, 1), got {self.eps_low}")
        if self.eps_high < 0.0:
            raise ValueError(f"eps_high must be >= 0, got {self.eps_high}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (or None), got {self.dual_clip}")
        if self.norm_len <= 0:
            raise ValueError(f"norm_len must be > 0, got {self.norm_len}")
        if self.kl_coef < 0.0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


def _check_shape(name: str, tensor: Tensor | None, shape: torch.Size):
    if tensor is not None and tensor.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


# ----------------------------------------------------------------------------- advantages

def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """(B,) rewards of B / G prompts x G consecutive samples -> (B,) group-relative advantages (see top)."""
    if scale not in ADV_SCALES:
        raise ValueError(f"scale must be one of {ADV_SCALES}, got {scale!r}")
    if rewards.dim() != 1 or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    rewards = rewards if rewards.is_floating_point() else rewards.float()  # (B,)
    grouped = rewards.view(-1, group_size)  # (B/G, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (B/G, G)
    # r - mean can leave a rounding residue (3 x 0.1); a zero-variance group must give exactly 0
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (B/G, 1)
    centered = torch.where(constant, 0.0, centered)  # (B/G, G)
    if scale == "none":
        return centered.reshape(-1)  # (B,)
    if scale == "group":
        std = (centered.pow(2).sum(dim=1, keepdim=True) / max(group_size - 1, 1)).sqrt()  # (B/G, 1)
    else:
        batch_centered = rewards - rewards.mean()  # (B,)
        std = (batch_centered.pow(2).sum() / max(rewards.shape[0] - 1, 1)).sqrt()  # ()
    return (centered / (std + eps)).reshape(-1)  # (B,)


def token_advantages(seq_advantages: Tensor, mask: Tensor) -> Tensor:
    """(B,) per-response advantages, (B, T) mask -> (B, T) the same value on every valid token, 0 on pads."""
    if mask.dim() != 2 or seq_advantages.shape != mask.shape[:1]:
        raise ValueError(f"seq_advantages must be (B,) for mask (B, T), got {tuple(seq_advantages.shape)} "
                         f"and mask {tuple(mask.shape)}")
    return torch.where(mask.bool(), seq_advantages[:, None], 0.0)  # (B, T)


def fork_token_mask(entropy: Tensor, mask: Tensor, top_q: float) -> Tensor:
    """(B, T) bool: the round(top_q * n_i) (at least 1) highest-entropy valid tokens of each response i."""
    if not 0.0 < top_q <= 1.0:
        raise ValueError(f"top_q must be in (0, 1], got {top_q}")
    _check_shape("entropy", entropy, mask.shape)
    valid = mask.bool()  # (B, T)
    ranked = torch.where(valid, entropy.detach(), float("-inf"))  # (B, T) pads rank last
    order = ranked.argsort(dim=1, descending=True, stable=True)  # (B, T) stable: ties go to the earlier token
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(order)  # (B, T)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # (B, T) 0 = highest entropy
    count = valid.sum(dim=1).to(torch.float64)  # (B,)
    keep = (count * top_q).round().clamp(min=1.0)  # (B,) float64 so 0.3 * 10 rounds to 3, not 3.0000001
    return valid & (rank < keep[:, None])  # (B, T)


def amplify_mask(planning_mask: Tensor, entropy: Tensor, mask: Tensor, mode: str = "planning",
                 top_q: float = 0.2) -> Tensor:
    """(B, T) bool: tokens whose advantage HICRA amplifies: planning | entropy (fork tokens) | union."""
    if mode not in AMPLIFY_MODES:
        raise ValueError(f"mode must be one of {AMPLIFY_MODES}, got {mode!r}")
    _check_shape("planning_mask", planning_mask, mask.shape)
    planning = planning_mask.bool() & mask.bool()  # (B, T)
    if mode == "planning":
        return planning
    fork = fork_token_mask(entropy, mask, top_q)  # (B, T)
    return fork if mode == "entropy" else planning | fork  # (B, T)


def hicra_advantages(advantages: Tensor, amplify: Tensor, alpha: float = 0.2) -> Tensor:
    """(B, T) advantages, (B, T) bool amplify -> A + alpha * |A| where amplify, A elsewhere."""
    _check_shape("amplify", amplify, advantages.shape)
    return torch.where(amplify.bool(), advantages + alpha * advantages.abs(), advantages)  # (B, T)


# ----------------------------------------------------------------------------- loss

def aggregate_loss(token_loss: Tensor, mask: Tensor, agg: str, norm_len: int = 1024,
                   total_tokens=None, total_seqs=None) -> Tensor:
    """(B, T) per-token loss (0 on pads), (B, T) mask -> () loss aggregated as `agg` (see top).

    total_tokens / total_seqs: counts of the whole optimizer step; None = this call's valid tokens /
    responses with at least one valid token."""
    if agg not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")
    for name, total in (("total_tokens", total_tokens), ("total_seqs", total_seqs)):
        if isinstance(total, (int, float)) and total <= 0:
            raise ValueError(f"{name} must be > 0, got {total}")
    valid = mask.bool()  # (B, T)
    token_loss = torch.where(valid, token_loss, 0.0)  # (B, T)
    seq_tokens = valid.sum(dim=1)  # (B,)
    if agg == "token-mean":
        total_tokens = seq_tokens.sum().clamp(min=1) if total_tokens is None else total_tokens
        return token_loss.sum() / total_tokens  # ()
    total_seqs = (seq_tokens > 0).sum().clamp(min=1) if total_seqs is None else total_seqs
    seq_loss = token_loss.sum(dim=1)  # (B,)
    if agg == "seq-mean-token-mean":
        seq_loss = seq_loss / seq_tokens.clamp(min=1)  # (B,) an empty response contributes 0
    elif agg == "seq-mean-token-sum-norm":
        seq_loss = seq_loss / norm_len  # (B,)
    return seq_loss.sum() / total_seqs  # ()


def _masked_mean(values: Tensor, where: Tensor) -> Tensor:
    """() mean of values (B, T) over the bool selection (B, T); NaN when nothing is selected."""
    return torch.where(where, values, 0.0).sum() / where.sum()  # ()


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig, *,
                total_tokens=None, total_seqs=None, ref_logprobs: Tensor | None = None,
                entropy: Tensor | None = None, planning_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped token-level policy-gradient loss (+ k3 KL, - entropy bonus) and its metrics (see top).

    logprobs (B, T) differentiable; old_logprobs, advantages, ref_logprobs, planning_mask (B, T) constants;
    entropy (B, T) differentiable when the entropy bonus is on. Returns (() loss, {name: () metric})."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    for name, tensor in (("logprobs", logprobs), ("old_logprobs", old_logprobs), ("advantages", advantages),
                         ("ref_logprobs", ref_logprobs), ("entropy", entropy), ("planning_mask", planning_mask)):
        _check_shape(name, tensor, mask.shape)
    if cfg.kl_coef > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when cfg.kl_coef > 0")
    if cfg.entropy_coef != 0 and entropy is None:
        raise ValueError("entropy is required when cfg.entropy_coef != 0")
    valid = mask.bool()  # (B, T)
    old_logprobs, advantages = old_logprobs.detach(), advantages.detach()  # constants of the objective

    # pads are replaced before any arithmetic, so their NaN never reaches a value or a gradient
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    adv = torch.where(valid, advantages, 0.0)  # (B, T)
    pg_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high))  # (B, T)
    if cfg.dual_clip is not None:  # bound the loss of negative-advantage tokens whose ratio exploded
        pg_loss = torch.where(adv < 0, torch.minimum(pg_loss, -adv * cfg.dual_clip), pg_loss)  # (B, T)
    token_loss = pg_loss  # (B, T)

    if ref_logprobs is not None:
        ref_log_ratio = torch.where(valid, ref_logprobs.detach() - logprobs, 0.0)  # (B, T)
        kl_ref = ref_log_ratio.exp() - ref_log_ratio - 1  # (B, T) k3 >= 0
        if cfg.kl_coef > 0:
            token_loss = token_loss + cfg.kl_coef * kl_ref  # (B, T)
    if entropy is not None:
        entropy = torch.where(valid, entropy, 0.0)  # (B, T)
        if cfg.entropy_coef != 0:
            token_loss = token_loss - cfg.entropy_coef * entropy  # (B, T)
    loss = aggregate_loss(token_loss, valid, cfg.agg, cfg.norm_len, total_tokens, total_seqs)  # ()

    with torch.no_grad():
        ratio = ratio.detach()  # (B, T)
        metrics = dict(
            clip_frac_low=_masked_mean(((adv < 0) & (ratio < 1 - cfg.eps_low)).float(), valid),
            clip_frac_high=_masked_mean(((adv > 0) & (ratio > 1 + cfg.eps_high)).float(), valid),
            approx_kl=_masked_mean(ratio - 1 - log_ratio.detach(), valid),
            ratio_mean=_masked_mean(ratio, valid),
            ratio_min=torch.where(valid, ratio, float("inf")).amin(),
            ratio_max=torch.where(valid, ratio, float("-inf")).amax(),
            tokens=valid.sum(),
        )
        if cfg.dual_clip is not None:
            metrics["clip_frac_dual"] = _masked_mean(((adv < 0) & (ratio > cfg.dual_clip)).float(), valid)
        if planning_mask is not None:
            planning = planning_mask.bool() & valid  # (B, T)
            metrics["adv_planning_mean"] = _masked_mean(adv, planning)
            metrics["adv_execution_mean"] = _masked_mean(adv, valid & ~planning)
        if entropy is not None:
            metrics["entropy"] = _masked_mean(entropy.detach(), valid)
        if ref_logprobs is not None:
            metrics["kl_ref"] = _masked_mean(kl_ref.detach(), valid)
    return loss, metrics
