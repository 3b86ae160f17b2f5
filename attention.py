"""Attention for flat token lists (packed causal sequences, paged-KV decode) behind one function, three backends.

`attention(q, k, v, meta, layer)` computes causal grouped-query attention, softmax(q k^T / sqrt(D)) v, for the
layout `AttnMeta` describes:
  * packed: sequences concatenated, `cu_seqlens` (B+1,) marks their starts; causal within each sequence
    (training; the sampler's prefill, which also writes each token's K/V into R cache slots).
    With `kv_index` / `cu_seqlens_k`, sequence b's keys are the gathered rows kv_index[cu_k[b]:cu_k[b+1]] and
    its queries the last q_len of them (bottom-right causal: query i sees keys up to k_len - q_len + i). A
    group's prompt is then run once and each response attends to [prompt; itself] (update.py's shared prompt).
  * decode: one new token per row; its K/V is written at position cache_seqlens[b] of the row's pages
    first, then it attends to all cache_seqlens[b] + 1 keys (bottom-right causal: the new token is last).
The KV cache is paged: per layer a pool of `num_pages` pages of `page_size` slots, and a block table per row;
a row's token at position p lives in page block_table[row, p // page_size], offset p % page_size.

Backends (`resolve_backend`; `--attn` in train.py / eval.py), one semantics:
  torch-flash  PyTorch's own FlashAttention (torch.nn.attention.varlen.varlen_attn, in the CUDA wheels since
               2.10): packed varlen forward/backward and paged decode (block_table + seqused_k). Its signature is
               read at import (2.10: is_causal=True; later: window_size=(-1, 0)); paged decode needs a version
               with block_table. fp16/bf16 on CUDA only. The default on CUDA.
  flash-attn   the flash-attn package, when importable (flash_attn_varlen_func / flash_attn_with_kvcache).
  sdpa         F.scaled_dot_product_attention: everywhere else, and the reference the others are tested
               against (tests/test_model.py on CPU, benchmarks/gpu_check.py on CUDA).
FlashAttention's causal mask is bottom-right aligned; SDPA's is_causal is top-left, so SDPA gets it only
where query and key lengths are equal, and an explicit mask otherwise. Paged FlashAttention kernels need pages
of a multiple of 256 slots on CUDA (rollout.py's default there).

Static decode (`AttnMeta.static`): every shape depends only on the batch bucket and the block-table width, no
host sync, so the step can be captured in a CUDA graph (rollout.py). Rows past the real batch point at a
scratch page with cache length 0; their outputs are ignored. Its SDPA form gathers each row's pages into a
(B, P * page_size) key block; the dynamic SDPA decode instead scores each pool page in place (faster on CPU).
"""
import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # optional CUDA fast path (pip install flash-attn)
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    HAS_FLASH = True
except ImportError:
    HAS_FLASH = False

try:  # PyTorch's own FlashAttention (2.10+); what it accepts is read from its signature
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
    _VARLEN_PARAMS = set(inspect.signature(_varlen_attn).parameters)
except ImportError:
    _varlen_attn, _VARLEN_PARAMS = None, set()
HAS_TORCH_FLASH = _varlen_attn is not None
TORCH_FLASH_PAGED = {"block_table", "seqused_k"} <= _VARLEN_PARAMS
BACKENDS = ("auto", "torch-flash", "flash-attn", "sdpa")


