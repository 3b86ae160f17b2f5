"""The sampler's decode step in static shapes, replayed as a CUDA graph per batch bucket (eager on CPU).

One decode step for B active rows: embed each row's last token, run the model over the paged KV cache
(attention.py, `AttnMeta.static`), and sample the next token on the device (sampling.py: counter-based uniforms
from the row keys, `static=True`), all in shapes fixed by the bucket b >= B (BUCKETS: 1, 2, 4, ... 512) and the
block-table width P. Rows B..b-1 are padding: their block table points at the pool's scratch page with cache
length 0, and their outputs are ignored.

Per step the host writes one int64 row per sequence into a staging buffer
    [last token, cached tokens (= its position), row key (int64 bits), response position, page ids (P)]
copies it to the device in one transfer, replays the bucket's graph, and reads back one (b, 3) fp64 block of
(token, logprob, entropy): one host-to-device and one device-to-host copy per step, nothing else crosses. Stop checks
(EOS, stop strings) and page bookkeeping stay on the host, outside the graph (rollout.py).

CUDA graphs: each bucket is warmed up (twice, on a side stream, writing only the scratch page) and captured once;
all graphs share one memory pool, captured largest bucket first. A replay reads fixed addresses: the staging
buffer, the KV pool and the weights. Weights updated in place (optimizer step, load_state_dict into the same
tensors) keep the graphs valid; a new KV pool or new model needs a new StaticDecoder (rollout.Sampler does that).
Correctness: the graph replays exactly the eager static step (same kernels, same shapes); the static step
gives the tokens of rollout.py's dynamic eager decode (tests/test_rollout.py; benchmarks/gpu_check.py on CUDA).
"""
import torch

import model as M
from sampling import sample_tokens, uniform_draws_tensor

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
HEADER = 4  # staging columns before the page ids: token, cached, key, response position


def bucket_for(rows: int) -> int | None:
    """Smallest bucket holding `rows`, or None above the largest (the caller decodes eagerly)."""
    return next((b for b in BUCKETS if b >= rows), None)


class StaticDecoder:
    """Static decode steps over one KV pool for one set of sampling parameters (temperature, top-k, top-p)."""

    def __init__(self, model, cache: M.KVCache, width: int, scratch_page: int, temperature: float, top_k: int,
                 top_p: float, graph_pool=None):
        """graph_pool: a torch.cuda.graph_pool_handle() to capture CUDA graphs into (shared by a sampler's
        decoders); None runs the same step eagerly."""
        self.model, self.cache, self.width, self.scratch_page = model, cache, width, scratch_page
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.device = model.embed_tokens.weight.device
        self.graphs, self.pool = graph_pool is not None, graph_pool
        self.steps = {}  # bucket -> dict(staging, inputs, out, graph)
        self.captures = 0

    def pad_row(self) -> list[int]:
        return [0, 0, 0, 0] + [self.scratch_page] * self.width

    def capture_all(self, largest: int):
        """Capture every bucket up to `largest`, the largest first (smaller graphs then reuse its pool memory)."""
        for bucket in sorted((b for b in BUCKETS if b <= largest), reverse=True):
            self._step(bucket)

    def _step(self, bucket: int) -> dict:
        if bucket in self.steps:
            return self.steps[bucket]
        pad = torch.tensor([self.pad_row()] * bucket, dtype=torch.int64)  # (b, HEADER + P)
        step = dict(staging=pad.pin_memory() if self.graphs else pad, graph=None)
        step["inputs"] = step["staging"].to(self.device) if self.graphs else step["staging"]
        step["out"] = torch.zeros(bucket, 3, dtype=torch.float64, device=self.device)
        if self.graphs:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: kernels chosen, workspaces allocated, outside the graph
                    self._forward(step)
            torch.cuda.current_stream(self.device).wait_stream(side)
            step["graph"] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(step["graph"], pool=self.pool):
                self._forward(step)
            self.captures += 1
        self.steps[bucket] = step
        return step

    def _forward(self, step: dict):
        """The captured work: inputs (b, HEADER + P) int64 -> out (b, 3) fp64 = (next token, logprob, entropy)."""
        inputs = step["inputs"]
        tokens, cached, keys, positions = inputs[:, 0], inputs[:, 1], inputs[:, 2], inputs[:, 3]  # (b,) each
        meta = M.AttnMeta(cache=self.cache, block_table=inputs[:, HEADER:].to(torch.int32),
                          cache_seqlens=cached.to(torch.int32), static=True)
        logits = self.model(tokens, cached, meta)  # (b, V) fp32
        uniforms = uniform_draws_tensor(keys, positions)  # (b,) fp64
        next_tokens, logprobs, entropies = sample_tokens(logits, self.temperature, self.top_k, self.top_p, uniforms,
                                                         static=True)
        step["out"].copy_(torch.stack([next_tokens.double(), logprobs.double(), entropies.double()], 1))

    def run(self, rows: list[list[int]]) -> tuple[list[int], list[float], list[float]]:
        """rows: one staging row per active sequence (pad_row layout, len <= the largest bucket) -> tokens,
        logprobs, entropies."""
        step = self._step(bucket_for(len(rows)))
        staging = step["staging"]
        staging[:len(rows)] = torch.tensor(rows, dtype=torch.int64)
        staging[len(rows):] = torch.tensor(self.pad_row(), dtype=torch.int64)
        if self.graphs:
            step["inputs"].copy_(staging, non_blocking=True)
            step["graph"].replay()
        else:
            self._forward(step)
        out = step["out"][:len(rows)].tolist()  # the one device-to-host copy (and sync) of the step
        return [int(t) for t, _, _ in out], [lp for _, lp, _ in out], [h for _, _, h in out]
