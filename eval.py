"""Offline evaluation: pass@1 over k samples, unbiased pass@k and maj@k on the math benchmarks in data/.

For every problem of every benchmark (data/<name>.jsonl; `gsm8k` means data/gsm8k_test.jsonl) k responses
are sampled with rollout.py at the papers' protocol (recipes.EVAL_PROTOCOL: k = 32 on AIME24/25, 4 on AMC23,
16 elsewhere, `--k paper`; temperature 0.6, top-p 1.0), the final answer is taken
from the last \\boxed{} and judged against the gold answer by reward.py (sympy equivalence under a time
limit; OlympiadBench rows with `multiple_answers` are judged as answer lists). With c of the n = k samples
of a problem correct:

    pass@1 = mean over problems of c / n
    pass@j = mean over problems of 1 - C(n-c, j) / C(n, j)          (unbiased, Chen et al. 2021)
             computed as 1 - prod_{i=n-c+1..n} (1 - j / i) so no binomial coefficient is ever formed;
             it is 1 when n - c < j. The table's pass@k is j = n; results.json adds j = 2, 4, 8, ... < n.
    maj@k  = fraction of problems whose majority answer is correct. Extracted answers are grouped
             greedily in sample order: an answer joins the first group whose representative (the group's
             first answer) it equals as a string or reward.is_equiv's, else it opens a new group; samples
             with no extracted answer do not vote. Tie rule: among the groups with the most votes, the
             one whose representative came first (lowest sample index) wins. The problem counts as solved
             when that representative sample was judged correct; no answers at all counts as wrong.
    length = mean response length in tokens over all samples; truncated = fraction that hit max_new_tokens.
The avg column is the unweighted mean over benchmarks, as in the papers' Table 1.

Determinism and data parallel: each benchmark's problems are cut into chunks of `problems_per_call`
consecutive problems; a chunk is sampled by one generate call (problems_per_call x k rows) with
seed = sha256(seed, benchmark, the chunk's ids), and chunk i goes to rank i % world_size. A chunk's samples
depend neither on the rank nor on the number of ranks, so `torchrun --nproc_per_node W eval.py ...`
reports the same numbers as one process with the same seed and problems_per_call (on the same device,
--precision and --attn; CPU BLAS and GPU kernels differ in the last bits). Changing problems_per_call changes the
batches and therefore the samples. Per-problem results are summed in problem order, not gather order.

GPU path and the sampler: the model is loaded in --precision (auto: bf16 on CUDA, fp32 on CPU; RoPE frequencies
stay fp32 either way, model.py), attends with --attn (attention.py: auto = PyTorch's FlashAttention on CUDA in
bf16, else SDPA; a backend that cannot run on the device is refused before the model loads), and decodes with
--decode (rollout.EngineConfig: auto = CUDA graphs on CUDA, eager on CPU; static = the graph's step without the
graph). ONE rollout.Sampler serves every chunk, so its KV pool (on CUDA at most --kv-memory-fraction of the free
memory, grown when a chunk needs more, never reserved per call) and its captured decode graphs persist across
generate calls. A chunk's samples do not depend on what the sampler did before (a row's draws depend on seed,
sample and position only, and a call uses only the pages it needs): on CPU they equal a fresh sampler's exactly
(tests/test_eval.py).

Files in --out-dir: config.json; samples.jsonl (samples.rank<r>.jsonl under torchrun), one line per
sample (benchmark, id, sample_index, response, answer, gold, correct, length, finish_reason), written and
flushed as each chunk finishes; results.json (the table's numbers and the settings that produced them).
--resume keeps every saved (benchmark, id, sample_index) and samples only the chunks with missing
entries, with the chunk's own seed, so the regenerated samples are the ones that were lost. Without
--resume an out dir that already holds samples is refused rather than overwritten.

Deviations from the papers: max_new_tokens defaults to 512 (32768 in the papers) so that CPU runs end;
answers come from \\boxed{} only unless --answer-fallbacks.

Validation during training (on problems held out of the training data) is validation.py, over evaluate().
A .jsonl benchmark is read as training reads data (problems.load_problems): a malformed line is skipped and
named by file and line.

Run:
    python eval.py --model PATH|default --benchmarks math500,aime24,aime25,amc23,minerva,olympiadbench,gsm8k --k 16
    python eval.py --benchmarks gsm8k --limit 50 --k 4 --max-new-tokens 256
    python eval.py --benchmarks aime24,math500 --k aime24:32,math500:4 --out-dir runs/eval --resume
    torchrun --nproc_per_node 8 eval.py --model PATH --benchmarks math500 --k 16 --max-new-tokens 32768
    python eval.py --model PATH --precision fp32 --attn sdpa --decode eager   # the CPU twin's numerics on a GPU
"""
import argparse
import dataclasses
import glob
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from attention import BACKENDS, resolve_backend
from cli import add_dataclass_args, dataclass_from_args, flag
from distributed import dist_cleanup, dist_init
from model import load_model
from problems import PromptConfig, build_prompt, load_problems, stop_strings
from recipes import EVAL_PROTOCOL, paper_k
from reward import extract_answer, is_equiv
from rollout import DECODE_MODES, EngineConfig, Sampler, SamplingParams

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BENCHMARK_FILES = {"math500": "math500.jsonl", "aime24": "aime24.jsonl", "aime25": "aime25.jsonl",
                   "amc23": "amc23.jsonl", "minerva": "minerva.jsonl", "olympiadbench": "olympiadbench.jsonl",
                   "gsm8k": "gsm8k_test.jsonl"}
