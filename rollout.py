"""KV-cached batched sampler with a paged KV pool and continuous batching (slot refill).

`generate(model, prompts, params, engine, tokenizer)` samples `params.n` responses for every prompt (token-id
lists of any lengths) and returns, per sample, the response ids, the sampler's per-token logprobs and a finish
reason, plus timing/memory stats.

Sampler logprobs: logprob_t = log_softmax(z / T)[token_t] over the FULL vocabulary of the row's logits z, before
top-k / top-p, which is what the trainer recomputes (model.forward(..., targets, temperature=T)), so the PPO
ratio is 1 at the first epoch up to numerics; greedy (T = 0) reports the temperature-1 logprob. How the token
is drawn (top-k, then top-p, inverse CDF on counter-based uniforms that depend only on seed, sample and
position, so a rerun reproduces every sample) is in sampling.py.

Engine: prompt i's n samples are prefilled by ONE forward of the prompt that writes each token's K/V into n
replica slots (AttnMeta.slot_mapping) and samples the n first tokens from the same logits. Then one decode
forward per step over the active rows (one token each, per-row cache_seqlens, bottom-right causal: flash-attn
with block tables on CUDA, SDPA scoring each page in place elsewhere). Pages come from a free list and are taken
lazily as a row grows; a finished row returns its pages and its slot goes to the next waiting sample. If the
pool runs dry mid-decode the youngest row is preempted: its pages are freed and it is requeued at the front;
on re-admission prompt + its generated tokens are prefilled again and it continues (tokens and logprobs
already produced are kept, and its next uniform is the same as without preemption). On CPU the whole call runs
its linear layers through oneDNN with pre-packed weights (model.packed_cpu_linears: same fp32 math, 1.3-2x
faster matmuls at decode sizes).

Stops: a sampled token in stop_token_ids (plus the model's EOS unless ignore_eos: tokenizer.eos_token_id, or
config.json's eos_token_id without a tokenizer) ends the row with reason "stop" and is KEPT as the last
response token, so its logprob is trained on. A row also stops ("stop") as soon as its decoded response text
contains a stop string; tokens up to and including the one that completed it are kept. Otherwise the row
ends with "length" at max_new_tokens. Nothing after a stop is ever returned; finished rows do no work.

Deviations: no prefix sharing across prompts and no copy-on-write pages (each sample owns its prompt's KV,
written once by the shared prefill); a preempted row is recomputed, never swapped out.

Run alone:
    python rollout.py --bench     # embedded default, CPU fp32: tokens/s vs transformers generate, KV at peak
"""
import argparse
import dataclasses
import gc
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import torch

import model as M
from sampling import as_int64, sample_tokens, splitmix64, uniform_draws
from static_decode import BUCKETS, HEADER, StaticDecoder

DECODE_MODES = ("auto", "eager", "static", "graph")


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass kept (1 = off)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    max_new_tokens: int = 256  # response length cap (finish reason "length")
    n: int = 1  # samples per prompt
    stop_token_ids: list[int] = field(default_factory=list)  # generate() also adds the model's EOS unless ignore_eos
    stop_strings: list[str] = field(default_factory=list)  # stop when the decoded response contains one, e.g. "\n\nQuestion"
    ignore_eos: bool = False  # do not add the model's EOS to stop_token_ids
    seed: int = 0  # sampling seed (draws depend on seed, sample index and position only)


@dataclass
class EngineConfig:
    max_num_seqs: int = 64  # active slots (continuous batching refills them)
    kv_budget_tokens: int = 0  # KV pool size in tokens; 0 = what the call needs (capped on CUDA, below)
    kv_memory_fraction: float = 0.3  # CUDA, kv_budget_tokens = 0: the pool takes at most this share of free memory
    page_size: int = 0  # tokens per KV page; 0 = 256 on CUDA (FlashAttention's paged requirement), 16 elsewhere
    max_prefill_tokens: int = 16384  # prompt tokens per prefill forward (bounds activation memory)
    decode: str = "auto"  # auto (graph on CUDA, eager on CPU) | eager (dynamic shapes) | static | graph (CUDA graphs)


