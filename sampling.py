"""Sampling math for rollout.py: the next token of every row and its logprob, from (B, V) logits.

Per response position t of a row with logits z (V,) from model.py:
    logprob_t = log_softmax(z / T)[token_t]              over the FULL vocabulary, before top-k / top-p,
which is what the trainer recomputes (model.forward(..., targets, temperature=T)), so the PPO ratio is 1 at
the first epoch up to numerics. Greedy (T = 0) takes argmax z and reports log_softmax(z)[token] (the
temperature-1 logits). The token itself is drawn from the filtered distribution
    p = softmax(z / T);  top-k keeps the k largest p (torch.topk breaks ties), renormalise;
    top-p keeps the smallest prefix of p sorted descending whose mass reaches top_p, renormalise
(transformers' TopK-then-TopP order), by inverse CDF: token = first v with cumsum(p)_v > u * sum(p) (in two
levels: 256-token block sums in fp32 accumulated in fp64, then one block in fp64), where
u = top 32 bits of splitmix64(key(seed, global sample index i*n+j) xor t) / 2^32. u depends only on (seed,
sample, position), never on batch composition, slots, preemption or a global RNG: a rerun reproduces every sample,
and another schedule changes a sample only through the ~1e-6 logit noise of differently batched matmuls
(enough to flip a draw that lands among thousands of tail tokens, as on any sampler).

The same stream is computed on the device by `uniform_draws_tensor` (int64 arithmetic wraps like uint64; logical
shifts are masked arithmetic ones), bit for bit, so a decode step needs no host-side draws (CUDA graphs).
`nucleus(..., static=True)` ranks the whole vocabulary at once instead of growing its candidate list (a
data-dependent loop): the same candidates, weights and draws, in shapes fixed by (B, V).

Pure functions on tensors.
"""
import torch
import torch.nn.functional as F

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def uniform_draws(keys: list[int], positions: list[int]) -> torch.Tensor:
    """u in [0, 1) per row from (row key, response position): a counter-based stream, no RNG state. (B,) fp64

    32 bits, so u * m < m holds exactly in fp64 for any mass m > 0 (inverse_cdf never runs off the end)."""
    return torch.tensor([(splitmix64(key ^ pos) >> 32) * 2.0 ** -32 for key, pos in zip(keys, positions)], dtype=torch.float64)


_GOLDEN, _MIX1, _MIX2 = (c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def as_int64(key: int) -> int:
    """A uint64 key as the int64 with the same bits (for device tensors)."""
    return key - (1 << 64) if key >= 1 << 63 else key


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)  # logical shift of the uint64 bits in an int64