RUN_CONTROL_FIELDS = ("out_dir", "resume", "progress")  # change how a run is driven, never its numbers
SELECTION_FIELDS = ("benchmarks", "k", "limit")  # may change on --resume (saved samples are reused)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class EvalConfig:
    model: str = "default"  # HF-format checkpoint folder, or "default" (the embedded SmolLM2-135M-Instruct)
    benchmarks: str = "math500"  # comma-separated: math500,aime24,aime25,amc23,minerva,olympiadbench,gsm8k or .jsonl paths
    k: str = "paper"  # samples per problem: "paper" (AIME 32, AMC23 4, else 16), "16", "aime24:32,paper", "4,amc23:8"
    limit: Optional[int] = None  # evaluate only the first N problems of each benchmark
    temperature: float = EVAL_PROTOCOL["temperature"]  # sampling temperature (the papers' 0.6)
    top_p: float = EVAL_PROTOCOL["top_p"]  # nucleus sampling threshold (1.0 = off, the papers')
    top_k: int = 0  # sample among the k most likely tokens (0 = off)
    max_new_tokens: int = 512  # response length limit (32768 in the papers; small so CPU runs end)
    template: str = "auto"  # prompt template (problems.PromptConfig): auto = the tokenizer's chat template if any
    answer_fallbacks: bool = False  # also accept "the answer is X" when a response has no \boxed{}
    equiv_timeout: float = 1.0  # seconds allowed per sympy equivalence check
    seed: int = 0  # base seed; chunk seed = sha256(seed, benchmark, problem ids)
    problems_per_call: int = 16  # problems per generate call (problems_per_call x k rows; the unit of writing and resume)
    max_num_seqs: int = 256  # rows decoded at once (rollout.EngineConfig)
    kv_budget_tokens: int = 0  # KV pool size in tokens (rollout.EngineConfig); 0 = enough for every active row
    kv_memory_fraction: float = 0.3  # CUDA, kv_budget_tokens 0: the KV pool takes at most this share of free memory
    precision: str = "auto"  # auto | fp32 | bf16: the model's dtype (auto: bf16 on CUDA, fp32 on CPU)
    attn: str = "auto"  # attention backend: auto | torch-flash | flash-attn | sdpa (auto: torch-flash on CUDA in bf16)
    decode: str = "auto"  # decode step: auto (CUDA graphs on CUDA, eager on CPU) | eager | static | graph
    device: str = "auto"  # auto = cuda:LOCAL_RANK when CUDA is available, else cpu
    out_dir: str = "runs/eval"  # config.json, samples.jsonl and results.json go here
    resume: bool = False  # keep the samples already in out_dir and sample only what is missing
    progress: bool = True  # progress bar (rank 0)


