"""Policy-gradient variants and corrections of loss.policy_loss: the GSPO, CISPO and SAPO terms, the 80/20 high-entropy
token selection, Clip-Cov / KL-Cov covariance selection, and sampler/trainer mismatch weights and metrics.

Pure tensor functions (no module state, no `.item()`, no device logic); loss.py dispatches to them from its LossConfig
(`cfg` here is that config: the functions read its fields, they never import loss.py). Every per-token tensor is
(B, T), right-padded, with a bool response `mask`/`valid`; pads are excluded with `torch.where`.

Policy-gradient term pg_it (LossConfig.loss; ppo, the default, is in loss.py), r = exp(logp - old_logp), A the (HICRA)
advantage, sg = stop-gradient:
    gspo (Zheng et al. 2025, its GSPO-token form): s_i = exp(mean_t (logp - old_logp)) over response i,
                   s_it = sg(s_i) exp(logp_t - sg(logp_t))      (value s_i, gradient s_i d logp_t)
                   pg = -min(s_it A, clip(s_it, 1 - gspo_eps_low, 1 + gspo_eps_high) A)   eps 3e-4 / 4e-4 (the paper)
    cispo (MiniMax-M1, Chen et al. 2025): pg = -sg(clip(r, 1 - cispo_eps_low, 1 + cispo_eps_high)) A logp
                   defaults 1 / 4: no lower bound and IS weight <= 5 (ScaleRL's recipe; MiniMax-M1 tunes only the upper)
    sapo (Soft Adaptive Policy Optimization, Qwen, arXiv 2511.20347): pg = -f(r) A,
                   f(r) = sigmoid(tau (r - 1)) 4 / tau,   tau = sapo_tau_pos (1.0) if A > 0 else sapo_tau_neg (1.05)
Gradients d pg / d logp: ppo -A r inside the band, 0 for a clipped token; gspo -A s_i, 0 for every token of a
response whose s_i is clipped; cispo -A clip(r) for every token (clipped tokens keep a gradient); sapo
-A 4 sigmoid(1 - sigmoid) r, a soft decay instead of a cut. On-policy (r = s = 1) all four have the vanilla
policy-gradient gradient -A; their loss VALUES differ there (cispo -A logp, sapo -2A / tau), so compare variants by
gradients and returns, not by the logged loss.

In loss.py's per-token loss l_it = keep_it w_it pg_it + kl_cov_coef sel_it |logp - old_logp| + ..., the constants keep
(80/20), w (mismatch) and sel (KL-Cov) come from here; each is absent (not multiplied by 1) when its option is off.

80/20 high-entropy tokens (Wang et al. 2025, "Beyond the 80/20 rule"): keep_it = [H_it >= tau_q], tau_q the
(1 - top_entropy_q) quantile (linear interpolation, as numpy / torch.quantile) of the entropies of every valid token
of the STEP (all micro-batches, all ranks). `high_entropy_threshold` computes it once per step and the caller passes
it to every call as `entropy_threshold`, with this forward's `entropy`. Only pg is masked: the dropped tokens still
count in the aggregation's divisors (the paper keeps 1 / sum_i |o_i|) and keep their KL / entropy terms. q = 1 = all.

Clip-Cov / KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"; loss = ppo only), with the
centred covariance cov_it = (A_it - mean A)(logp_it - mean logp) over the call's valid tokens (logp detached) and
k(f) = max(1, floor(f N_call)):
    clip: of the tokens the PPO clip left unclipped with clip_cov_lb < cov < clip_cov_ub, a uniformly random subset of
          k(clip_cov_frac) (all of them if fewer) is detached (value kept, zero gradient). The choice draws from
          `generator`, a seeded torch.Generator on the tensors' device, so runs reproduce.
    kl:   pg = -r A with NO ratio clip (as the authors' code), plus kl_cov_coef |logp - old_logp| on the k(kl_cov_frac)
          tokens of largest cov (ties: the earlier token, row-major).
Defaults are the authors' code (PRIME-RL/Entropy-Mechanism-of-RL): 2e-4 in the band (1, 5); 0.2% = 2e-3 with
coefficient 1 (verl's later config uses 2e-4 and 0.1). Deviations: the authors zero a Clip-Cov token's loss, we detach
it (same gradient; the logged loss keeps its value). Centring and the count k are per call, as in the authors' code
(their loss also runs per micro-batch): the one option here whose result depends on the micro-batching.

Sampler/trainer mismatch, with old_logprobs recomputed by the trainer and the sampler's `sampler_logprobs` (both at
theta_old): rho_it = exp(old - sampler) (mismatch_level token), or rho_i = exp(sum_t (old - sampler)) on every token of
response i (sequence: the product, as TRL and SkyRL):
    tis (truncated IS, Yao et al. 2025):      w = min(rho, tis_cap)                      default cap 2
    mis (masked IS, IcePop, Ling team 2025):  w = rho [mis_low <= rho <= mis_high]      default [0.5, 5] (IcePop's)
Every call given sampler_logprobs logs, whether or not a correction is on: mismatch_abs_mean / mismatch_abs_max =
mean / max |old - sampler| over valid tokens; mismatch_seq_ratio_min / _max = the range of rho_i over responses with
tokens; mismatch_masked_frac = tokens outside [mis_low, mis_high] at mismatch_level (what mis drops);
mismatch_truncated_frac = tokens with rho > tis_cap; mismatch_weight_mean = mean w (with a correction on).

Composition: every option takes the (already HICRA-amplified) per-token advantages and works with every aggregation
mode. GSPO's sequence mean needs each response whole in one call: update.py's packing splits micro-batches between
responses, never inside one. Refused by LossConfig (ValueError): dual_clip with loss != ppo or with KL-Cov (gspo clips
whole responses, cispo bounds the weight, sapo saturates, KL-Cov has no clip), cov_mode with loss != ppo (both papers
modify the PPO token clip).
"""
import math