@dataclass
class AttnMeta:
    """Where each of the N flat tokens sits. Exactly one of cu_seqlens (packed) / cache_seqlens (decode)."""
    cu_seqlens: torch.Tensor | None = None  # (B+1,) int32 query sequence starts in the packed token list
    max_seqlen: int = 0  # longest packed query sequence
    lengths: list | None = None  # host copy of the B query lengths (SDPA groups by length without a sync)
    kv_index: torch.Tensor | None = None  # (Nk,) packed: flat token rows forming each sequence's keys (gathered)
    cu_seqlens_k: torch.Tensor | None = None  # (B+1,) int32 starts of each sequence's keys in kv_index
    max_seqlen_k: int = 0  # longest key sequence
    lengths_k: list | None = None  # host copy of the B key lengths
    cache: "KVCache | None" = None  # paged KV pool to write to (packed prefill) or read from (decode)
    slot_mapping: torch.Tensor | None = None  # (N, R) packed prefill: flat cache slots for R replicas of each token
    block_table: torch.Tensor | None = None  # (B, P) int32 decode: page ids of each row
    cache_seqlens: torch.Tensor | None = None  # (B,) int32 decode: tokens already cached for each row
    static: bool = False  # decode: shapes fixed by (B, P), no host sync (CUDA-graph capturable)
    backend: str | None = None  # resolved backend name (Transformer.forward fills it)
    page_index: tuple | None = None  # dynamic SDPA decode: per-step page bookkeeping shared by all layers

    @staticmethod
    def packed(lengths: list[int], device, **kw) -> "AttnMeta":
        return AttnMeta(cu_seqlens=_cumulative(lengths, device), max_seqlen=max(lengths), lengths=list(lengths), **kw)

    @staticmethod
    def packed_gather(lengths: list[int], key_lengths: list[int], kv_index: torch.Tensor, device) -> "AttnMeta":
        """Packed queries of `lengths` whose keys are kv_index's rows, `key_lengths` per sequence."""
        return AttnMeta(cu_seqlens=_cumulative(lengths, device), max_seqlen=max(lengths), lengths=list(lengths),
                        kv_index=kv_index, cu_seqlens_k=_cumulative(key_lengths, device),
                        max_seqlen_k=max(key_lengths), lengths_k=list(key_lengths))