class Completion(NamedTuple):
    text: str  # decoded response
    num_tokens: int  # response length in tokens
    finish_reason: str  # "stop" | "length"


SampleFn = Callable[[list, int, int], list]  # (problems, k, seed) -> per problem, k Completions


@dataclass
class Chunk:
    benchmark: str
    start: int  # index of the chunk's first problem within its benchmark
    problems: list
    k: int
    seed: int


# ----------------------------------------------------------------------------- metrics (pure functions)

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(answers: list, equiv: Callable[[str, str], bool]) -> Optional[int]:
    """Sample index of the representative of the winning answer group (None when nothing was extracted).

    Greedy grouping in sample order; most votes wins, ties go to the group that appeared first.
    """
    groups = []  # [representative sample index, votes]
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            representative = answers[group[0]]
            if answer == representative or equiv(answer, representative):
                group[1] += 1
                break
        else:
            groups.append([i, 1])
    if not groups:
        return None
    return max(groups, key=lambda g: (g[1], -g[0]))[0]


def problem_summary(records: list, equiv: Callable[[str, str], bool]) -> dict:
    """One problem's k scored samples (sorted by sample index) -> counts the benchmark metrics are made of."""
    winner = majority_vote([r["answer"] for r in records], equiv)
    return {"num_samples": len(records), "num_correct": sum(r["correct"] for r in records),
            "majority_correct": winner is not None and records[winner]["correct"],
            "total_tokens": sum(r["length"] for r in records),
            "num_truncated": sum(r["finish_reason"] == "length" for r in records)}


def benchmark_metrics(summaries: list, k: int) -> dict:
    """Problem summaries of one benchmark (in problem order) -> pass@1, pass@k, maj@k, length, truncated."""
    num_problems, num_samples = len(summaries), sum(s["num_samples"] for s in summaries)
    pass_at = {j: sum(pass_at_k(s["num_samples"], s["num_correct"], j) for s in summaries) / num_problems
               for j in sorted({2 ** e for e in range(k.bit_length()) if 2 ** e < k} | {k})}
    return {"problems": num_problems, "k": k, "pass@1": pass_at[1], "pass@k": pass_at[k],
            "maj@k": sum(s["majority_correct"] for s in summaries) / num_problems,
            "response_length": sum(s["total_tokens"] for s in summaries) / num_samples,
            "truncated": sum(s["num_truncated"] for s in summaries) / num_samples,
            "pass_at": {str(j): value for j, value in pass_at.items()}}


AVERAGED = ("pass@1", "pass@k", "maj@k", "response_length", "truncated")


def average_metrics(per_benchmark: dict) -> dict:
    return {name: sum(m[name] for m in per_benchmark.values()) / len(per_benchmark) for name in AVERAGED}


# ----------------------------------------------------------------------------- benchmarks, k, chunks

def benchmark_path(name: str) -> str:
    if name in BENCHMARK_FILES:
        return os.path.join(DATA_DIR, BENCHMARK_FILES[name])
    if name.endswith(".jsonl") and os.path.isfile(name):
        return name
    raise ValueError(f"unknown benchmark {name!r} (available: {', '.join(BENCHMARK_FILES)}, or a .jsonl path)")


