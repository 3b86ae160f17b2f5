"""Attention for flat token lists: packed causal sequences and paged-KV decode, flash-attn or SDPA.

One function, `attention(q, k, v, meta, layer)`, two layouts described by `AttnMeta`:
  * packed: sequences concatenated, `cu_seqlens` (B+1,) marks their starts; causal within each sequence
    (training, and the sampler's prefill, which may also write each token's K/V into R cache slots);
  * decode: one new token per row; it is written at position cache_seqlens[b] of the row's pages and
    attends to all cache_seqlens[b] + 1 keys (bottom-right aligned causal mask: the new token is last).
The KV cache is paged: per layer a pool of `num_pages` pages of `page_size` slots, and a block table per
row; a row's token at position p lives in page block_table[row, p // page_size], offset p % page_size.
On CUDA with flash-attn installed the kernels are flash_attn_varlen_func / flash_attn_with_kvcache (page
size must then be a multiple of 256); everywhere else SDPA with the same semantics: the packed path runs
one batched call per distinct sequence length, the decode path scores each page in place. A GPU test in
tests/test_model.py compares the two. `seq_masks` (training with a prompt shared by its G responses, see
train.py) replaces the causal mask of each packed sequence and always runs through SDPA.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # flash-attn is the CUDA fast path; everything has an SDPA twin
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache
    HAS_FLASH = True
except ImportError:
    HAS_FLASH = False


@dataclass
class AttnMeta:
    """Where each of the N flat tokens sits. Exactly one of cu_seqlens (packed) / cache_seqlens (decode)."""
    cu_seqlens: torch.Tensor | None = None  # (B+1,) int32 sequence starts in the packed token list
    max_seqlen: int = 0  # longest packed sequence
    cache: "KVCache | None" = None  # paged KV pool to write to (packed prefill) or read from (decode)
    slot_mapping: torch.Tensor | None = None  # (N, R) packed prefill: flat cache slots for R replicas of each token
    block_table: torch.Tensor | None = None  # (B, P) int32 decode: page ids of each row
    cache_seqlens: torch.Tensor | None = None  # (B,) int32 decode: tokens already cached for each row
    seq_masks: list | None = None  # packed: per sequence an (L, L) bool mask (True = may attend) or None = causal
    page_index: tuple | None = None  # decode, SDPA path: per-step page bookkeeping shared by all layers (_page_index)

    @staticmethod
    def packed(lengths: list[int], device, **kw) -> "AttnMeta":
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
        return AttnMeta(cu_seqlens=cu.to(device), max_seqlen=max(lengths), **kw)


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

    def bytes_per_token(self) -> int:
        L, _, _, Hkv, D = self.k.shape
        return 2 * L * Hkv * D * self.k.element_size()


def attention(q, k, v, meta: AttnMeta, layer: int):
    """Causal GQA attention over flat tokens. q: (N, H, D); k, v: (N, H_kv, D) -> (N, H, D)."""
    use_flash = HAS_FLASH and q.is_cuda
    if meta.cache_seqlens is not None:  # decode: one new token per row
        k_pool, v_pool = meta.cache.k[layer], meta.cache.v[layer]  # (pages, page_size, H_kv, D)
        if use_flash:  # appends k, v at cache_seqlens inside the kernel
            out = flash_attn_with_kvcache(q[:, None], k_pool, v_pool, k=k[:, None], v=v[:, None],
                                          cache_seqlens=meta.cache_seqlens, block_table=meta.block_table, causal=True)
            return out[:, 0]
        return _sdpa_decode(q, k, v, k_pool, v_pool, meta)
    if meta.cache is not None:  # packed prefill that also fills the cache
        _write_slots(meta.cache.k[layer], meta.cache.v[layer], k, v, meta.slot_mapping)
    if meta.seq_masks is not None:  # shared-prefix groups: arbitrary masks, which flash-attn cannot take
        return _sdpa_masked(q, k, v, meta.cu_seqlens, meta.seq_masks)
    if use_flash:
        cu = meta.cu_seqlens
        return flash_attn_varlen_func(q, k, v, cu, cu, meta.max_seqlen, meta.max_seqlen, causal=True)
    return _sdpa_packed(q, k, v, meta.cu_seqlens)


def _write_slots(k_pool, v_pool, k, v, slots):
    """Write k, v (N, H_kv, D) into flat slots (N, R) of the pools (each token to R replicas)."""
    replicas = slots.shape[1]
    flat = slots.reshape(-1)  # token-major, matching repeat_interleave below
    if replicas > 1:
        k, v = k.repeat_interleave(replicas, dim=0), v.repeat_interleave(replicas, dim=0)
    k_pool.view(-1, *k.shape[1:]).index_copy_(0, flat, k)
    v_pool.view(-1, *v.shape[1:]).index_copy_(0, flat, v)


def _sdpa_packed(q, k, v, cu_seqlens):
    """SDPA over packed sequences, one batched call per distinct length (query length = key length, so
    is_causal's top-left mask is the right one). RL batches repeat lengths often (same prompt, capped
    responses), and an all-equal batch is a single call on a view, as fast as a padded batch."""
    bounds = cu_seqlens.tolist()
    starts_by_length = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        starts_by_length.setdefault(end - start, []).append(start)
    if len(starts_by_length) == 1:  # every sequence has the same length: no gather at all
        (length, starts), = starts_by_length.items()
        qs, ks, vs = (t.view(len(starts), length, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2).reshape(q.shape)
    out = torch.empty_like(q)
    for length, starts in starts_by_length.items():
        rows = (torch.tensor(starts, device=q.device)[:, None] + torch.arange(length, device=q.device)).reshape(-1)
        qs, ks, vs = (t[rows].view(len(starts), length, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))  # (b, H, T, D)
        out[rows] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(-1, *q.shape[1:])
    return out


def _sdpa_masked(q, k, v, cu_seqlens, masks):
    """Per-sequence SDPA with an explicit (L, L) mask; None means plain causal."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end, mask in zip(bounds[:-1], bounds[1:], masks):
        qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, D)
        attn = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=None if mask is None else mask[None, None],
                                              is_causal=mask is None, enable_gqa=True)
        out[start:end] = attn[0].transpose(0, 1)
    return out


def _sdpa_decode(q, k, v, k_pool, v_pool, meta: AttnMeta):
    """Decode on the paged pool without gathering K/V: write the new token at cache_seqlens, score each page
    in place (pages are the batch of a bmm, like flash-attn's paged kernel), then softmax over each row's
    pages: a scatter-max of the page maxima per row, and scatter-adds of the pages' partial sums. Reading K/V
    once where they lie beats copying every row's pages into a contiguous (B, S) tensor per layer, which
    cost as much as the attention itself. Work is laid out per KV head (Hkv, pages, group, .) so each bmm
    writes a contiguous block."""
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