@dataclass
class Sample:
    prompt_index: int  # position of the prompt in `prompts`
    sample_index: int  # 0 .. n-1 within the prompt
    token_ids: list[int]  # response only, never tokens after the stop
    logprobs: list[float]  # sampler logprob of each response token (see the module docstring)
    finish_reason: str  # "stop" | "length"
    entropies: list[float] = field(default_factory=list)  # entropy of softmax(z / T) at each response token


# ----------------------------------------------------------------------------- pages, sequences, stops

class PagePool:
    """Free list of KV page ids with a high-water mark."""

    def __init__(self, num_pages: int):
        self.num_pages, self.free_pages, self.peak_in_use = num_pages, list(range(num_pages - 1, -1, -1)), 0

    def take(self, count: int) -> list[int]:
        pages = [self.free_pages.pop() for _ in range(count)]
        self.peak_in_use = max(self.peak_in_use, self.num_pages - len(self.free_pages))
        return pages

    def give_back(self, pages: list[int]):
        self.free_pages.extend(reversed(pages))


@dataclass
class Sequence:
    prompt_index: int
    sample_index: int
    prompt: list[int]
    key: int  # uniform-stream key: splitmix64 of (seed, global sample index)
    tokens: list[int] = field(default_factory=list)  # response so far; the last one is not cached yet
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)  # KV pages owned, in position order
    cached: int = 0  # tokens whose K/V is in the pages = position of the next decode input
    finish_reason: str = ""


class StopStrings:
    """Finds stop strings in the decoded tail of a response. A string completed by the newest token lies in
    the last len(bytes) tokens (a byte-level token decodes to >= 1 byte), and the decoded window is a suffix
    of the full decoded text (plus replacement chars at a split UTF-8 start), so the tail check is exact."""

    def __init__(self, tokenizer, stop_strings: list[str]):
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        self.window = max(len(s.encode("utf-8")) for s in stop_strings) + 2

    def hit(self, tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens[-self.window:])
        return any(s in text for s in self.stop_strings)


def pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


def check_inputs(model, prompts, params: SamplingParams, engine: EngineConfig, tokenizer):
    vocab = model.cfg.vocab_size
    if not prompts:
        raise ValueError("generate: no prompts")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0 or min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"generate: prompt {i} is empty or has token ids outside [0, {vocab})")
    if params.n < 1 or params.max_new_tokens < 1 or params.temperature < 0 or params.top_k < 0:
        raise ValueError(f"generate: need n >= 1, max_new_tokens >= 1, temperature >= 0, top_k >= 0 (got {params})")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"generate: top_p must be in (0, 1], got {params.top_p}")
    if params.stop_strings and tokenizer is None:
        raise ValueError("generate: stop_strings need a tokenizer to decode responses (pass tokenizer=...)")
    if engine.max_num_seqs < 1 or engine.max_prefill_tokens < 1:
        raise ValueError(f"generate: need max_num_seqs >= 1 and max_prefill_tokens >= 1 (got {engine})")
    if engine.decode not in DECODE_MODES or not 0 < engine.kv_memory_fraction <= 1:
        raise ValueError(f"generate: decode must be one of {DECODE_MODES} and kv_memory_fraction in (0, 1] (got {engine})")


def stop_token_set(model, params: SamplingParams, tokenizer) -> set[int]:
    stops = set(params.stop_token_ids)
    if not params.ignore_eos:
        eos = tokenizer.eos_token_id if tokenizer is not None else getattr(model, "hf_config", {}).get("eos_token_id")
        stops.update([] if eos is None else [eos] if isinstance(eos, int) else eos)
    return stops


