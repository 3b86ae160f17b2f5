"""model.py benchmark: training forward+backward throughput vs transformers, and logprob peak memory.

    python model.py --bench            (or: python benchmarks/model_bench.py [--reps 3])

(a) equal-length batch: both models see the same (B, T) tokens;
(b) mixed lengths: ours runs packed (no padding), transformers runs the right-padded batch with a mask.
Both compute what the trainer needs, log p(target_t) and the entropy H_t of every token, and backpropagate
sum_t (log p + 0.01 H) (ours through the chunked logprob head, transformers through full logits + log_softmax). Runs are interleaved and the median is reported.
Memory: peak extra RSS of one logprob forward+backward, chunked vs a full [N, V] log_softmax, each in a
fresh subprocess (CPU has no allocator high-water counter, so the growth of the process's peak RSS,
VmHWM, over the step is used).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
from logprobs import chunked_logprobs_entropy  # noqa: E402


def ours_step(ours, ids, lengths):
    flat = torch.cat([ids[b, :T] for b, T in enumerate(lengths)])
    targets = torch.cat([torch.roll(ids[b, :T], -1) for b, T in enumerate(lengths)])
    positions = torch.cat([torch.arange(T) for T in lengths])
    logp, entropy = ours(flat, positions, M.AttnMeta.packed(lengths, "cpu"), targets=targets)
    (logp.sum() + 0.01 * entropy.sum()).backward()


def hf_step(hf, ids, lengths):
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None])
    logits = hf(ids, attention_mask=mask.long()).logits
    logp_all = F.log_softmax(logits.float(), -1)
    logp = logp_all.gather(-1, torch.roll(ids, -1, 1)[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    (logp[mask].sum() + 0.01 * entropy[mask].sum()).backward()


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def throughput(ours, hf, lengths, reps, vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=g)
    real = sum(lengths)
    ours_s, hf_s = [], []
    for _ in range(reps + 1):  # first round is warm-up
        ours.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)
        ours_s.append(timed(ours_step, ours, ids, lengths))
        hf_s.append(timed(hf_step, hf, ids, lengths))
    ours_t, hf_t = statistics.median(ours_s[1:]), statistics.median(hf_s[1:])
    return real / ours_t, real / hf_t, 1 - real / (len(lengths) * max(lengths))


def peak_memory_child(mode: str, N: int, V: int, C: int):
    torch.manual_seed(0)
    hidden = torch.randn(N, C, requires_grad=True)
    weight = torch.randn(V, C, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    before = vm_hwm()
    if mode == "chunked":
        logp, ent = chunked_logprobs_entropy(hidden, weight, targets, chunk_size=512)
    else:
        logp_all = F.log_softmax((hidden @ weight.T).float(), -1)
        logp = logp_all.gather(-1, targets[:, None])[:, 0]
        ent = -(logp_all.exp() * logp_all).sum(-1)
    (logp.sum() + ent.sum()).backward()
    print(vm_hwm() - before)


def vm_hwm() -> int:
    """Peak resident memory of this process in bytes (VmHWM restarts at exec, unlike ru_maxrss)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory(mode, N, V, C):
    out = subprocess.run([sys.executable, __file__, "--memory-child", mode, str(N), str(V), str(C)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run_bench(reps: int = 3):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    path = M.default_model_path()
    ours, _ = M.load_model(path, tokenizer=False)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ours.train(), hf.train()
    V = ours.cfg.vocab_size
    print(f"embedded default ({path}), fp32, CPU threads={torch.get_num_threads()}, median of {reps} interleaved reps")
    configs = [("equal lengths 8 x 128", [128] * 8),
               ("mixed lengths 8 seqs, 16..256", [256, 20, 150, 48, 32, 100, 16, 75])]
    for name, lengths in configs:
        ours_tps, hf_tps, pad = throughput(ours, hf, lengths, reps, V)
        ideal = 1 / (1 - pad)
        print(f"fwd+bwd {name:32s} ours {ours_tps:8.0f} tok/s | transformers {hf_tps:8.0f} tok/s | "
              f"padding {pad:.0%} (ideal packed gain {ideal:.2f}x) | {ours_tps / hf_tps:.2f}x")
    N, C = 4096, ours.cfg.hidden_size
    chunked, full = peak_memory("chunked", N, V, C), peak_memory("full", N, V, C)
    print(f"logprob+entropy fwd+bwd peak extra memory, N={N} V={V} chunk 512: chunked {chunked / 2**20:.0f} MiB | "
          f"full [N, V] log_softmax {full / 2**20:.0f} MiB | {full / chunked:.1f}x lower")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        peak_memory_child(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("--reps", type=int, default=3)
        run_bench(parser.parse_args().reps)
