"""Group advantages, HICRA credit assignment, and the token-level policy-gradient loss: PPO with clip-higher, and the
dispatch to the variants and corrections of pg_variants.py (GSPO, CISPO, SAPO, 80/20 token selection, Clip-Cov /
KL-Cov, sampler/trainer mismatch correction), whose docstring carries their math and papers.

Pure tensor functions (no module state, no `.item()`, no device logic): train.py calls them as
    A_i   = group_advantages(rewards, G)                 # (B,) one advantage per response
    A_it  = token_advantages(A_i, mask)                   # (B, T) broadcast over response tokens
    A'_it = hicra_advantages(A_it, amplify_mask(...))     # HICRA on planning (or fork) tokens
    tau   = high_entropy_threshold(step_entropies, q)     # pg_variants.py; once per step, only for the 80/20 selection
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
entropy quantile; here the top-q is taken per response, as the issue asks (the batch-wide version is the
80/20 selection of pg_variants.py, which drops tokens instead of amplifying them).

Policy-gradient term pg_it (cfg.loss), r = exp(logp - old_logp), A the (HICRA) advantage:
    ppo (default): pg = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)                clip-higher (DAPO)
                   pg = min(pg, -c A) where A < 0, when dual_clip = c > 1                dual-clip (Ye et al. 2020)
    gspo | cispo | sapo: pg_variants.py (their equations and gradients, and why variants compare by gradients)

Per valid token, the loss that is aggregated:
    l_it = keep_it w_it pg_it + kl_cov_coef sel_it |logp - old_logp| + kl_coef kl_it - entropy_coef H_it
    kl_it = exp(ref - logp) - (ref - logp) - 1                                    k3 estimator of KL(pi || ref)
keep (80/20), w (mismatch) and sel (KL-Cov) are constants from pg_variants.py; each is absent (not multiplied by 1)
when its option is off. LossConfig refuses the combinations pg_variants.py lists under "Composition".

Aggregation over the whole optimizer step (N = total_tokens over all micro-batches and ranks, S = total_seqs,
n_i = valid tokens of response i):
    token-mean              (DAPO):    sum_it l_it / N
    seq-mean-token-mean     (GRPO):    sum_i (sum_t l_it / n_i) / S
    seq-mean-token-sum:                sum_i  sum_t l_it / S
    seq-mean-token-sum-norm (Dr.GRPO): sum_i (sum_t l_it / norm_len) / S
Each micro-batch divides by the step's totals, so the sum of the micro-batch losses has exactly the
gradient of one call on the whole batch (a per-micro-batch mean would silently re-weight tokens).
Deviation: verl's seq-mean-token-sum-norm divides the summed sequence losses by the padded width and
not by S; we follow Dr.GRPO's code (a mean over sequences of sum / constant length).

Metrics (0-dim, detached), over this call's valid tokens: clip_frac_low / clip_frac_high (ppo: zero-gradient tokens
by the clip; gspo: tokens of clipped responses; cispo: tokens whose IS weight is capped, any sign of A; sapo: tokens
outside ppo's band [1 - eps_low, 1 + eps_high], a diagnostic only), clip_frac_dual with dual-clip, approx_kl =
mean((r - 1) - log r) (k3 estimator of KL(old || new), sampled from old), ratio_mean / ratio_min / ratio_max (token r),
adv_planning_mean / adv_execution_mean (with planning_mask), entropy (with entropy), kl_ref (with ref_logprobs),
entropy_selected_frac (80/20), cov_selected_frac (Clip-Cov / KL-Cov), the mismatch_* of pg_variants.py, tokens (the
valid-token count, to weight means when combining micro-batches). A mean over no tokens is NaN; a min / max over none
is +inf / -inf (combine *_min by min and *_max by max across micro-batches).
"""
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from pg_variants import (cispo_term, covariance_term, descending_rank, gspo_term, masked_mean, mismatch_weights,
                         sapo_term)

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
ADV_SCALES = ("group", "batch", "none")
AMPLIFY_MODES = ("planning", "entropy", "union")
LOSS_TYPES = ("ppo", "gspo", "cispo", "sapo")
COV_MODES = ("none", "clip", "kl")
MISMATCH_MODES = ("none", "tis", "mis")
MISMATCH_LEVELS = ("token", "sequence")