import torch
from torch import Tensor


def masked_mean(values: Tensor, where: Tensor) -> Tensor:
    """() mean of values (B, T) over the bool selection (B, T); NaN when nothing is selected."""
    return torch.where(where, values, 0.0).sum() / where.sum()  # ()


def descending_rank(values: Tensor) -> Tensor:
    """(..., n) -> (..., n) long rank along the last dim, 0 = largest; ties go to the earlier position."""
    order = values.argsort(dim=-1, descending=True, stable=True)  # (..., n)
    positions = torch.arange(values.shape[-1], device=values.device).expand_as(order)  # (..., n)
    return torch.empty_like(order).scatter_(-1, order, positions)  # (..., n)


# ----------------------------------------------------------------------------- policy-gradient terms

def gspo_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(B, T) GSPO-token ratio: value s_i = exp(mean_t(logp - old)) of its response, gradient s_i * d logp_t."""
    valid = mask.bool()  # (B, T)
    logp = torch.where(valid, logprobs, 0.0)  # (B, T)
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), 0.0)  # (B, T)
    seq_log_ratio = log_ratio.sum(dim=1) / valid.sum(dim=1).clamp(min=1)  # (B,) an empty response: 0
    return torch.exp(logp - logp.detach() + seq_log_ratio.detach()[:, None])  # (B, T) exactly s_i in value


def sapo_gate(ratio: Tensor, advantages: Tensor, tau_pos: float, tau_neg: float) -> Tensor:
    """(B, T) SAPO's soft gate f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau = tau_pos where A > 0, else tau_neg."""
    tau = torch.where(advantages > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))  # (B, T)
    return torch.sigmoid(tau * (ratio - 1)) * (4 / tau)  # (B, T)