# ----------------------------------------------------------------------------- the engine

class Engine:
    """State of one generate() call: the KV pool, the waiting queue and the active rows (admission order)."""

    def __init__(self, model, sequences, params: SamplingParams, config: EngineConfig, tokenizer, cache, decoder, bar,
                 num_pages: int):
        self.model, self.params, self.config, self.cache, self.decoder, self.bar = model, params, config, cache, decoder, bar
        self.device, self.page_size = model.embed_tokens.weight.device, cache.page_size
        self.pool = PagePool(num_pages)  # pages [0, num_pages) of the cache; its last page is the decoder's scratch
        self.stop_ids = stop_token_set(model, params, tokenizer)
        self.stop_strings = StopStrings(tokenizer, params.stop_strings) if params.stop_strings else None
        self.waiting, self.active = deque(sequences), []  # active: youngest last
        self.stats = dict(prefill_s=0.0, decode_s=0.0, prefill_tokens=0, generated_tokens=0, decode_steps=0, preemptions=0)

    def admit(self) -> list[Sequence]:
        """Waiting samples into free slots while the pool holds their context + one token."""
        admitted, prefill_tokens = [], 0
        while self.waiting and len(self.active) + len(admitted) < self.config.max_num_seqs:
            seq = self.waiting[0]
            context = len(seq.prompt) + len(seq.tokens)
            cost = 0 if admitted and shares_prefill(admitted[-1], seq) else context
            needed = pages_for(context + 1, self.page_size)
            if len(self.pool.free_pages) < needed or (admitted and prefill_tokens + cost > self.config.max_prefill_tokens):
                break
            seq.pages, seq.cached = self.pool.take(needed), context
            admitted.append(self.waiting.popleft())
            prefill_tokens += cost
        return admitted

    def prefill(self, admitted: list[Sequence]):
        """One packed forward over the admitted contexts; the samples of one prompt share it (replica slots)."""
        groups = []  # [[sequences filled from one context]]
        for seq in admitted:
            if groups and shares_prefill(groups[-1][0], seq):
                groups[-1].append(seq)
            else:
                groups.append([seq])
        contexts = [group[0].prompt + group[0].tokens for group in groups]
        replicas = max(map(len, groups))
        slot_blocks = []
        for context, group in zip(contexts, groups):
            pos = torch.arange(len(context))  # (T,)
            slots = torch.stack([torch.tensor(s.pages)[pos // self.page_size] * self.page_size + pos % self.page_size
                                 for s in group], 1)  # (T, len(group))
            slot_blocks.append(torch.cat([slots, slots[:, :1].expand(-1, replicas - len(group))], 1))  # pad: own slot again
        lengths = [len(c) for c in contexts]
        meta = M.AttnMeta.packed(lengths, self.device, cache=self.cache, slot_mapping=torch.cat(slot_blocks).to(self.device))
        flat = torch.tensor([t for c in contexts for t in c], device=self.device)  # (N,)
        positions = torch.cat([torch.arange(n) for n in lengths]).to(self.device)  # (N,)
        last = (torch.tensor(lengths).cumsum(0) - 1).to(self.device)  # (groups,)
        logits = self.model(flat, positions, meta, logits_index=last)  # (groups, V)
        rows = torch.tensor([g for g, group in enumerate(groups) for _ in group], device=self.device)
        self.append(admitted, logits[rows])
        self.active.extend(s for s in admitted if not s.finish_reason)
        self.stats["prefill_tokens"] += sum(lengths)

    def reserve_pages(self):
        """A slot for every active row's next position; when the pool is dry, preempt the youngest row."""
        row = 0
        while row < len(self.active):
            seq = self.active[row]
            missing = pages_for(seq.cached + 1, self.page_size) - len(seq.pages)
            while missing > len(self.pool.free_pages) and self.active[-1] is not seq:
                self.preempt_youngest()
            if missing > len(self.pool.free_pages):  # seq is the youngest itself
                self.preempt_youngest()
                break
            seq.pages += self.pool.take(missing)
            row += 1

    def preempt_youngest(self):
        """Free the youngest row's pages and requeue it first; re-admission re-prefills prompt + its tokens."""
        seq = self.active.pop()
        self.pool.give_back(seq.pages)
        seq.pages, seq.cached = [], 0
        self.waiting.appendleft(seq)
        self.stats["preemptions"] += 1

    def decode(self):
        """One token for every active row: its last token goes in at position `cached`."""
        if self.decoder is not None and len(self.active) <= BUCKETS[-1]:
            return self.decode_static()
        width = max(len(s.pages) for s in self.active)
        block_table = torch.tensor([s.pages + [0] * (width - len(s.pages)) for s in self.active], dtype=torch.int32)  # (B, P)
        cache_seqlens = torch.tensor([s.cached for s in self.active], dtype=torch.int32)  # (B,)
        tokens = torch.tensor([s.tokens[-1] for s in self.active])  # (B,)
        meta = M.AttnMeta(cache=self.cache, block_table=block_table.to(self.device), cache_seqlens=cache_seqlens.to(self.device))
        logits = self.model(tokens.to(self.device), cache_seqlens.long().to(self.device), meta)  # (B, V)
        for seq in self.active:
            seq.cached += 1
        self.append(self.active, logits)
        self.active = [s for s in self.active if not s.finish_reason]  # finished rows leave the batch
        self.stats["decode_steps"] += 1

    def decode_static(self):
        """The same step through static_decode (a CUDA graph per bucket): one staging row per active row."""
        pad = self.decoder.width
        rows = [[s.tokens[-1], s.cached, as_int64(s.key), len(s.tokens)] + s.pages + [self.decoder.scratch_page] *
                (pad - len(s.pages)) for s in self.active]
        tokens, logprobs, entropies = self.decoder.run(rows)
        for seq in self.active:
            seq.cached += 1
        self.record(self.active, tokens, logprobs, entropies)
        self.active = [s for s in self.active if not s.finish_reason]
        self.stats["decode_steps"] += 1

    def append(self, batch: list[Sequence], logits):
        """Sample one token per row of `batch` from logits (B, V); retire rows that stop (pages back to the pool)."""
        uniforms = uniform_draws([s.key for s in batch], [len(s.tokens) for s in batch])
        p = self.params
        tokens, logprobs, entropies = sample_tokens(logits, p.temperature, p.top_k, p.top_p, uniforms)
        self.record(batch, tokens.tolist(), logprobs.tolist(), entropies.tolist())

    def record(self, batch: list[Sequence], tokens: list[int], logprobs: list[float], entropies: list[float]):
        for seq, token, logprob, entropy in zip(batch, tokens, logprobs, entropies):
            seq.entropies.append(entropy)
            seq.tokens.append(token)
            seq.logprobs.append(logprob)
            if token in self.stop_ids or (self.stop_strings is not None and self.stop_strings.hit(seq.tokens)):
                seq.finish_reason = "stop"
            elif len(seq.tokens) == self.params.max_new_tokens:
                seq.finish_reason = "length"
            if seq.finish_reason:
                self.pool.give_back(seq.pages)
                seq.pages = []
                if self.bar is not None:
                    self.bar.update(1)
        self.stats["generated_tokens"] += len(batch)


def shares_prefill(first: Sequence, seq: Sequence) -> bool:
    """Fresh samples of the same prompt are prefilled once together."""
    return not first.tokens and not seq.tokens and first.prompt_index == seq.prompt_index


class Interrupted(Exception):
    """generate() was asked to stop (should_stop() returned True); nothing it sampled is returned."""


class Sampler:
    """What generate() keeps across calls: one KV pool (grown when a call needs more, never reserved per call)
    and, for static/graph decode, the decode steps captured over it (static_decode.py).

    Pool size: kv_budget_tokens if set, else what the call needs (max_num_seqs rows x (longest prompt +
    max_new_tokens)), capped on CUDA at kv_memory_fraction of the free memory (plus the pool it replaces), so a
    long-response eval asks for what fits and preemption handles the rest. On CUDA out-of-memory the failed
    call's state is released first, then the cache emptied, and the call retried with half the pool and slots."""

    def __init__(self, model, engine: EngineConfig = EngineConfig()):
        self.model, self.engine = model, engine
        self.device = model.embed_tokens.weight.device
        self.page_size = engine.page_size or (256 if self.device.type == "cuda" else 16)
        mode = engine.decode if engine.decode != "auto" else ("graph" if self.device.type == "cuda" else "eager")
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError("generate: decode='graph' needs CUDA (use 'static' for the same step without graphs)")
        self.mode, self.cache, self.decoders, self.scale = mode, None, {}, 1.0
        self.graph_pool = torch.cuda.graph_pool_handle() if mode == "graph" else None

    def pool_pages(self, need_tokens: int, longest: int) -> int:
        """Pages this call may use; (re)allocates the pool when it is missing or smaller."""
        cfg, size = self.model.cfg, self.model.embed_tokens.weight.element_size()
        bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * size
        budget = self.engine.kv_budget_tokens or need_tokens
        if self.device.type == "cuda" and not self.engine.kv_budget_tokens:
            free = torch.cuda.mem_get_info(self.device)[0] + torch.cuda.memory_reserved(self.device) \
                - torch.cuda.memory_allocated(self.device) + (self.cache.k.nbytes * 2 if self.cache is not None else 0)
            budget = min(budget, int(self.engine.kv_memory_fraction * self.scale * free / bytes_per_token))
        pages = pages_for(budget, self.page_size)
        if pages < pages_for(longest, self.page_size):
            raise ValueError(f"generate: a KV budget of {budget} tokens ({pages} pages of {self.page_size}) cannot hold "
                             f"one sequence of {longest} tokens (longest prompt + max_new_tokens): raise "
                             "kv_budget_tokens / kv_memory_fraction, or shorten the prompts or max_new_tokens")
        if self.cache is None or self.cache.num_pages - 1 < pages:
            self.release()
            self.cache = M.KVCache.allocate(cfg, pages + 1, self.page_size, self.device, self.model.embed_tokens.weight.dtype)
        return pages

    def decoder(self, params: SamplingParams, longest: int):
        if self.mode == "eager":
            return None
        width = pages_for(longest, self.page_size)
        if self.mode == "graph":  # a few widths only, so a slightly longer prompt does not recapture
            width = 1 << (width - 1).bit_length()
        key = (params.temperature, params.top_k, params.top_p)
        if key not in self.decoders or self.decoders[key].width < width:
            self.decoders[key] = StaticDecoder(self.model, self.cache, width, self.cache.num_pages - 1, *key,
                                               graph_pool=self.graph_pool)
            if self.mode == "graph":
                self.decoders[key].capture_all(min(self.engine.max_num_seqs, BUCKETS[-1]))
        return self.decoders[key]

    def release(self):
        self.cache, self.decoders = None, {}

    def generate(self, prompts, params: SamplingParams, tokenizer=None, progress=False, should_stop=None):
        """rollout.generate on this sampler's pool (see generate)."""
        check_inputs(self.model, prompts, params, self.engine, tokenizer)
        for attempt in range(4):
            try:
                return self._generate(prompts, params, tokenizer, progress, should_stop)
            except torch.cuda.OutOfMemoryError:
                if attempt == 3:
                    raise
            # outside the except block: the failed attempt's frames, and the tensors they hold, are gone
            self.release()
            gc.collect()
            torch.cuda.empty_cache()
            self.scale /= 2
            print(f"rollout ran out of GPU memory; retrying with {self.scale:g} x the KV pool and slots", file=sys.stderr)

    def _generate(self, prompts, params, tokenizer, progress, should_stop):
        longest = max(map(len, prompts)) + params.max_new_tokens
        num_seqs = len(prompts) * params.n
        slots = max(1, int(min(self.engine.max_num_seqs, num_seqs) * self.scale))
        pages = self.pool_pages(slots * pages_for(longest, self.page_size) * self.page_size, longest)
        sequences = [Sequence(i, j, list(prompt), splitmix64(splitmix64(params.seed) ^ (i * params.n + j)))
                     for i, prompt in enumerate(prompts) for j in range(params.n)]
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=num_seqs, unit="seq", desc="rollout", dynamic_ncols=True)
        engine = dataclasses.replace(self.engine, max_num_seqs=slots)
        run = Engine(self.model, sequences, params, engine, tokenizer, self.cache, self.decoder(params, longest), bar, pages)
        with torch.inference_mode(), M.packed_cpu_linears(self.model, slots):
            while run.waiting or run.active:
                if should_stop is not None and should_stop():
                    raise Interrupted("generate: stopped on request")
                start = time.perf_counter()
                admitted = run.admit()
                if admitted:
                    run.prefill(admitted)
                run.stats["prefill_s"] += time.perf_counter() - start
                start = time.perf_counter()
                run.reserve_pages()
                if run.active:
                    run.decode()
                run.stats["decode_s"] += time.perf_counter() - start
        if bar is not None:
            bar.close()
        run.stats.update(peak_kv_tokens=run.pool.peak_in_use * self.page_size, kv_budget_tokens=pages * self.page_size,
                         page_size=self.page_size, kv_bytes_per_token=self.cache.bytes_per_token(), kv_pages=pages,
                         kv_pages_free=len(run.pool.free_pages), decode_mode=self.mode)
        return [Sample(s.prompt_index, s.sample_index, s.tokens, s.logprobs, s.finish_reason, s.entropies)
                for s in sequences], run.stats