def splitmix64_tensor(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 elementwise on int64 tensors holding uint64 bits (wrapping multiply = uint64 multiply)."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def uniform_draws_tensor(keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """uniform_draws on the device: keys (B,) int64 (as_int64 of the row keys), positions (B,) int64 -> (B,) fp64."""
    return _shift_right(splitmix64_tensor(keys ^ positions), 32).double() * 2.0 ** -32


def nucleus(probs: torch.Tensor, top_k: int, top_p: float, static: bool = False):
    """Top-k, then top-p candidates of each row of probs (B, V): (weights (B, K), token ids (B, K)).

    Weights are sorted descending, zero past a row's nucleus, NOT renormalised (inverse_cdf scales by their
    sum; filtered_probs normalises). Without top-k the candidate list grows (64, 512, ...) until it holds
    top_p of every row's mass, so no full-vocabulary sort is needed; static=True takes all V at once (no host
    sync). Both give the same nonzero weights in the same places, hence the same draws."""
    V = probs.shape[-1]
    width = min(top_k, V) if top_k > 0 else (V if static else min(64, V))
    while True:
        weights, token_ids = probs.topk(width, dim=-1)  # (B, K), descending
        if top_k > 0:  # the k-set is the support: renormalise before measuring the nucleus
            weights = weights / weights.sum(-1, keepdim=True)
        mass_before = weights.cumsum(-1) - weights  # (B, K): mass of the more likely candidates
        if top_k > 0 or width == V or bool((mass_before[:, -1] + weights[:, -1] >= top_p).all()):
            break
        width = min(8 * width, V)
    return torch.where(mass_before < top_p, weights, 0.0), token_ids  # the first candidate always stays


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution tokens are drawn from: softmax(logits / T), top-k, top-p, renormalised. (B, V) fp32"""
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    if top_k == 0 and top_p >= 1.0:
        return probs
    weights, token_ids = nucleus(probs, top_k, top_p)
    return torch.zeros_like(probs).scatter_(-1, token_ids, weights / weights.sum(-1, keepdim=True))


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor, block: int = 256) -> torch.Tensor:
    """First column whose cumulative weight exceeds u * total, i.e. a draw from weights / total. (B, K), (B,) -> (B,)

    Two levels (fp32 block sums accumulated in fp64, then the chosen block in fp64): one pass over the
    weights instead of a vocabulary-wide cumsum. Rounding can only push the pick past the block's last positive weight, never
    onto a zero-weight column: it is clamped there."""
    B, K = weights.shape
    blocks = (F.pad(weights, (0, -K % block)) if K % block else weights).view(B, -1, block)  # (B, nb, block)
    block_cdf = blocks.sum(-1).double().cumsum(-1)  # (B, nb)
    targets = uniforms.to(weights.device) * block_cdf[:, -1]  # (B,), strictly below the total
    chosen = torch.searchsorted(block_cdf, targets[:, None], right=True)[:, 0].clamp_(max=blocks.shape[1] - 1)  # (B,)
    mass_before = torch.where(chosen > 0, block_cdf.gather(-1, (chosen - 1).clamp(min=0)[:, None])[:, 0], 0.0)  # (B,)
    rows = torch.arange(B, device=weights.device)
    inside = blocks[rows, chosen].double().cumsum(-1)  # (B, block)
    column = torch.searchsorted(inside, (targets - mass_before)[:, None], right=True)[:, 0]  # (B,)
    last_positive = (inside < inside[:, -1:]).sum(-1)  # (B,) where the block's cumsum reaches its total
    return chosen * block + torch.minimum(column, last_positive)


def sample_tokens(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, uniforms: torch.Tensor,
                  static: bool = False):
    """Next token, its sampler logprob and the distribution's entropy per row (definitions in the module
    docstring). (B, V) -> (B,), (B,), (B,). The entropy is of softmax(z / T) (T = 1 when greedy), what the
    trainer computes: H = logsumexp(z/T) - sum_v p_v z_v / T, from the same exponentials as the logprob.
    static=True: no host sync and shapes fixed by (B, V) (the CUDA-graph decode step)."""
    logits = logits.float()
    scaled = logits if temperature in (0, 1) else logits / temperature  # (B, V); T = 0 logprobs at T = 1
    peak = scaled.amax(-1, keepdim=True)  # (B, 1)
    unnormalised = (scaled - peak).exp_()  # (B, V), exp(z/T - max)
    total = unnormalised.sum(-1, keepdim=True)  # (B, 1)
    mean_scaled = (unnormalised * scaled).sum(-1) / total[:, 0]  # (B,) E_p[z/T], before nucleus rescales in place
    if temperature == 0:
        tokens = logits.argmax(-1)  # (B,)
    elif top_k == 0 and top_p >= 1.0:
        tokens = inverse_cdf(unnormalised, uniforms)
    else:
        weights, token_ids = nucleus(unnormalised.div_(total), top_k, top_p, static)
        tokens = token_ids.gather(-1, inverse_cdf(weights, uniforms)[:, None])[:, 0]
    log_norm = (peak + total.log())[:, 0]  # (B,) logsumexp(z/T)
    return tokens, scaled.gather(-1, tokens[:, None])[:, 0] - log_norm, log_norm - mean_scaled
