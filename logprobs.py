"""Per-token log p(target) and entropy of softmax(h W^T / T) without materialising the [N, V] fp32 logits.

model.forward(..., targets=...) ends here: the trainer's logprobs (PPO ratio, HICRA metrics) and token
entropies for N response tokens over a vocabulary of V, in O(chunk x V) extra memory instead of O(N x V)
(`python model.py --bench` prints the peak). Forward and backward are hand-written (ChunkedLogprobEntropy);
tests/test_model.py checks both against log_softmax on the full logits and autograd through it.
"""
import functools

import torch


@functools.lru_cache(maxsize=None)
def _mm_has_out_dtype(device_type: str) -> bool:
    """torch.mm(..., out_dtype=torch.float32) on bf16 operands (CUDA, recent PyTorch): fp32 accumulate AND output."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def logits_fp32(hidden, weight, weight_fp32=None):
    """hidden @ weight^T as fp32. In bf16 the GEMM accumulates in fp32 but rounds its output to bf16 (8 bits of
    mantissa: about 0.03 at |z| ~ 8), which moves an uncertain token's logprob by 0.01-0.1; so low-precision
    operands get an fp32 result (mm's out_dtype where supported, else fp32 operands; weight_fp32 caches the cast)."""
    if hidden.dtype == torch.float32 and weight.dtype == torch.float32:
        return hidden @ weight.T
    if hidden.dtype == weight.dtype and _mm_has_out_dtype(hidden.device.type):
        return torch.mm(hidden, weight.T, out_dtype=torch.float32)
    return hidden.float() @ (weight.float() if weight_fp32 is None else weight_fp32).T


class ChunkedLogprobEntropy(torch.autograd.Function):
    """z = h W^T / T;  logp_t = log_softmax(z)[target_t];  H_t = -sum_v p_v log p_v.

    Forward and backward walk the rows chunk by chunk and keep no logits between them, so the extra
    memory is O(chunk x V) for any N. Backward recomputes each chunk's softmax and applies
        d logp_t / dz = onehot(target_t) - p,        dH_t / dz = -p * (log p + H_t),
    then dh = dz W / T and dW += dz^T h / T, accumulated in fp32 into one buffer (no per-chunk [V, C] adds).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk_size: int):
        logps, entropies = [], []
        weight_fp32 = _fp32_copy(hidden, weight)
        for start in range(0, hidden.shape[0], chunk_size):
            logits = logits_fp32(hidden[start:start + chunk_size], weight, weight_fp32)  # (n, V) fp32
            logp_all = torch.log_softmax(logits / temperature, dim=-1)  # (n, V)
            logps.append(logp_all.gather(-1, targets[start:start + chunk_size, None])[:, 0])  # (n,)
            entropies.append(-(logp_all.exp() * logp_all).sum(-1))  # (n,)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return torch.cat(logps), torch.cat(entropies)

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        weight_fp32 = _fp32_copy(hidden, weight)
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, hidden.shape[0])
            h = hidden[start:end]  # (n, C)
            logp_all = torch.log_softmax(logits_fp32(h, weight, weight_fp32) / ctx.temperature, dim=-1)  # (n, V)
            p = logp_all.exp()
            grad_z = p * (-grad_logp[start:end, None] / ctx.temperature)  # (n, V), already d/dlogits
            grad_z[torch.arange(end - start, device=h.device), targets[start:end]] += grad_logp[start:end] / ctx.temperature
            if grad_entropy is not None:  # in place on logp_all: (n, V) temporaries are what this class avoids
                entropy = -(p * logp_all).sum(-1, keepdim=True)  # (n, 1)
                grad_z -= logp_all.add_(entropy).mul_(p).mul_(grad_entropy[start:end, None] / ctx.temperature)
            grad_z = grad_z.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_z @ weight
            if ctx.needs_input_grad[1] and grad_weight is None:
                grad_weight = grad_z.T.float() @ h.float()  # (V, C) fp32 accumulator, no zero-fill pass
            elif ctx.needs_input_grad[1]:
                grad_weight.addmm_(grad_z.T.float(), h.float())
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def _fp32_copy(hidden, weight):
    """The fp32 weight logits_fp32 falls back to, cast once per call rather than once per chunk (None: not needed)."""
    needed = not (hidden.dtype == weight.dtype == torch.float32) and not (
        hidden.dtype == weight.dtype and _mm_has_out_dtype(hidden.device.type))
    return weight.float() if needed else None


def chunked_logprobs_entropy(hidden, weight, targets, temperature: float = 1.0, chunk_size: int = 512):
    """(log p(target), entropy) per row of softmax(hidden @ weight^T / temperature), in O(chunk x V) memory."""
    return ChunkedLogprobEntropy.apply(hidden, weight, targets, temperature, chunk_size)
