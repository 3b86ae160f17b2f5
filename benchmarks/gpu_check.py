"""The one-command GPU acceptance run: CUDA tests, sampler speed against the HBM floor and transformers, training
MFU, and a torchrun train/checkpoint/resume, printed as one table.

    python benchmarks/gpu_check.py                  # one CUDA GPU, < 8 minutes, nothing downloaded
    python benchmarks/gpu_check.py --device cpu     # the same table on tiny shapes (CI's rehearsal, < 2 minutes)
    python benchmarks/gpu_check.py --only sampler --new-tokens 256   # one section, shorter

Models are random-initialised from configs of real shapes (Qwen2.5-1.5B; tiny ones on CPU), so only PyTorch and
transformers are needed. Sections (each runs even when an earlier one failed; a failure is a row of the table):
  tests     pytest tests/test_cuda.py (+ tests/test_gpu_path.py on CUDA): pass / fail / skip per test.
  ceilings  memory bandwidth (a device-to-device copy: bytes read + written over time) and the peak matmul rate
            (one large bf16 GEMM; fp32 on CPU).
  sampler   rollout.py at batch 64 and 256 (CPU: 4 and 8), prompts ~512 tokens, 1024 new tokens, EOS ignored:
            eager vs CUDA-graph decode (CPU: eager vs the static step), and transformers `generate` on the same
            weights. HBM floor = generated tokens / (sum over steps of (weight bytes + the KV bytes of every row's
            context) / bandwidth); each rate is given as a % of it.
  train     packed micro-batches (16 x 1024 tokens; CPU: 4 x 64) of the same model through the trainer's FSDP2
            bf16 path on one rank: tokens/s and MFU = 6 x params x tokens / time / peak, with and without
            activation checkpointing.
  torchrun  `torchrun --nproc_per_node 1 train.py` on a tiny model: 2 steps with checkpoints, then --resume auto
            to step 3; checks the resumed run's metrics and the checkpoint's loadability in transformers.
Targets (issue): graph decode at batch 256 >= 40% of the HBM floor and >= 3x transformers; training >= 35% MFU.
--out DIR (default $OUT when set) also writes gpu_check.json there.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import attention  # noqa: E402
import model as M  # noqa: E402
import rollout as R  # noqa: E402

QWEN25_1_5B = dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                   rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
TINY = dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
            rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
ROWS = []  # (section, check, value, target, status)


def row(section, check, value, target="", status="info"):
    ROWS.append((section, check, value, target, status))
    print(f"  [{section}] {check}: {value} {('(target ' + target + ')') if target else ''} {status}", flush=True)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- models

def model_pair(shape: dict, device, dtype, hf_too: bool = True):
    """A random transformers model of `shape` and our model with the same weights (HF None unless hf_too)."""
    import transformers
    config = transformers.Qwen2Config(**{k: v for k, v in shape.items() if k != "model_type"})
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    state = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    ours = M.build_model({**config.to_dict(), "model_type": "qwen2"}, state, device, dtype)
    if not hf_too:
        del hf
        return ours, None
    return ours, hf


def tiny_tokenizer(folder: str):
    """A small byte-level BPE tokenizer made here (the GPU box has no tokenizer files and no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["Question: What is 3 + 5?\nAnswer: 3 + 5 = 8. The answer is \\boxed{8}.", "0123456789 + - * = ( )"] * 50
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


# ----------------------------------------------------------------------------- sections

def section_tests(args, device):
    files = ["tests/test_cuda.py", "tests/test_plot.py::test_update_metrics_with_the_stats_on_the_gpu_equals_the_host",
             "tests/test_eval.py::test_cuda_eval_runs_in_bf16_with_graph_decode_and_one_sampler"]
    files += ["tests/test_gpu_path.py"] if device.type == "cuda" else []  # their CPU twins, on the GPU box's versions
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "junit.xml")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                               *files], cwd=ROOT, capture_output=True, text=True, timeout=args.tests_timeout)
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            outcome = {"failure": "failed", "error": "failed"}.get(outcome, outcome)
            counts[outcome] += 1
            if outcome == "failed" or device.type == "cuda":
                row("tests", case.get("name"), outcome, "passed", "ok" if outcome == "passed" else
                    ("FAIL" if outcome == "failed" else "skip"))
    if proc.returncode not in (0, 5):
        print(proc.stdout[-4000:], proc.stderr[-2000:])
    row("tests", "summary", f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped",
        "0 failed", "ok" if counts["failed"] == 0 else "FAIL")


