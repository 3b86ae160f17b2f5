"""rollout.py benchmark: sampling tokens/s vs transformers `generate` on the embedded default.

    python rollout.py --bench            (or: python benchmarks/rollout_bench.py [--batches 32,64] [--reps 1])

Same gsm8k prompts (mixed lengths) for both, EOS ignored so both produce batch x new_tokens tokens, the
same sampling (temperature, no top-k/top-p). transformers gets the batch left-padded with an attention mask
(what `generate` needs) and its default dynamic cache; ours runs packed prefill + paged decode. Runs are
interleaved per configuration. transformers' prefill is timed by a separate max_new_tokens=1 call, so its
decode time per step is (total - prefill) / (new_tokens - 1). KV memory: pages in use at peak vs the
batch x (longest prompt + new_tokens) a static cache would hold. The ceiling line times the decode step's
linear layers and lm_head alone, with the kernels our sampler uses (model.packed_cpu_linears): transformers'
time over (our prefill + steps x that floor) is the best ratio that faster attention or less bookkeeping
could reach on this machine. The line also gives the rate those matmuls run at as a fraction of what the
same kernels reach at 1024 rows (how much faster the linear layers could still get), and the ratio once every
step also reads each row's K/V once at the measured memory read bandwidth (a floor for any attention kernel).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model as M  # noqa: E402
from rollout import EngineConfig, SamplingParams, generate  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_bench(batches: list[int], new_tokens: int = 128, temperature: float = 1.0, reps: int = 1):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    ours, tok = M.load_model(None)
    hf = AutoModelForCausalLM.from_pretrained(ours.name_or_path, dtype=torch.float32).eval()
    problems = [json.loads(line)["problem"] for line in open(os.path.join(ROOT, "data", "gsm8k_test.jsonl"))]
    params = SamplingParams(temperature=temperature, max_new_tokens=new_tokens, ignore_eos=True)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)

    def hf_generate(prompts, count):
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        start = time.perf_counter()
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=count, min_new_tokens=count, **sampling)
        assert out.shape[1] == width + count
        return time.perf_counter() - start

    linears = [ours.lm_head] + [m for block in ours.layers for m in (
        block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.self_attn.o_proj,
        block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj)]
    matmul_params = sum(m.weight.numel() for m in linears)

    def matmul_floor(batch, reps=5):
        """Seconds per decode step of the work no sampler can skip: every linear layer and the lm_head at this batch."""
        work = [(torch.randn(batch, m.in_features), m) for m in linears]
        with M.packed_cpu_linears(ours, batch):  # the linear kernels our sampler runs
            for x, m in work:  # warm-up
                m(x)
            start = time.perf_counter()
            for _ in range(reps):
                for x, m in work:
                    m(x)
            return (time.perf_counter() - start) / reps

    def machine_peaks(rows=1024):
        """(GFLOP/s of the same linear kernels at `rows` rows, GB/s of reading a large tensor): this machine at best."""
        big = torch.randn(64 * 2**20)  # 256 MB: far larger than any cache
        big.sum()  # warm-up
        read_s = min(timed(big.sum) for _ in range(3))
        return 2 * rows * matmul_params / matmul_floor(rows, reps=1) / 1e9, big.numel() * 4 / read_s / 1e9

    def ours_generate(prompts):
        start = time.perf_counter()
        samples, stats = generate(ours, prompts, params, EngineConfig(max_num_seqs=len(prompts)), tok)
        assert sum(len(s.token_ids) for s in samples) == len(prompts) * new_tokens
        return time.perf_counter() - start, stats

    print(f"rollout bench: embedded default, CPU fp32, {torch.get_num_threads()} threads, gsm8k prompts, {new_tokens} new "
          f"tokens (EOS ignored), temperature {temperature}, median of {reps} interleaved run(s)")
    with torch.inference_mode():
        peak_gflops, read_gbs = machine_peaks()
        warm = [tok.encode("Question: 1 + 1?\nAnswer:")] * 2
        generate(ours, warm, SamplingParams(max_new_tokens=4, ignore_eos=True))
        hf_generate(warm, 4)
        for batch in batches:
            prompts = [tok.encode(f"Question: {p}\nAnswer:") for p in problems[:batch]]
            runs = [(ours_generate(prompts), hf_generate(prompts, new_tokens), hf_generate(prompts, 1)) for _ in range(reps)]
            ours_s, stats = statistics.median(r[0][0] for r in runs), runs[-1][0][1]
            hf_s, hf_prefill_s = statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)
            floor_s = matmul_floor(batch)
            count, steps = batch * new_tokens, new_tokens - 1
            kv_mb = stats["peak_kv_tokens"] * stats["kv_bytes_per_token"] / 1e6
            static_mb = batch * (max(map(len, prompts)) + new_tokens) * stats["kv_bytes_per_token"] / 1e6
            print(f"batch {batch:3d} x {new_tokens} tokens, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens: "
                  f"ours {count / ours_s:5.1f} tok/s (prefill {stats['prefill_s']:.1f} s, decode {stats['decode_s']:.1f} s = "
                  f"{stats['decode_s'] / steps * 1e3:.0f} ms/step; KV peak {kv_mb:.0f} MB vs batch x max_len {static_mb:.0f} MB) | "
                  f"transformers {count / hf_s:5.1f} tok/s (prefill {hf_prefill_s:.1f} s, decode {(hf_s - hf_prefill_s) / steps * 1e3:.0f} "
                  f"ms/step) | {hf_s / ours_s:.1f}x", flush=True)
            matmul_gflop = 2 * batch * matmul_params / 1e9
            kv_gb = sum(len(p) + t for p in prompts for t in range(1, new_tokens)) * stats["kv_bytes_per_token"] / steps / 1e9
            print(f"  ceiling: the decode matmuls alone take {floor_s * 1e3:.0f} ms/step ({matmul_gflop / floor_s:.0f} GFLOP/s "
                  f"= {matmul_gflop / floor_s / peak_gflops:.0%} of the {peak_gflops:.0f} GFLOP/s they reach at 1024 rows), so "
                  f"with our prefill the best possible ratio here is {hf_s / (stats['prefill_s'] + steps * floor_s):.1f}x; "
                  f"adding the KV cache read once per step at the measured {read_gbs:.0f} GB/s ({kv_gb * 1e3:.0f} MB/step, "
                  f"{kv_gb / read_gbs * 1e3:.0f} ms) makes it {hf_s / (stats['prefill_s'] + steps * (floor_s + kv_gb / read_gbs)):.1f}x",
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="32,64")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    run_bench([int(b) for b in args.batches.split(",")], args.new_tokens, args.temperature, args.reps)