def load_benchmarks(spec: str, limit: Optional[int] = None) -> dict:
    """"math500,gsm8k" -> {benchmark name: its first `limit` problems}; a .jsonl path is named by its stem."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names or (limit is not None and limit < 1):
        raise ValueError(f"want at least one benchmark and --limit >= 1, got {spec!r} and {limit}")
    paths = [benchmark_path(name) for name in names]  # every name is checked before any file is read
    problems_by_benchmark = {}
    for name, path in zip(names, paths):
        key = name if name in BENCHMARK_FILES else os.path.splitext(os.path.basename(path))[0]
        problems_by_benchmark[key] = load_problems(path, verbose=False)[:limit]  # bad rows skipped and named
    return problems_by_benchmark


def parse_k(spec: str, benchmarks: list) -> dict:
    """"16" -> 16 for all; "aime24:32,math500:4" -> per benchmark; a bare number is the default for the rest;
    "paper" -> the papers' k of each benchmark not named (recipes.paper_k)."""
    default, per_benchmark = None, {}
    for part in (p.strip() for p in str(spec).split(",")):
        name, _, value = part.rpartition(":")
        if part == "paper":
            default = paper_k
            continue
        if not value.isdigit() or int(value) < 1 or (":" in part and not name):
            raise ValueError(f"--k: bad part {part!r} (want N, benchmark:N with N >= 1 or 'paper', e.g. "
                             "aime24:32,math500:4)")
        if not name:
            default = int(value)
        elif name not in benchmarks:
            raise ValueError(f"--k: {name!r} is not one of the benchmarks being evaluated ({', '.join(benchmarks)})")
        else:
            per_benchmark[name] = int(value)
    missing = [b for b in benchmarks if b not in per_benchmark and default is None]
    if missing:
        raise ValueError(f"--k gives no sample count for {', '.join(missing)} (add a bare number as default)")
    return {b: per_benchmark.get(b, default(b) if callable(default) else default) for b in benchmarks}