def _cumulative(lengths: list[int], device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return cu.to(device)


@dataclass
class KVCache:
    """Paged KV pool: for each layer, `num_pages` pages of `page_size` token slots.

    A row's token at position p lives in page block_table[row, p // page_size] at offset p % page_size,
    i.e. flat slot page * page_size + offset of the (num_pages * page_size, H_kv, D) view.
    """
    k: torch.Tensor  # (L, num_pages, page_size, H_kv, D)
    v: torch.Tensor  # (L, num_pages, page_size, H_kv, D)

    @staticmethod
    def allocate(cfg, num_pages: int, page_size: int, device, dtype) -> "KVCache":
        shape = (cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def num_pages(self) -> int:
        return self.k.shape[1]

    def bytes_per_token(self) -> int:
        L, _, _, Hkv, D = self.k.shape
        return 2 * L * Hkv * D * self.k.element_size()


@functools.lru_cache(maxsize=None)
def resolve_backend(name: str, device_type: str, dtype: torch.dtype) -> str:
    """'auto' -> torch-flash on CUDA in fp16/bf16 when PyTorch has it, else flash-attn if installed, else sdpa.
    An explicit name that cannot run here is a ValueError saying why."""
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r} unknown (choose from {', '.join(BACKENDS)})")
    half = dtype in (torch.float16, torch.bfloat16)
    usable = {"torch-flash": (HAS_TORCH_FLASH, "this PyTorch has no torch.nn.attention.varlen (2.10+)"),
              "flash-attn": (HAS_FLASH, "the flash-attn package is not installed")}
    if name == "auto":
        return next((b for b in ("torch-flash", "flash-attn") if usable[b][0] and device_type == "cuda" and half), "sdpa")
    if name != "sdpa":
        available, why = usable[name]
        if not available or device_type != "cuda" or not half:
            raise ValueError(f"attention backend {name} cannot run here: "
                             f"{why if not available else 'it needs CUDA and fp16/bf16 (got ' + device_type + ', ' + str(dtype) + ')'}")
    return name


def attention(q, k, v, meta: AttnMeta, layer: int):
    """Causal GQA attention over flat tokens. q: (N, H, D); k, v: (N, H_kv, D) -> (N, H, D)."""
    backend = meta.backend or "sdpa"
    if meta.cache_seqlens is not None:  # decode: one new token per row
        return _decode(q, k, v, meta, layer, backend)
    if meta.cache is not None:  # packed prefill that also fills the cache
        _write_slots(meta.cache.k[layer], meta.cache.v[layer], k, v, meta.slot_mapping)
    if meta.kv_index is not None:  # keys gathered per sequence (shared prompts): bottom-right causal
        k, v = k.index_select(0, meta.kv_index), v.index_select(0, meta.kv_index)  # (Nk, H_kv, D)
        cu_k, max_k, lengths_k = meta.cu_seqlens_k, meta.max_seqlen_k, meta.lengths_k
    else:
        cu_k, max_k, lengths_k = meta.cu_seqlens, meta.max_seqlen, meta.lengths
    if backend == "torch-flash":
        return _torch_flash(q, k, v, meta.cu_seqlens, cu_k, meta.max_seqlen, max_k)
    if backend == "flash-attn":
        return flash_attn_varlen_func(q, k, v, meta.cu_seqlens, cu_k, meta.max_seqlen, max_k, causal=True)
    lengths = meta.lengths if meta.lengths is not None else _lengths(meta.cu_seqlens)
    return _sdpa_packed(q, k, v, lengths, lengths_k if lengths_k is not None else _lengths(cu_k))


def _lengths(cu_seqlens) -> list[int]:
    bounds = cu_seqlens.tolist()  # a host sync: metas built by AttnMeta.packed carry the lengths instead
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def _torch_flash(q, k, v, cu_q, cu_k, max_q, max_k, **paged):
    """varlen_attn with the causal flag this PyTorch spells, GQA in the kernel where it can (else repeated K/V)."""
    kw = dict(window_size=(-1, 0)) if "window_size" in _VARLEN_PARAMS else dict(is_causal=True)
    heads_k = k.shape[-2]
    if heads_k != q.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            kw["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // heads_k, dim=-2) for t in (k, v))
    return _varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw, **paged)


def _write_slots(k_pool, v_pool, k, v, slots):
    """Write k, v (N, H_kv, D) into flat slots (N, R) of the pools (each token to R replicas)."""
    replicas = slots.shape[1]
    flat = slots.reshape(-1)  # token-major, matching repeat_interleave below
    if replicas > 1:
        k, v = k.repeat_interleave(replicas, dim=0), v.repeat_interleave(replicas, dim=0)
    k_pool.view(-1, *k.shape[1:]).index_copy_(0, flat, k)
    v_pool.view(-1, *v.shape[1:]).index_copy_(0, flat, v)


def _sdpa_packed(q, k, v, lengths: list[int], lengths_k: list[int]):
    """SDPA over packed sequences, one batched call per distinct (query, key) length pair. Equal lengths use
    is_causal (top-left = bottom-right there); otherwise an explicit bottom-right mask. RL batches repeat lengths
    often (same prompt, capped responses), and an all-equal batch is a single call on a view."""
    starts_q, starts_k, groups = 0, 0, {}
    for n_q, n_k in zip(lengths, lengths_k):
        groups.setdefault((n_q, n_k), []).append((starts_q, starts_k))
        starts_q, starts_k = starts_q + n_q, starts_k + n_k
    if len(groups) == 1 and lengths == lengths_k:  # every sequence has the same length: no gather at all
        (n, _), = groups
        qs, ks, vs = (t.view(len(lengths), n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2).reshape(q.shape)
    out = torch.empty_like(q)
    for (n_q, n_k), starts in groups.items():
        rows_q = (torch.tensor([s for s, _ in starts], device=q.device)[:, None] + torch.arange(n_q, device=q.device)).reshape(-1)
        rows_k = (torch.tensor([s for _, s in starts], device=q.device)[:, None] + torch.arange(n_k, device=q.device)).reshape(-1)
        qs = q[rows_q].view(len(starts), n_q, *q.shape[1:]).transpose(1, 2)  # (b, H, n_q, D)
        ks, vs = (t[rows_k].view(len(starts), n_k, *t.shape[1:]).transpose(1, 2) for t in (k, v))  # (b, H_kv, n_k, D)
        mask = None if n_q == n_k else bottom_right_causal(n_q, n_k, q.device)
        attn = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        out[rows_q] = attn.transpose(1, 2).reshape(-1, *q.shape[1:])
    return out


def bottom_right_causal(n_q: int, n_k: int, device) -> torch.Tensor:
    """(n_q, n_k) bool: query i may attend to key j iff j <= i + n_k - n_q (FlashAttention's causal alignment)."""
    return torch.arange(n_k, device=device)[None, :] <= torch.arange(n_q, device=device)[:, None] + (n_k - n_q)


# ----------------------------------------------------------------------------- decode

def _decode(q, k, v, meta: AttnMeta, layer: int, backend: str):
    k_pool, v_pool = meta.cache.k[layer], meta.cache.v[layer]  # (pages, page_size, H_kv, D)
    if backend == "flash-attn":  # appends k, v at cache_seqlens inside the kernel
        out = flash_attn_with_kvcache(q[:, None], k_pool, v_pool, k=k[:, None], v=v[:, None],
                                      cache_seqlens=meta.cache_seqlens, block_table=meta.block_table, causal=True)
        return out[:, 0]
    lens = meta.cache_seqlens.long()  # (B,) keys already cached per row
    page_size = k_pool.shape[1]
    if meta.static or backend == "torch-flash":  # no host sync from here on
        new_slots = meta.block_table.gather(1, (lens // page_size)[:, None])[:, 0].long() * page_size + lens % page_size
        _write_slots(k_pool, v_pool, k, v, new_slots[:, None])  # the kernels read the new token from the cache
        if backend == "torch-flash" and TORCH_FLASH_PAGED:
            used = (lens + 1).to(torch.int32)  # (B,)
            cu_q = torch.arange(q.shape[0] + 1, device=q.device, dtype=torch.int32)
            cu_k = F.pad(used.cumsum(0, dtype=torch.int32), (1, 0))
            max_k = meta.block_table.shape[1] * page_size
            return _torch_flash(q, k_pool, v_pool, cu_q, cu_k, 1, max_k, seqused_k=used, block_table=meta.block_table)
        return _sdpa_decode_gathered(q, k_pool, v_pool, meta.block_table, lens)
    return _sdpa_decode_paged(q, k, v, k_pool, v_pool, meta)


def _sdpa_decode_gathered(q, k_pool, v_pool, block_table, lens):
    """Static-shape SDPA decode: each row's P pages gathered into a (P * page_size) key block, keys at positions
    <= lens[b] visible (the new token is already written at lens[b])."""
    B, P = block_table.shape
    page_size = k_pool.shape[1]
    ks, vs = (pool[block_table.long()].view(B, P * page_size, *pool.shape[2:]).transpose(1, 2)
              for pool in (k_pool, v_pool))  # (B, H_kv, S, D)
    visible = torch.arange(P * page_size, device=q.device)[None, :] <= lens[:, None]  # (B, S)
    out = F.scaled_dot_product_attention(q[:, :, None], ks, vs, attn_mask=visible[:, None, None], enable_gqa=True)
    return out[:, :, 0]  # (B, H, D)


def _sdpa_decode_paged(q, k, v, k_pool, v_pool, meta: AttnMeta):
    """Decode on the paged pool without gathering K/V: write the new token at cache_seqlens, score each page
    in place (pages are the batch of a bmm, like flash-attn's paged kernel), then softmax over each row's
    pages: a scatter-max of the page maxima per row, and scatter-adds of the pages' partial sums. Reading K/V
    once where they lie beats copying every row's pages into a contiguous (B, S) tensor per layer, which
    cost as much as the attention itself on CPU. Work is laid out per KV head (Hkv, pages, group, .) so each
    bmm writes a contiguous block. Dynamic shapes (the pages in use): eager only."""
    page_size, (B, H, D), Hkv = k_pool.shape[1], q.shape, k.shape[1]
    group = H // Hkv  # query heads per KV head (query head h reads KV head h // group, as in repeat_kv)
    new_slots, owner, page_rows, unseen = _page_index(meta, page_size)
    _write_slots(k_pool, v_pool, k, v, new_slots[:, None])
    pages = len(owner)
    qp = q.index_select(0, page_rows).view(pages, Hkv, group, D)  # each page's row's queries
    scores = q.new_empty(Hkv, pages, group, page_size)
    for j in range(Hkv):  # scores = D^-0.5 q k^T (beta=0: the uninitialised input is ignored)
        torch.baddbmm(scores[j], qp[:, j], k_pool[:pages, :, j].transpose(1, 2), beta=0, alpha=D ** -0.5, out=scores[j])
    scores = scores.float().masked_fill_(unseen[:, None], float("-inf"))
    page_max = scores.amax(-1)  # (Hkv, pages, group)
    row_max = page_max.new_full((Hkv, B + 1, group), float("-inf")).scatter_reduce_(
        1, owner[None, :, None].expand_as(page_max), page_max, "amax")  # row B: pages no row reads
    weights = scores.sub_(row_max.index_select(1, owner)[..., None]).exp_().to(v_pool.dtype)
    partial = v_pool.new_empty(Hkv, pages, group, D)
    for j in range(Hkv):
        torch.bmm(weights[j], v_pool[:pages, :, j], out=partial[j])
    numer = page_max.new_zeros(Hkv, B + 1, group, D).index_add_(1, owner, partial.float())
    denom = page_max.new_zeros(Hkv, B + 1, group).index_add_(1, owner, weights.float().sum(-1))
    return (numer[:, :B] / denom[:, :B, :, None]).permute(1, 0, 2, 3).reshape(B, H, D).to(q.dtype)


def _page_index(meta: AttnMeta, page_size: int):
    """Per decode step (shared by all layers): the flat slot of each row's new token, each pool page's row
    (B = none), the row whose query it meets (a valid row for unused pages) and which of its slots that row
    does not see (beyond cache + the new token)."""
    if meta.page_index is None:
        lens = meta.cache_seqlens.long()  # keys already cached per row
        B, width = len(lens), -(-int(lens.max() + 1) // page_size)
        rows = torch.arange(B, device=lens.device)
        new_slots = meta.block_table[rows, lens // page_size].long() * page_size + lens % page_size  # (B,)
        table = meta.block_table[:, :width].long()  # (B, P)
        start = torch.arange(width, device=lens.device) * page_size  # (P,) first position of each column
        valid = start[None, :] <= lens[:, None]  # (B, P): the page holds a key the row reads
        used = table[valid]
        pages = int(used.max()) + 1  # the pool hands out low page ids first, so pages [0, pages) are mostly in use
        owner = torch.full((pages,), B, dtype=torch.long, device=lens.device)
        owner[used] = rows[:, None].expand(B, width)[valid]
        first = torch.zeros(pages, dtype=torch.long, device=lens.device)
        first[used] = start.expand(B, width)[valid]
        row_lens = torch.cat([lens + 1, lens.new_zeros(1)])[owner]  # (pages,) keys the owner attends to
        unseen = first[:, None] + torch.arange(page_size, device=lens.device) >= row_lens[:, None]  # (pages, page_size)
        meta.page_index = (new_slots, owner, owner.clamp(max=B - 1), unseen)
    return meta.page_index