def gspo_term(logprobs: Tensor, old_logprobs: Tensor, adv: Tensor, valid: Tensor, eps_low: float,
              eps_high: float) -> tuple[Tensor, dict[str, Tensor]]:
    """-> ((B, T) GSPO pg, {low, high: (B, T) bool} the tokens of responses whose s_i is clipped)."""
    seq_ratio = gspo_ratio(logprobs, old_logprobs, valid)  # (B, T)
    lo, hi = 1 - eps_low, 1 + eps_high
    s = seq_ratio.detach()  # (B, T)
    pg = torch.maximum(-adv * seq_ratio, -adv * seq_ratio.clamp(lo, hi))  # (B, T)
    return pg, dict(low=(adv < 0) & (s < lo), high=(adv > 0) & (s > hi))


def cispo_term(logprobs: Tensor, ratio: Tensor, adv: Tensor, valid: Tensor, eps_low: float,
               eps_high: float) -> tuple[Tensor, dict[str, Tensor]]:
    """-> ((B, T) CISPO pg, {low, high: (B, T) bool} the tokens whose IS weight is capped, any sign of A)."""
    r = ratio.detach()  # (B, T)
    lo, hi = 1 - eps_low, 1 + eps_high
    weight = r.clamp(lo, hi)  # (B, T) constant IS weight: every token keeps the gradient of its logp
    return (-adv * weight) * torch.where(valid, logprobs, 0.0), dict(low=r < lo, high=r > hi)


def sapo_term(ratio: Tensor, adv: Tensor, tau_pos: float, tau_neg: float) -> Tensor:
    """(B, T) SAPO pg = -f(r) A: nothing is clipped (the caller logs ppo's band as a diagnostic)."""
    return -adv * sapo_gate(ratio, adv, tau_pos, tau_neg)  # (B, T)


# ----------------------------------------------------------------------------- 80/20 and mismatch

def high_entropy_threshold(entropies: Tensor, top_q: float) -> Tensor:
    """(N,) entropies of every valid token of the step (all micro-batches, all ranks) -> () tau, their (1 - top_q)
    quantile with linear interpolation (numpy's and torch.quantile's default): H >= tau keeps ~top_q of the tokens.

    No tokens -> -inf. Sorts instead of calling torch.quantile, which refuses inputs over 2^24 elements."""
    if not 0.0 < top_q <= 1.0:
        raise ValueError(f"top_q must be in (0, 1], got {top_q}")
    if entropies.dim() != 1:
        raise ValueError(f"entropies must be 1-D (the step's valid tokens), got shape {tuple(entropies.shape)}")
    n = entropies.shape[0]
    if n == 0:
        return entropies.new_tensor(float("-inf"))
    ordered = entropies.detach().sort().values  # (N,)
    position = (n - 1) * (1.0 - top_q)
    low = math.floor(position)
    high = min(low + 1, n - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])  # ()


def mismatch_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor,
                     cfg) -> tuple[Tensor | None, dict[str, Tensor]]:
    """-> ((B, T) constant TIS / MIS weights, None when cfg.mismatch_correction is 'none'; the mismatch_* metrics).

    cfg: a loss.LossConfig (mismatch_correction, mismatch_level, tis_cap, mis_low, mis_high)."""
    valid = mask.bool()  # (B, T)
    with torch.no_grad():
        log_ratio = torch.where(valid, old_logprobs - sampler_logprobs, 0.0)  # (B, T) log pi_old / pi_sampler
        seq_ratio = log_ratio.sum(dim=1).exp()  # (B,) the product over the response
        ratio = log_ratio.exp() if cfg.mismatch_level == "token" else seq_ratio[:, None].expand_as(log_ratio)  # (B, T)
        outside = (ratio < cfg.mis_low) | (ratio > cfg.mis_high)  # (B, T) what mis drops
        has_tokens = valid.any(dim=1)  # (B,)
        metrics = dict(
            mismatch_abs_mean=masked_mean(log_ratio.abs(), valid),
            mismatch_abs_max=torch.where(valid, log_ratio.abs(), float("-inf")).amax(),
            mismatch_seq_ratio_min=torch.where(has_tokens, seq_ratio, float("inf")).amin(),
            mismatch_seq_ratio_max=torch.where(has_tokens, seq_ratio, float("-inf")).amax(),
            mismatch_masked_frac=masked_mean(outside.float(), valid),
            mismatch_truncated_frac=masked_mean((ratio > cfg.tis_cap).float(), valid),
        )
        if cfg.mismatch_correction == "none":
            return None, metrics
        weights = ratio.clamp(max=cfg.tis_cap) if cfg.mismatch_correction == "tis" else torch.where(outside, 0.0, ratio)
        metrics["mismatch_weight_mean"] = masked_mean(weights, valid)
    return weights, metrics  # (B, T)