@dataclass
class LossConfig:
    loss: str = "ppo"               # ppo | gspo | cispo | sapo: the policy-gradient term (see loss.py)
    eps_low: float = 0.2            # ppo clip-higher lower bound: ratio >= 1 - eps_low
    eps_high: float = 0.28          # ppo clip-higher upper bound: ratio <= 1 + eps_high
    dual_clip: float | None = None  # ppo dual-clip bound c (> 1) for negative advantages, None = off
    agg: str = "token-mean"         # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    norm_len: int = 1024            # constant length divisor of seq-mean-token-sum-norm (Dr.GRPO)
    kl_coef: float = 0.0            # k3 KL to a reference policy, 0 = off (no reference needed)
    entropy_coef: float = 0.0       # entropy bonus coefficient
    gspo_eps_low: float = 3e-4      # gspo sequence-ratio clip: s >= 1 - gspo_eps_low (GSPO paper)
    gspo_eps_high: float = 4e-4     # gspo sequence-ratio clip: s <= 1 + gspo_eps_high
    cispo_eps_low: float = 1.0      # cispo IS-weight clip: w >= 1 - cispo_eps_low (>= 1: no lower bound)
    cispo_eps_high: float = 4.0     # cispo IS-weight clip: w <= 1 + cispo_eps_high (inf: no upper bound)
    sapo_tau_pos: float = 1.0       # sapo gate temperature for A > 0
    sapo_tau_neg: float = 1.05      # sapo gate temperature for A <= 0
    top_entropy_q: float = 1.0      # 80/20: train pg only on the step's top-q entropy tokens (1 = all tokens)
    cov_mode: str = "none"          # none | clip (Clip-Cov) | kl (KL-Cov), with loss ppo only
    clip_cov_frac: float = 2e-4     # Clip-Cov: fraction of tokens detached, drawn from the covariance band
    clip_cov_lb: float = 1.0        # Clip-Cov: covariance band lower bound (exclusive)
    clip_cov_ub: float = 5.0        # Clip-Cov: covariance band upper bound (exclusive)
    kl_cov_frac: float = 2e-3       # KL-Cov: fraction of tokens (largest covariance) given the KL penalty
    kl_cov_coef: float = 1.0        # KL-Cov: coefficient of |logp - old_logp| on those tokens
    mismatch_correction: str = "none"  # none | tis | mis: sampler/trainer correction (needs sampler_logprobs)
    mismatch_level: str = "token"   # token | sequence: the ratio pi_old / pi_sampler per token or per response
    tis_cap: float = 2.0            # tis: weight min(ratio, tis_cap)
    mis_low: float = 0.5            # mis: drop tokens (or responses) with ratio < mis_low
    mis_high: float = 5.0           # mis: drop tokens (or responses) with ratio > mis_high

    def __post_init__(self):
        for name, choices in (("loss", LOSS_TYPES), ("agg", AGG_MODES), ("cov_mode", COV_MODES),
                              ("mismatch_correction", MISMATCH_MODES), ("mismatch_level", MISMATCH_LEVELS)):
            _require(getattr(self, name) in choices, name, f"one of {choices}", getattr(self, name))
        for f in fields(self):
            value = getattr(self, f.name)
            _require(not (isinstance(value, float) and math.isnan(value)), f.name, "a number", value)
        ppo_only = self.loss == "ppo"
        rules = (
            ("eps_low", 0.0 <= self.eps_low < 1.0, "in [0, 1)"),
            ("eps_high", self.eps_high >= 0.0, ">= 0"),
            ("dual_clip", self.dual_clip is None or self.dual_clip > 1.0, "> 1 (or None)"),
            ("dual_clip", self.dual_clip is None or (ppo_only and self.cov_mode != "kl"),
             "None unless loss='ppo' without cov_mode='kl'"),
            ("norm_len", self.norm_len > 0, "> 0"),
            ("kl_coef", self.kl_coef >= 0.0, ">= 0"),
            ("gspo_eps_low", 0.0 <= self.gspo_eps_low < 1.0, "in [0, 1)"),
            ("gspo_eps_high", self.gspo_eps_high >= 0.0, ">= 0"),
            ("cispo_eps_low", self.cispo_eps_low >= 0.0, ">= 0"),
            ("cispo_eps_high", self.cispo_eps_high >= 0.0, ">= 0"),
            ("sapo_tau_pos", 0.0 < self.sapo_tau_pos < math.inf, "finite and > 0"),
            ("sapo_tau_neg", 0.0 < self.sapo_tau_neg < math.inf, "finite and > 0"),
            ("top_entropy_q", 0.0 < self.top_entropy_q <= 1.0, "in (0, 1]"),
            ("cov_mode", self.cov_mode == "none" or ppo_only, "'none' unless loss='ppo'"),
            ("clip_cov_frac", 0.0 < self.clip_cov_frac <= 1.0, "in (0, 1]"),
            ("clip_cov_ub", self.clip_cov_lb < self.clip_cov_ub, f"> clip_cov_lb={self.clip_cov_lb}"),
            ("kl_cov_frac", 0.0 < self.kl_cov_frac <= 1.0, "in (0, 1]"),
            ("kl_cov_coef", self.kl_cov_coef >= 0.0, ">= 0"),
            ("tis_cap", self.tis_cap > 0.0, "> 0 (inf: plain IS)"),
            ("mis_low", self.mis_low >= 0.0, ">= 0"),
            ("mis_high", self.mis_high > self.mis_low, f"> mis_low={self.mis_low}"),
        )
        for name, ok, rule in rules:
            _require(ok, name, rule, getattr(self, name))