def section_ceilings(args, device, results):
    n = (1 << 30) if device.type == "cuda" else (1 << 25)  # 2 GB of bf16 / 32 MB of fp32
    src = torch.empty(n, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = statistics.median(timed(lambda: dst.copy_(src), device) for _ in range(10))
    results["bandwidth"] = 2 * src.nbytes / seconds
    row("ceilings", "memory bandwidth (copy)", f"{results['bandwidth'] / 1e9:.0f} GB/s")
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    seconds = statistics.median(timed(lambda: a @ b, device) for _ in range(10))
    results["peak_flops"] = 2 * size ** 3 / seconds
    row("ceilings", f"peak matmul ({str(dtype).removeprefix('torch.')} {size}^3)", f"{results['peak_flops'] / 1e12:.3g} TFLOP/s")


def hbm_floor_tok_s(ours, batch, prompt_len, new_tokens, bandwidth):
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    cfg = ours.cfg
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * ours.embed_tokens.weight.element_size()
    step_bytes = sum(weight_bytes + batch * (prompt_len + t) * kv_per_token for t in range(new_tokens))
    return batch * new_tokens / (step_bytes / bandwidth)


def section_sampler(args, device, results):
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    ours, hf = model_pair(QWEN25_1_5B if cuda else TINY, device, dtype)
    prompt_len, new_tokens = (512, args.new_tokens) if cuda else (32, 16)
    batches = [64, 256] if cuda else [4, 8]
    fast_mode = "graph" if cuda else "static"
    g = torch.Generator().manual_seed(0)
    for batch in batches:
        prompts = [torch.randint(2, ours.cfg.vocab_size, (prompt_len + int(torch.randint(-32, 33, (1,), generator=g)),),
                                 generator=g).tolist() for _ in range(batch)]
        params = R.SamplingParams(temperature=1.0, max_new_tokens=new_tokens, ignore_eos=True, seed=1)
        floor = hbm_floor_tok_s(ours, batch, prompt_len, new_tokens, results["bandwidth"])
        rates = {}
        for mode in ("eager", fast_mode):
            sampler = R.Sampler(ours, R.EngineConfig(max_num_seqs=batch, decode=mode))
            sampler.generate(prompts[:2], R.SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm-up, captures
            seconds = timed(lambda: sampler.generate(prompts, params), device)
            rates[mode] = batch * new_tokens / seconds
            del sampler
            torch.cuda.empty_cache() if cuda else None
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        hf_run = lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0)
        with torch.no_grad():
            rates["transformers"] = batch * new_tokens / timed(hf_run, device)
        for mode, rate in rates.items():
            target, status = "", "info"
            if mode == fast_mode and batch == batches[-1] and cuda:  # tiny CPU shapes measure Python, not kernels
                target, status = ">= 40% floor, >= 3x transformers", \
                    "ok" if rate >= 0.4 * floor and rate >= 3 * rates["transformers"] else "MISS"
            row("sampler", f"batch {batch} {mode}", f"{rate:,.0f} tok/s = {100 * rate / floor:.1f}% of floor "
                f"{floor:,.0f}; {rate / rates['transformers']:.2f}x transformers", target, status)
        results[f"sampler_{batch}"] = {**rates, "floor": floor}
    del ours, hf


def section_train(args, device, results):
    import torch.distributed as dist
    import distributed
    import update
    cuda = device.type == "cuda"
    if not dist.is_initialized():
        distributed.dist_init(str(device), one_rank_group=True)
    ours, _ = model_pair(QWEN25_1_5B if cuda else TINY, device, torch.float32, hf_too=False)
    params = sum(p.numel() for p in ours.parameters())
    policy = distributed.shard_policy(ours, device, False, param_dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    rows, length = (16, 1024) if cuda else (4, 64)
    g = torch.Generator().manual_seed(0)
    segments = [(torch.randint(2, ours.cfg.vocab_size, (length // 4,), generator=g).tolist(),
                 [torch.randint(2, ours.cfg.vocab_size, (3 * length // 4 + 1,), generator=g).tolist()]) for _ in range(rows)]
    tokens = rows * length

    def step():
        logp, ent, mask = update.policy_logprobs(policy, segments, 1.0, device)
        (-(logp * mask).sum() / mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for checkpointing in (False, True):
        policy.activation_checkpointing = checkpointing
        step()
        peak = 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds = statistics.median(timed(step, device) for _ in range(args.train_steps))
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
        mfu = 6 * params * tokens / seconds / results["peak_flops"]
        label = "with" if checkpointing else "without"
        row("train", f"{rows} x {length} packed, {label} activation checkpointing",
            f"{tokens / seconds:,.0f} tok/s, MFU {100 * mfu:.1f}%, peak {peak:.1f} GiB", ">= 35% MFU" if cuda and not checkpointing else "",
            ("ok" if mfu >= 0.35 else "MISS") if cuda and not checkpointing else "info")
        results[f"train_{label}_ckpt"] = {"tok_s": tokens / seconds, "mfu": mfu}
    del policy, optimizer


def section_torchrun(args, device):
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, out = os.path.join(tmp, "tiny"), os.path.join(tmp, "run")
        ours, hf = model_pair({**TINY, "vocab_size": 300}, torch.device("cpu"), torch.float32)
        hf.save_pretrained(model_dir)
        tiny_tokenizer(model_dir)
        base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", os.path.join(ROOT, "train.py"),
                "--model", model_dir, "--data", "arith", "--out-dir", out, "--group-size", "4", "--prompts-per-step", "2",
                "--max-new-tokens", "16", "--no-dynamic-sampling", "--save-every", "1", "--preset", "cpu",
                "--curriculum", "none", "--eval-every", "0"]
        first = subprocess.run(base + ["--total-steps", "2"], capture_output=True, text=True, timeout=300)
        second = subprocess.run(base + ["--total-steps", "3", "--resume", "auto"], capture_output=True, text=True, timeout=300)
        rows = []
        if os.path.exists(os.path.join(out, "metrics.jsonl")):
            rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]
        steps = [r["step"] for r in rows if "grad_norm" in r]
        loadable = False
        ckpts = sorted(os.listdir(os.path.join(out, "checkpoints"))) if os.path.isdir(os.path.join(out, "checkpoints")) else []
        if ckpts:
            from transformers import AutoModelForCausalLM
            AutoModelForCausalLM.from_pretrained(os.path.join(out, "checkpoints", ckpts[-1], "policy"))
            loadable = True
        ok = first.returncode == 0 and second.returncode == 0 and steps == [1, 2, 3] and loadable
        if not ok:
            print(first.stdout[-3000:], first.stderr[-3000:], second.stdout[-3000:], second.stderr[-3000:])
        row("torchrun", "1-process train 2 steps, resume to 3",
            f"exit {first.returncode}/{second.returncode}, steps {steps}, last checkpoint {ckpts[-1] if ckpts else None} "
            f"{'loads' if loadable else 'missing'} in transformers", "trains, checkpoints, resumes", "ok" if ok else "FAIL")


SECTIONS = ("tests", "ceilings", "sampler", "train", "torchrun")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})")
    parser.add_argument("--new-tokens", type=int, default=1024, help="sampler: tokens generated per row (CUDA)")
    parser.add_argument("--train-steps", type=int, default=3, help="train: timed steps per configuration")
    parser.add_argument("--tests-timeout", type=int, default=240, help="tests: seconds before pytest is stopped")
    parser.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for gpu_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available (use --device cpu for the rehearsal)")
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        sys.exit(f"error: unknown sections {sorted(unknown)} (choose from {', '.join(SECTIONS)})")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}", flush=True)
    import transformers
    print(f"transformers {transformers.__version__}; attention: torch-flash {attention.HAS_TORCH_FLASH} "
          f"(paged {attention.TORCH_FLASH_PAGED}), flash-attn {M.HAS_FLASH}", flush=True)
    results, started = {}, time.perf_counter()
    for name in SECTIONS:
        if name not in wanted:
            continue
        if name in ("sampler", "train") and "bandwidth" not in results:
            section_ceilings(args, device, results)
        print(f"== {name} ({time.perf_counter() - started:.0f} s)", flush=True)
        try:
            {"tests": lambda: section_tests(args, device), "ceilings": lambda: section_ceilings(args, device, results),
             "sampler": lambda: section_sampler(args, device, results), "train": lambda: section_train(args, device, results),
             "torchrun": lambda: section_torchrun(args, device)}[name]()
        except Exception as e:  # a broken section is a row of the table, not the end of the check
            traceback.print_exc()
            row(name, "section", f"{type(e).__name__}: {str(e)[:200]}", "", "FAIL")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n| section | check | value | target | status |\n| --- | --- | --- | --- | --- |")
    for r in ROWS:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; failures: {sum(r[4] == 'FAIL' for r in ROWS)}; "
          f"targets missed: {sum(r[4] == 'MISS' for r in ROWS)}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
            json.dump({"rows": ROWS, "results": results}, f, indent=1)
    sys.exit(1 if any(r[4] == "FAIL" for r in ROWS) else 0)


if __name__ == "__main__":
    main()