def generate(model, prompts: list[list[int]], params: SamplingParams, engine: EngineConfig = EngineConfig(),
             tokenizer=None, progress: bool = False, should_stop=None, sampler: Sampler | None = None):
    """Sample params.n responses per prompt -> (samples, prompt-major: prompt i's at i*n .. i*n+n-1; stats).

    sampler: a Sampler(model, engine) reused across calls (its KV pool and decode graphs persist); default: a
    fresh one for this call. should_stop (optional, () -> bool) is polled once per engine step (host-side only,
    no device sync); when it returns True the call raises Interrupted within one decode step (a preemption).

    stats: prefill_s, decode_s, prefill_tokens, generated_tokens, decode_steps, preemptions, peak_kv_tokens
    (pages in use at peak x page_size), kv_budget_tokens, page_size, kv_bytes_per_token, kv_pages, kv_pages_free,
    decode_mode."""
    sampler = sampler or Sampler(model, engine)
    return sampler.generate(prompts, params, tokenizer, progress, should_stop)


# ----------------------------------------------------------------------------- command line

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", action="store_true", help="tokens/s vs transformers generate (benchmarks/rollout_bench.py)")
    parser.add_argument("--batches", default="32,64", help="--bench: comma-separated prompt counts")
    parser.add_argument("--new-tokens", type=int, default=128, help="--bench: tokens generated per prompt (EOS ignored)")
    parser.add_argument("--temperature", type=float, default=1.0, help="--bench: sampling temperature (0 = greedy)")
    parser.add_argument("--reps", type=int, default=1, help="--bench: interleaved repetitions (median reported)")
    args = parser.parse_args()
    try:
        if args.bench:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks"))
            from rollout_bench import run_bench
            return run_bench([int(b) for b in args.batches.split(",")], args.new_tokens, args.temperature, args.reps)
        parser.print_help()
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