# The variant options train.py exposes one to one as flags of the same name (the rest it sets per step).
VARIANT_FIELDS = ("loss", "gspo_eps_low", "gspo_eps_high", "cispo_eps_low", "cispo_eps_high", "sapo_tau_pos",
                  "sapo_tau_neg", "top_entropy_q", "cov_mode", "clip_cov_frac", "clip_cov_lb", "clip_cov_ub",
                  "kl_cov_frac", "kl_cov_coef", "mismatch_correction", "mismatch_level", "tis_cap", "mis_low",
                  "mis_high")


def _require(ok: bool, field: str, rule: str, value):
    if not ok:
        raise ValueError(f"LossConfig.{field} must be {rule}, got {value!r}")


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
    rank = descending_rank(ranked)  # (B, T) 0 = highest entropy, ties go to the earlier token
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


# ----------------------------------------------------------------------------- aggregation

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

# ----------------------------------------------------------------------------- the policy-gradient term

def _pg_term(logprobs: Tensor, old_logprobs: Tensor, ratio: Tensor, adv: Tensor, valid: Tensor,
             cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """-> ((B, T) pg of cfg.loss, {low, high[, dual]: (B, T) bool} the tokens its clip acts on (see top)."""
    if cfg.loss == "gspo":
        return gspo_term(logprobs, old_logprobs, adv, valid, cfg.gspo_eps_low, cfg.gspo_eps_high)
    if cfg.loss == "cispo":
        return cispo_term(logprobs, ratio, adv, valid, cfg.cispo_eps_low, cfg.cispo_eps_high)
    r = ratio.detach()  # (B, T)
    lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
    clipped = dict(low=(adv < 0) & (r < lo), high=(adv > 0) & (r > hi))  # (B, T) each
    if cfg.loss == "sapo":  # nothing is clipped: the ppo band is logged as a diagnostic
        return sapo_term(ratio, adv, cfg.sapo_tau_pos, cfg.sapo_tau_neg), clipped
    if cfg.cov_mode == "kl":  # KL-Cov replaces the clip by its penalty (the authors' code)
        none = torch.zeros_like(valid)  # (B, T)
        return -adv * ratio, dict(low=none, high=none)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))  # (B, T)
    if cfg.dual_clip is not None:  # bound the loss of negative-advantage tokens whose ratio exploded
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * cfg.dual_clip), pg)  # (B, T)
        clipped["dual"] = (adv < 0) & (r > cfg.dual_clip)  # (B, T)
    return pg, clipped


# ----------------------------------------------------------------------------- the loss