# ----------------------------------------------------------------------------- Clip-Cov / KL-Cov

def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """(B, T) cov_it = (A_it - mean A)(logp_it - mean logp), means over the valid tokens, logp detached; 0 on pads."""
    valid = mask.bool()  # (B, T)
    count = valid.sum().clamp(min=1)  # ()
    logp = torch.where(valid, logprobs.detach(), 0.0)  # (B, T)
    adv = torch.where(valid, advantages.detach(), 0.0)  # (B, T)
    cov = (adv - adv.sum() / count) * (logp - logp.sum() / count)  # (B, T)
    return torch.where(valid, cov, 0.0)  # (B, T)


def _selection_count(mask: Tensor, fraction: float) -> Tensor:
    """() max(1, floor(fraction * valid tokens)), in float64 like the Python int(fraction * n) of the authors' code."""
    return (mask.bool().sum().double() * fraction).floor().clamp(min=1)  # ()


def clip_cov_mask(cov: Tensor, candidates: Tensor, mask: Tensor, fraction: float, lb: float, ub: float,
                  generator: torch.Generator) -> Tensor:
    """(B, T) bool: Clip-Cov's detached tokens, a uniformly random subset of k = max(1, floor(fraction * N)) of the
    valid candidates with lb < cov < ub (all of them when fewer); N = valid tokens; randomness from `generator`."""
    band = mask.bool() & candidates.bool() & (cov > lb) & (cov < ub)  # (B, T)
    keys = torch.rand(cov.shape, generator=generator, device=cov.device)  # (B, T) i.i.d. priorities: top-k = uniform
    keys = torch.where(band, keys, -1.0)  # (B, T) tokens outside the band rank last
    rank = descending_rank(keys.flatten()).view(cov.shape)  # (B, T)
    return band & (rank < _selection_count(mask, fraction))  # (B, T)


def kl_cov_mask(cov: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """(B, T) bool: KL-Cov's penalised tokens, the k = max(1, floor(fraction * N)) valid tokens of largest cov."""
    valid = mask.bool()  # (B, T)
    rank = descending_rank(torch.where(valid, cov, float("-inf")).flatten()).view(cov.shape)  # (B, T) row-major ties
    return valid & (rank < _selection_count(mask, fraction))  # (B, T)


def covariance_term(pg_loss: Tensor, logprobs: Tensor, log_ratio: Tensor, adv: Tensor, valid: Tensor,
                    clipped: dict[str, Tensor], cfg, generator) -> tuple[Tensor, Tensor]:
    """-> ((B, T) pg_loss with Clip-Cov's detached tokens or plus KL-Cov's penalty, (B, T) bool selected tokens).

    cfg: a loss.LossConfig (cov_mode, clip_cov_frac / _lb / _ub, kl_cov_frac, kl_cov_coef)."""
    cov = token_covariance(logprobs, adv, valid)  # (B, T)
    if cfg.cov_mode == "clip":
        unclipped = ~torch.stack(list(clipped.values())).any(dim=0)  # (B, T) tokens the PPO clip left a gradient
        selected = clip_cov_mask(cov, unclipped, valid, cfg.clip_cov_frac, cfg.clip_cov_lb, cfg.clip_cov_ub, generator)
        return torch.where(selected, pg_loss.detach(), pg_loss), selected  # (B, T)
    selected = kl_cov_mask(cov, valid, cfg.kl_cov_frac)  # (B, T)
    return pg_loss + torch.where(selected, cfg.kl_cov_coef * log_ratio.abs(), 0.0), selected  # (B, T)