def chunk_seed(seed: int, benchmark: str, ids: list) -> int:
    text = json.dumps([seed, benchmark, [str(i) for i in ids]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def make_chunks(problems_by_benchmark: dict, k_by_benchmark: dict, problems_per_call: int, seed: int) -> list:
    if problems_per_call < 1:
        raise ValueError(f"problems_per_call must be >= 1, got {problems_per_call}")
    chunks = []
    for benchmark, problems in problems_by_benchmark.items():
        if len({str(p.id) for p in problems}) != len(problems):  # ids key the samples file and resume
            raise ValueError(f"{benchmark}: problem ids are not unique")
        for start in range(0, len(problems), problems_per_call):
            part = problems[start:start + problems_per_call]
            chunks.append(Chunk(benchmark, start, part, k_by_benchmark[benchmark],
                                chunk_seed(seed, benchmark, [p.id for p in part])))
    return chunks


# ----------------------------------------------------------------------------- sampling and scoring

def model_dtype(precision: str, device) -> torch.dtype:
    """--precision -> the model's dtype: auto = bf16 on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def engine_config(cfg: EvalConfig) -> EngineConfig:
    return EngineConfig(max_num_seqs=cfg.max_num_seqs, kv_budget_tokens=cfg.kv_budget_tokens,
                        kv_memory_fraction=cfg.kv_memory_fraction, decode=cfg.decode)


def check_config(cfg: EvalConfig, device=None) -> None:
    """One ValueError naming every flag the model and the sampler would refuse later (before the model loads).
    With device: also whether --attn, --precision and --decode can run there."""
    def bad_number(name, ok):
        value = getattr(cfg, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return not number or not ok(value)
    rules = [("max_new_tokens", lambda v: v >= 1, ">= 1"), ("max_num_seqs", lambda v: v >= 1, ">= 1"),
             ("problems_per_call", lambda v: v >= 1, ">= 1"), ("kv_budget_tokens", lambda v: v >= 0, ">= 0"),
             ("top_k", lambda v: v >= 0, ">= 0"), ("temperature", lambda v: v >= 0, ">= 0"),
             ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"), ("kv_memory_fraction", lambda v: 0 < v <= 1, "in (0, 1]"),
             ("equiv_timeout", lambda v: v > 0, "> 0")]
    bad = [f"{flag(name)} {getattr(cfg, name)!r}: must be {rule}" for name, ok, rule in rules if bad_number(name, ok)]
    for name, choices in (("precision", PRECISIONS), ("attn", BACKENDS), ("decode", DECODE_MODES)):
        if getattr(cfg, name) not in choices:
            bad.append(f"{flag(name)} {getattr(cfg, name)!r}: must be one of {', '.join(choices)}")
    if not bad and device is not None:
        device = torch.device(device)
        try:
            resolve_backend(cfg.attn, device.type, model_dtype(cfg.precision, device))
        except ValueError as e:
            bad.append(f"--attn {cfg.attn}: {e}")
        if cfg.decode == "graph" and device.type != "cuda":
            bad.append(f"--decode graph needs CUDA (the device is {device}; 'static' is the same step without graphs)")
    if bad:
        raise ValueError("; ".join(bad))


def make_sampler(model, tokenizer, cfg: EvalConfig, sampler: Optional[Sampler] = None) -> SampleFn:
    """The default sample_fn: prompts by problems.build_prompt, k samples each from ONE rollout.Sampler (the
    given one, or Sampler(model, engine_config(cfg))) whose KV pool and decode graphs serve every call.
    The sampler is kept as the function's `sampler` attribute."""
    if tokenizer is None:
        raise ValueError(f"{getattr(model, 'name_or_path', 'model')}: no tokenizer files; eval needs a tokenizer")
    if sampler is not None and sampler.model is not model:
        raise ValueError("eval: the sampler given samples another model than the one to evaluate")
    sampler = sampler or Sampler(model, engine_config(cfg))
    prompt_cfg = PromptConfig(template=cfg.template)

    def sample(problems: list, k: int, seed: int) -> list:
        texts = [build_prompt(p, tokenizer, prompt_cfg) for p in problems]
        prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                max_new_tokens=cfg.max_new_tokens, n=k, seed=seed,  # rollout adds the EOS stop
                                stop_strings=stop_strings(prompt_cfg, problems))
        with torch.no_grad():
            samples, _ = sampler.generate(prompts, params, tokenizer)
        responses = tokenizer.batch_decode([s.token_ids for s in samples], skip_special_tokens=True)
        return [[Completion(responses[i * k + j], len(samples[i * k + j].token_ids), samples[i * k + j].finish_reason)
                 for j in range(k)] for i in range(len(problems))]
    sample.sampler = sampler
    return sample


def score_completion(benchmark: str, problem, sample_index: int, completion: Completion, cfg: EvalConfig) -> dict:
    answer = extract_answer(completion.text, fallbacks=cfg.answer_fallbacks)
    multiple = getattr(problem, "multiple_answers", False)
    correct = answer is not None and is_equiv(answer, problem.answer, timeout=cfg.equiv_timeout, multiple_answers=multiple)
    return {"benchmark": benchmark, "id": str(problem.id), "sample_index": sample_index, "response": completion.text,
            "answer": answer, "gold": problem.answer, "correct": bool(correct), "length": int(completion.num_tokens),
            "finish_reason": completion.finish_reason}


# ----------------------------------------------------------------------------- output folder

def samples_file(out_dir: str, rank: int, world_size: int) -> str:
    return os.path.join(out_dir, "samples.jsonl" if world_size == 1 else f"samples.rank{rank}.jsonl")


def read_saved_samples(out_dir: str) -> dict:
    """{(benchmark, id, sample_index): record} from every samples*.jsonl; a half-written last line is skipped."""
    saved = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "samples*.jsonl"))):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                    saved[(record["benchmark"], record["id"], record["sample_index"])] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
    return saved