def _check_inputs(mask: Tensor, cfg: LossConfig, tensors: dict[str, Tensor | None], entropy_threshold, generator):
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    for name, tensor in tensors.items():
        _check_shape(name, tensor, mask.shape)
    needs = (("ref_logprobs", cfg.kl_coef > 0, "cfg.kl_coef > 0"),
             ("entropy", cfg.entropy_coef != 0, "cfg.entropy_coef != 0"),
             ("entropy", cfg.top_entropy_q < 1, "cfg.top_entropy_q < 1"),
             ("sampler_logprobs", cfg.mismatch_correction != "none", "cfg.mismatch_correction is not 'none'"))
    for name, needed, reason in needs:
        if needed and tensors[name] is None:
            raise ValueError(f"{name} is required when {reason}")
    if cfg.top_entropy_q < 1 and entropy_threshold is None:
        raise ValueError("entropy_threshold (the step's high_entropy_threshold) is required when cfg.top_entropy_q < 1")
    if cfg.cov_mode == "clip" and not isinstance(generator, torch.Generator):
        raise ValueError("generator (a seeded torch.Generator on the tensors' device) is required when "
                         "cfg.cov_mode is 'clip'")


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig, *,
                total_tokens=None, total_seqs=None, ref_logprobs: Tensor | None = None,
                entropy: Tensor | None = None, planning_mask: Tensor | None = None,
                sampler_logprobs: Tensor | None = None, entropy_threshold: Tensor | float | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-level policy-gradient loss of cfg.loss with its options (+ k3 KL, - entropy bonus) and metrics (see top).

    logprobs (B, T) differentiable; old_logprobs, advantages, ref_logprobs, planning_mask, sampler_logprobs (B, T)
    constants; entropy (B, T) differentiable when the entropy bonus is on (the 80/20 selection reads it detached);
    entropy_threshold: the step's high_entropy_threshold (when top_entropy_q < 1); generator: a seeded
    torch.Generator on the tensors' device (when cov_mode is 'clip'). Returns (() loss, {name: () metric})."""
    tensors = dict(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, ref_logprobs=ref_logprobs,
                   entropy=entropy, planning_mask=planning_mask, sampler_logprobs=sampler_logprobs)
    _check_inputs(mask, cfg, tensors, entropy_threshold, generator)
    valid = mask.bool()  # (B, T)
    old_logprobs, advantages = old_logprobs.detach(), advantages.detach()  # constants of the objective

    # pads are replaced before any arithmetic, so their NaN never reaches a value or a gradient
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    adv = torch.where(valid, advantages, 0.0)  # (B, T)
    pg_loss, clipped = _pg_term(logprobs, old_logprobs, ratio, adv, valid, cfg)  # (B, T), {kind: (B, T) bool}
    extra = {}
    if sampler_logprobs is not None:  # the mismatch metrics are logged whether or not a correction is on
        weights, extra = mismatch_weights(old_logprobs, sampler_logprobs.detach(), valid, cfg)  # (B, T) or None
        if weights is not None:
            pg_loss = pg_loss * weights  # (B, T)
    if cfg.top_entropy_q < 1:
        keep = valid & (entropy.detach() >= entropy_threshold)  # (B, T) the step's high-entropy tokens
        pg_loss = torch.where(keep, pg_loss, 0.0)  # (B, T)
        extra["entropy_selected_frac"] = masked_mean(keep.float(), valid)
    token_loss = pg_loss  # (B, T)
    if cfg.cov_mode != "none":
        token_loss, selected = covariance_term(pg_loss, logprobs, log_ratio, adv, valid, clipped, cfg, generator)
        extra["cov_selected_frac"] = masked_mean(selected.float(), valid)

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
    metrics = _metrics(ratio, log_ratio, adv, valid, clipped, planning_mask, entropy,
                       kl_ref if ref_logprobs is not None else None)
    return loss, {**metrics, **extra}


def _metrics(ratio: Tensor, log_ratio: Tensor, adv: Tensor, valid: Tensor, clipped: dict[str, Tensor],
             planning_mask: Tensor | None, entropy: Tensor | None, kl_ref: Tensor | None) -> dict[str, Tensor]:
    """The always-on metrics of policy_loss (see top), 0-dim and detached."""
    with torch.no_grad():
        ratio = ratio.detach()  # (B, T)
        metrics = {f"clip_frac_{kind}": masked_mean(where.float(), valid) for kind, where in clipped.items()}
        metrics.update(
            approx_kl=masked_mean(ratio - 1 - log_ratio.detach(), valid),
            ratio_mean=masked_mean(ratio, valid),
            ratio_min=torch.where(valid, ratio, float("inf")).amin(),
            ratio_max=torch.where(valid, ratio, float("-inf")).amax(),
            tokens=valid.sum(),
        )
        if planning_mask is not None:
            planning = planning_mask.bool() & valid  # (B, T)
            metrics["adv_planning_mean"] = masked_mean(adv, planning)
            metrics["adv_execution_mean"] = masked_mean(adv, valid & ~planning)
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy.detach(), valid)
        if kl_ref is not None:
            metrics["kl_ref"] = masked_mean(kl_ref.detach(), valid)
    return metrics