def prepare_out_dir(out_dir: str, cfg: EvalConfig, rank: int, world_size: int) -> dict:
    """Refuse to overwrite, check --resume settings, write config.json; -> the saved samples (or {})."""
    os.makedirs(out_dir, exist_ok=True)
    existing = glob.glob(os.path.join(out_dir, "samples*.jsonl"))
    config_path = os.path.join(out_dir, "config.json")
    if existing and not cfg.resume:
        raise ValueError(f"{out_dir} already holds samples from a run: pass --resume to continue it, or another --out-dir")
    saved = {}
    if cfg.resume and os.path.exists(config_path):
        with open(config_path) as f:
            old = json.load(f)
        ignored, defaults = RUN_CONTROL_FIELDS + SELECTION_FIELDS, dataclasses.asdict(EvalConfig())
        # a field newer than the saved config.json reads as its default (what the older code did)
        changed = [f"{name}={old.get(name, defaults[name])!r} -> {value!r}" for name, value in
                   dataclasses.asdict(cfg).items() if name not in ignored and old.get(name, defaults[name]) != value]
        if changed:
            raise ValueError(f"--resume with settings that change the samples ({'; '.join(changed)}): "
                             f"use the saved settings or another --out-dir")
    if cfg.resume:
        saved = read_saved_samples(out_dir)
    if world_size > 1:
        dist.barrier()  # every rank has looked at the folder before rank 0 writes into it
    if rank == 0:
        write_json(config_path, dataclasses.asdict(cfg))
    return saved


def write_json(path: str, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def open_samples_writer(path: str):
    ends_mid_line = os.path.exists(path) and os.path.getsize(path) > 0 and open(path, "rb").read()[-1:] != b"\n"
    writer = open(path, "a")
    if ends_mid_line:  # killed mid-write: start the next record on its own line
        writer.write("\n")
    return writer


# ----------------------------------------------------------------------------- evaluation

def evaluate(sample_fn: SampleFn, problems_by_benchmark: dict, cfg: EvalConfig, out_dir: Optional[str] = None,
             rank: int = 0, world_size: int = 1) -> dict:
    """Sample, score and summarise; rank r handles chunks r, r+W, ...; every rank returns the full results.

    sample_fn(problems, k, seed) -> for each problem, k Completion(text, num_tokens, finish_reason).
    With out_dir, samples are appended to its samples file as produced and rank 0 writes results.json.
    """
    k_by_benchmark = parse_k(cfg.k, list(problems_by_benchmark))
    chunks = make_chunks(problems_by_benchmark, k_by_benchmark, cfg.problems_per_call, cfg.seed)
    my_chunks = chunks[rank::world_size]
    saved = prepare_out_dir(out_dir, cfg, rank, world_size) if out_dir is not None else {}
    writer = open_samples_writer(samples_file(out_dir, rank, world_size)) if out_dir is not None else None
    bar = tqdm(total=sum(len(c.problems) * c.k for c in my_chunks), desc="eval", unit="sample",
               disable=not cfg.progress or rank != 0, dynamic_ncols=True)
    summaries = []  # (benchmark, problem index, summary)
    try:
        for chunk in my_chunks:
            keys = [(chunk.benchmark, str(p.id), j) for p in chunk.problems for j in range(chunk.k)]
            records = [saved.get(key) for key in keys]
            if any(record is None for record in records):
                completions = sample_fn(chunk.problems, chunk.k, chunk.seed)
                if len(completions) != len(chunk.problems) or any(len(c) != chunk.k for c in completions):
                    raise ValueError(f"sample_fn returned {[len(c) for c in completions]} completions for "
                                     f"{len(chunk.problems)} problems x k={chunk.k}")
                for index in range(len(keys)):
                    if records[index] is None:
                        i, j = divmod(index, chunk.k)
                        completion = Completion(*completions[i][j])
                        records[index] = score_completion(chunk.benchmark, chunk.problems[i], j, completion, cfg)
                        if writer is not None:
                            writer.write(json.dumps(records[index], ensure_ascii=False) + "\n")
                if writer is not None:
                    writer.flush()
            for i, problem in enumerate(chunk.problems):
                multiple = getattr(problem, "multiple_answers", False)
                equiv = lambda a, b: is_equiv(a, b, timeout=cfg.equiv_timeout, multiple_answers=multiple)
                summary = problem_summary(records[i * chunk.k:(i + 1) * chunk.k], equiv)
                summaries.append((chunk.benchmark, chunk.start + i, summary))
            bar.update(len(keys))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, summaries)
        summaries = [s for rank_summaries in gathered for s in rank_summaries]
    order = {name: i for i, name in enumerate(problems_by_benchmark)}
    summaries.sort(key=lambda s: (order[s[0]], s[1]))  # sum in problem order: same floats for any world size
    per_benchmark = {name: benchmark_metrics([s for b, _, s in summaries if b == name], k_by_benchmark[name])
                     for name in problems_by_benchmark}
    results = {"config": {n: v for n, v in dataclasses.asdict(cfg).items() if n not in RUN_CONTROL_FIELDS},
               "benchmarks": per_benchmark, "average": average_metrics(per_benchmark)}
    if out_dir is not None and rank == 0:
        write_json(os.path.join(out_dir, "results.json"), results)
    return results


def format_table(results: dict) -> str:
    """Benchmarks as columns (as in the papers' Table 1), metrics as rows, percentages for rates."""
    per_benchmark, average = results["benchmarks"], results["average"]
    columns = list(per_benchmark) + ["avg"]
    rows = [("k", lambda m: f"{m['k']}" if "k" in m else ""),
            ("problems", lambda m: f"{m['problems']}" if "problems" in m else ""),
            ("pass@1 (%)", lambda m: f"{100 * m['pass@1']:.1f}"),
            ("pass@k (%)", lambda m: f"{100 * m['pass@k']:.1f}"),
            ("maj@k (%)", lambda m: f"{100 * m['maj@k']:.1f}"),
            ("length (tokens)", lambda m: f"{m['response_length']:.1f}"),
            ("truncated (%)", lambda m: f"{100 * m['truncated']:.1f}")]
    width = max(9, *(len(c) + 2 for c in columns))
    lines = [f"{'':16}" + "".join(f"{c:>{width}}" for c in columns)]
    for label, cell in rows:
        lines.append(f"{label:16}" + "".join(f"{cell(per_benchmark.get(c, average)):>{width}}" for c in columns))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def run(cfg: EvalConfig) -> dict:
    check_config(cfg)
    problems_by_benchmark = load_benchmarks(cfg.benchmarks, cfg.limit)  # input errors show before the model loads
    parse_k(cfg.k, list(problems_by_benchmark))
    rank, world_size, device, is_dist = dist_init(cfg.device)
    try:
        check_config(cfg, device)
        if rank == 0:
            print(json.dumps(dataclasses.asdict(cfg)), flush=True)
        dtype = model_dtype(cfg.precision, device)
        model, tokenizer = load_model(cfg.model, device=device, dtype=dtype)
        model.attn_backend = cfg.attn
        sample_fn = make_sampler(model, tokenizer, cfg)
        start = time.time()
        results = evaluate(sample_fn, problems_by_benchmark, cfg, cfg.out_dir, rank, world_size)
        if rank == 0:
            backend = resolve_backend(cfg.attn, device.type, dtype)
            print(f"model {model.name_or_path} ({str(dtype).removeprefix('torch.')}, attention {backend}, decode "
                  f"{sample_fn.sampler.mode}); temperature {cfg.temperature}, top-p {cfg.top_p}, "
                  f"max new tokens {cfg.max_new_tokens}, seed {cfg.seed}")
            print(format_table(results))
            print(f"wall time {time.time() - start:.1f} s on {world_size} x {device}; "
                  f"results in {os.path.join(cfg.out_dir, 'results.json')}")
        return results
    finally:
        dist_cleanup(is_dist)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, EvalConfig)
    cfg = dataclass_from_args(EvalConfig, parser.parse_args(argv))
    try:
        run(cfg)
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
