"""eval.py: pass@k against subset enumeration, maj@k voting, stub samplers, resume, two ranks, the CLI."""
import itertools
import json
import math
import os
import shutil
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import eval as E
import validation as V

STUB_LENGTH = 7


def gold_sampler(problems, k, seed):
    return [[E.Completion(f"so the answer is \\boxed{{{p.answer}}}", STUB_LENGTH, "stop")] * k for p in problems]


def wrong_sampler(problems, k, seed):
    return [[E.Completion("the answer is \\boxed{-123456789}", STUB_LENGTH, "length")] * k for p in problems]


def seeded_sampler(problems, k, seed):
    """Deterministic in (seed, problem, sample): a mix of gold, "1/2", "0.5", "7" and no answer."""
    out = []
    for p in problems:
        row = []
        for j in range(k):
            pick = E.chunk_seed(seed, str(p.id), [j]) % 6
            text = ["\\boxed{%s}" % p.answer, "\\boxed{%s}" % p.answer, "\\boxed{1/2}", "\\boxed{0.5}",
                    "\\boxed{7}", "no answer"][pick]
            row.append(E.Completion(text, 3 + pick + j, "length" if pick == 5 else "stop"))
        out.append(row)
    return out


def problems(n_gsm=5, n_math=3):
    return {"gsm8k": E.load_benchmarks("gsm8k", n_gsm)["gsm8k"],
            "math500": E.load_benchmarks("math500", n_math)["math500"]}


def config(**overrides):
    return E.EvalConfig(**{"k": "4", "problems_per_call": 2, "progress": False, **overrides})


# ----------------------------------------------------------------------------- metrics

def test_pass_at_k_equals_subset_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert E.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_stable_for_large_n():
    for n, c, k in [(2000, 1, 1), (2000, 3, 100), (5000, 4000, 1000), (1000, 0, 10)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert E.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError):
        E.pass_at_k(4, 1, 5)


def test_majority_vote_groups_equivalent_answers():
    # "1/2" and "0.5" vote together (2 votes) and beat "3" (1 vote); counted as strings, "3" would win the tie
    assert E.majority_vote(["3", "1/2", "0.5"], E.is_equiv) == 1
    assert E.majority_vote(["3", None, "0.5", None, "\\frac{1}{2}"], E.is_equiv) == 2
    assert E.majority_vote([None, None], E.is_equiv) is None


def test_majority_vote_tie_goes_to_first_appearing_group():
    assert E.majority_vote(["3", "1/2", "0.5", "3"], E.is_equiv) == 0
    assert E.majority_vote(["0.5", "3", "3", "1/2"], E.is_equiv) == 0
    assert E.majority_vote(["8", "3", "1/2"], E.is_equiv) == 0


def test_problem_summary_maj_uses_the_winning_representative():
    records = [{"answer": a, "correct": ok, "length": n, "finish_reason": fr} for a, ok, n, fr in
               [("3", False, 10, "stop"), ("1/2", True, 20, "length"), ("0.5", True, 30, "stop"), ("3", False, 40, "stop"),
                ("0.5", True, 5, "stop")]]
    summary = E.problem_summary(records, E.is_equiv)
    assert summary == {"num_samples": 5, "num_correct": 3, "majority_correct": True, "total_tokens": 105,
                       "num_truncated": 1}
    metrics = E.benchmark_metrics([summary, {**summary, "num_correct": 0, "majority_correct": False}], 5)
    assert metrics["pass@1"] == pytest.approx((3 / 5 + 0) / 2)
    assert metrics["pass@k"] == pytest.approx(0.5) and metrics["maj@k"] == pytest.approx(0.5)
    assert metrics["pass_at"]["2"] == pytest.approx((1 - 1 / 10) / 2)  # 1 - C(2,2)/C(5,2), averaged with 0
    assert metrics["response_length"] == pytest.approx(21.0) and metrics["truncated"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- inputs

def test_parse_k():
    assert E.parse_k("16", ["a", "b"]) == {"a": 16, "b": 16}
    assert E.parse_k("aime24:32,math500:4", ["aime24", "math500"]) == {"aime24": 32, "math500": 4}
    assert E.parse_k("2,aime24:32", ["aime24", "gsm8k"]) == {"aime24": 32, "gsm8k": 2}
    with pytest.raises(ValueError, match="'aime24:x'"):
        E.parse_k("aime24:x,math500:4", ["aime24", "math500"])
    with pytest.raises(ValueError, match="'0'"):
        E.parse_k("0", ["aime24"])
    with pytest.raises(ValueError, match="no sample count for gsm8k"):
        E.parse_k("aime24:32", ["aime24", "gsm8k"])
    with pytest.raises(ValueError, match="'amc23' is not one of"):
        E.parse_k("4,amc23:8", ["aime24"])


def test_the_default_is_the_papers_evaluation_protocol():
    benchmarks = ["aime24", "aime25", "amc23", "math500", "gsm8k"]
    cfg = E.EvalConfig()
    assert (cfg.k, cfg.temperature, cfg.top_p) == ("paper", 0.6, 1.0)
    assert E.parse_k(cfg.k, benchmarks) == {"aime24": 32, "aime25": 32, "amc23": 4, "math500": 16, "gsm8k": 16}
    assert E.parse_k("paper,math500:4", ["amc23", "math500", "minerva"]) == {"amc23": 4, "math500": 4, "minerva": 16}
    assert E.parse_k("2,paper", ["aime24"]) == {"aime24": 32}  # the later default wins


def test_a_jsonl_benchmark_is_read_like_training_data(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    good = '{"id": "g%d", "problem": "p", "answer": "1"}\n'
    path.write_text(good % 1 + '{"id": "broken", "problem": \n' + good % 2 + good % 3)
    loaded = E.load_benchmarks(str(path))
    assert [p.id for p in loaded["mine"]] == ["g1", "g2", "g3"]
    assert "mine.jsonl line 2: bad JSON" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text("{not json\n[1]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: 2 of 2 rows unusable"):
        E.load_benchmarks(str(tmp_path / "bad.jsonl"))


def test_unknown_benchmark_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown benchmark 'math5000'.*math500, aime24, aime25, amc23"):
        E.load_benchmarks("gsm8k,math5000")
    loaded = E.load_benchmarks("gsm8k,olympiadbench", 700)
    assert len(loaded["gsm8k"]) == 700 and loaded["gsm8k"][0].answer == "18"
    assert any(p.multiple_answers for p in loaded["olympiadbench"])  # the flag reaches is_equiv


def test_validation_overlapping_the_training_data_is_an_error_that_names_it(tmp_path):
    from problems import Problem
    training = [Problem("a", "What is 2 + 2?", "4", None, "s"), Problem("b", "Find x.", "1", None, "s")]
    validation = [Problem("c", "  what is 2 +  2?", "4", None, "v"), Problem("b", "Other.", "1", None, "v"),
                  Problem("d", "New.", "1", None, "v")]
    with pytest.raises(ValueError, match=r"2 of 3 validation problems .*same id: \['b'\]; same problem text: "
                                         r"\[\"c \('  what is 2 \+  2\?'\)\"\]"):
        V.check_disjoint(validation, training)
    V.check_disjoint(validation[2:], training)  # no overlap: no error
    path = tmp_path / "val.jsonl"
    path.write_text('{"id": "v1", "problem": "Find X.", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"--eval-data .*val\.jsonl: 1 of 1 .*same problem text"):
        V.validation_set(training, 4, 0, str(path))


def test_held_out_validation_leaves_the_training_data_with_none_of_its_texts():
    from problems import load_problems
    arith = load_problems("arith", verbose=False)  # 1000 rows, many repeated texts ("What is 3 + 5?")
    kept, held_out = V.validation_set(arith, 32, seed=3)
    assert len(held_out) == 32 and len({p.id for p in held_out}) == 32
    held_texts = {" ".join(p.problem.lower().split()) for p in held_out}
    assert not held_texts & {" ".join(p.problem.lower().split()) for p in kept}
    assert [p for p in arith if p in kept] == kept and len(kept) == sum(
        " ".join(p.problem.lower().split()) not in held_texts for p in arith)
    assert V.validation_set(arith, 32, seed=3) == (kept, held_out)  # seeded


# ----------------------------------------------------------------------------- evaluate with stub samplers

def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_stub_gold_scores_100_and_wrong_scores_0(tmp_path):
    data = problems()
    results = E.evaluate(gold_sampler, data, config(), str(tmp_path / "gold"))
    for metrics in list(results["benchmarks"].values()) + [results["average"]]:
        assert metrics["pass@1"] == metrics["pass@k"] == metrics["maj@k"] == 1.0
        assert metrics["response_length"] == STUB_LENGTH and metrics["truncated"] == 0.0
    samples = read_jsonl(tmp_path / "gold" / "samples.jsonl")
    assert len(samples) == (5 + 3) * 4
    assert {(s["benchmark"], s["id"], s["sample_index"]) for s in samples} == \
        {(b, p.id, j) for b, ps in data.items() for p in ps for j in range(4)}
    assert all(set(s) == {"benchmark", "id", "sample_index", "response", "answer", "gold", "correct", "length",
                          "finish_reason"} and s["correct"] and s["answer"] == s["gold"] for s in samples)
    with open(tmp_path / "gold" / "results.json") as f:
        assert json.load(f) == json.loads(json.dumps(results))

    results = E.evaluate(wrong_sampler, data, config(), str(tmp_path / "wrong"))
    for metrics in list(results["benchmarks"].values()) + [results["average"]]:
        assert metrics["pass@1"] == metrics["pass@k"] == metrics["maj@k"] == 0.0
        assert metrics["truncated"] == 1.0
    assert not any(s["correct"] for s in read_jsonl(tmp_path / "wrong" / "samples.jsonl"))


def test_refuses_to_overwrite_without_resume(tmp_path):
    E.evaluate(gold_sampler, problems(2, 1), config(), str(tmp_path))
    with pytest.raises(ValueError, match="--resume"):
        E.evaluate(gold_sampler, problems(2, 1), config(), str(tmp_path))
    with pytest.raises(ValueError, match="temperature=0.6 -> 1.0"):
        E.evaluate(gold_sampler, problems(2, 1), config(resume=True, temperature=1.0), str(tmp_path))


class Interrupted(Exception):
    pass


def test_resume_after_interruption_gives_the_same_results(tmp_path):
    data, cfg = problems(), config()
    full = E.evaluate(seeded_sampler, data, cfg, str(tmp_path / "full"))
    assert 0 < full["average"]["pass@1"] < 1 and 0 < full["average"]["maj@k"] < 1  # a mix, so a mix-up shows

    calls = []

    def counting_sampler(problems, k, seed, die_after=None):
        if len(calls) == die_after:
            raise Interrupted
        calls.append(seed)
        return seeded_sampler(problems, k, seed)
    with pytest.raises(Interrupted):
        E.evaluate(lambda *a: counting_sampler(*a, die_after=2), data, cfg, str(tmp_path / "resumed"))
    path = tmp_path / "resumed" / "samples.jsonl"
    lines = open(path).read().splitlines(keepends=True)
    assert len(lines) == 2 * 2 * 4  # two chunks of 2 problems x k=4 written before the kill
    with open(path, "w") as f:  # lose the last 3 samples, and leave a half-written line
        f.writelines(lines[:-3])
        f.write('{"benchmark": "gsm8k", "id": "gsm')

    calls.clear()
    resumed = E.evaluate(counting_sampler, data, config(resume=True), str(tmp_path / "resumed"))
    assert len(calls) == 4  # 5 chunks; the first is complete on disk, the second lost 3 samples
    assert open(tmp_path / "resumed" / "results.json").read() == open(tmp_path / "full" / "results.json").read()
    assert resumed == full
    key = lambda s: (s["benchmark"], s["id"], s["sample_index"])
    got = sorted(read_jsonl_skipping_bad(path), key=key)
    assert got == sorted(read_jsonl(tmp_path / "full" / "samples.jsonl"), key=key)


def read_jsonl_skipping_bad(path):
    out = []
    for line in open(path):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _rank_main(rank, world_size, store, out_dir, problems_by_benchmark):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        E.evaluate(seeded_sampler, problems_by_benchmark, config(), out_dir, rank, world_size)
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_same_results_as_one(tmp_path):
    data = problems(5, 3)
    E.evaluate(seeded_sampler, data, config(), str(tmp_path / "one"))
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(tmp_path / "two"), data), nprocs=2)
    assert open(tmp_path / "two" / "results.json").read() == open(tmp_path / "one" / "results.json").read()
    rank_files = sorted(os.listdir(tmp_path / "two"))
    assert rank_files == ["config.json", "results.json", "samples.rank0.jsonl", "samples.rank1.jsonl"]
    per_rank = [read_jsonl(tmp_path / "two" / f) for f in rank_files[2:]]
    assert all(per_rank) and sum(map(len, per_rank)) == (5 + 3) * 4


# ----------------------------------------------------------------------------- the real pipeline

def test_cli_end_to_end_on_a_tiny_random_model(tmp_path, tiny_checkpoint, default_model_path, capsys):
    """model.py + rollout.py + reward.py + problems.py through eval.main, with the default's tokenizer."""
    folder = tiny_checkpoint(vocab_size=49152, tie=True)
    for name in os.listdir(default_model_path):
        if name.startswith("tokenizer") or name.endswith(".jinja") or name == "special_tokens_map.json":
            shutil.copy(os.path.join(default_model_path, name), folder)
    out = tmp_path / "run"
    E.main(["--model", folder, "--benchmarks", "gsm8k,amc23", "--limit", "2", "--k", "2,amc23:3",
            "--max-new-tokens", "8", "--out-dir", str(out), "--no-progress", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "pass@1 (%)" in printed and "wall time" in printed
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 2 * 2 + 2 * 3
    assert all(0 < s["length"] <= 8 and s["finish_reason"] in ("stop", "length") for s in samples)
    results = json.load(open(out / "results.json"))
    assert set(results["benchmarks"]) == {"gsm8k", "amc23"} and results["benchmarks"]["amc23"]["k"] == 3
    assert 0 <= results["average"]["pass@1"] <= 1

    with pytest.raises(SystemExit, match="^error: --k: bad part 'gsm8k:two'"):
        E.main(["--benchmarks", "gsm8k", "--k", "gsm8k:two"])


# ----------------------------------------------------------------------------- the GPU-path fields and the sampler

def test_model_dtype_follows_precision():
    assert E.model_dtype("auto", "cuda:0") == torch.bfloat16 and E.model_dtype("auto", "cpu") == torch.float32
    assert E.model_dtype("bf16", "cpu") == torch.bfloat16
    assert E.model_dtype("fp32", torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="--precision 'fp16': must be one of auto, fp32, bf16"):
        E.model_dtype("fp16", "cpu")


@pytest.mark.parametrize("flags, message", [
    (["--precision", "half"], r"--precision 'half': must be one of auto, fp32, bf16"),
    (["--attn", "xformers"], r"--attn 'xformers': must be one of auto, torch-flash, flash-attn, sdpa"),
    (["--decode", "fast", "--kv-memory-fraction", "0"],
     r"--kv-memory-fraction 0.0: must be in \(0, 1\]; --decode 'fast': must be one of auto, eager, static, graph"),
    (["--attn", "torch-flash"], r"--attn torch-flash: attention backend torch-flash cannot run here"),
    (["--attn", "flash-attn"], r"--attn flash-attn: attention backend flash-attn cannot run here"),
    (["--decode", "graph"], r"--decode graph needs CUDA \(the device is cpu"),
])
def test_engine_flags_are_refused_before_the_model_loads(tmp_path, monkeypatch, flags, message):
    monkeypatch.setattr(E, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit, match=f"^error: {message}"):
        E.main(["--benchmarks", "gsm8k", "--limit", "1", "--device", "cpu", "--out-dir", str(tmp_path / "run")] + flags)
    assert not (tmp_path / "run").exists()


def count_samplers(monkeypatch) -> list:
    """Every rollout.Sampler made from now on (rollout.generate makes one per call when given none)."""
    import rollout as R
    made, init = [], R.Sampler.__init__

    def counting_init(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)
    monkeypatch.setattr(R.Sampler, "__init__", counting_init)
    return made


def test_cli_loads_the_model_in_the_chosen_precision_backend_and_decode(tmp_path, tiny_chat_model, monkeypatch,
                                                                        capsys):
    loaded, load_model = [], E.load_model

    def spy_load(*args, **kwargs):
        loaded.append(load_model(*args, **kwargs))
        return loaded[-1]
    monkeypatch.setattr(E, "load_model", spy_load)
    made = count_samplers(monkeypatch)
    E.main(["--model", tiny_chat_model, "--benchmarks", "gsm8k", "--limit", "3", "--k", "2", "--problems-per-call", "1",
            "--max-new-tokens", "4", "--precision", "bf16", "--attn", "sdpa", "--decode", "static",
            "--kv-memory-fraction", "0.5", "--out-dir", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    model = loaded[0][0]
    assert model.embed_tokens.weight.dtype == torch.bfloat16 and model.attn_backend == "sdpa"
    assert len(made) == 1 and made[0].mode == "static" and made[0].engine.kv_memory_fraction == 0.5  # 3 chunks, 1
    assert "(bfloat16, attention sdpa, decode static)" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "run" / "samples.jsonl")) == 3 * 2
    saved = json.load(open(tmp_path / "run" / "config.json"))
    assert (saved["precision"], saved["attn"], saved["decode"], saved["kv_memory_fraction"]) == \
        ("bf16", "sdpa", "static", 0.5)


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_one_sampler_serves_every_chunk_with_a_fresh_samplers_samples(tmp_path, tiny_chat_model, monkeypatch, decode):
    model, tokenizer = E.load_model(tiny_chat_model)
    cfg = config(k="3", max_new_tokens=6, temperature=1.0, decode=decode, max_num_seqs=4, kv_budget_tokens=4096)
    data = problems(3, 2)  # chunks of 2: gsm8k [2, 1], math500 [2]
    made = count_samplers(monkeypatch)
    fresh = E.evaluate(lambda *a: E.make_sampler(model, tokenizer, cfg)(*a), data, cfg, str(tmp_path / "fresh"))
    assert len(made) == 3  # the reference: a new sampler (pool, decoders) per chunk
    made.clear()
    sample_fn, pools = E.make_sampler(model, tokenizer, cfg), []

    def reused(*args):
        out = sample_fn(*args)
        pools.append(sample_fn.sampler.cache)
        return out
    results = E.evaluate(reused, data, cfg, str(tmp_path / "reused"))
    assert len(made) == 1 and len(pools) == 3 and all(pool is pools[0] for pool in pools)  # one pool (fixed size)
    assert results == fresh
    assert read_jsonl(tmp_path / "reused" / "samples.jsonl") == read_jsonl(tmp_path / "fresh" / "samples.jsonl")
    assert len({s["response"] for s in read_jsonl(tmp_path / "fresh" / "samples.jsonl")}) > 3  # sampled, not constant


def test_validate_reuses_the_callers_sampler(tiny_chat_model, monkeypatch):
    import rollout as R
    model, tokenizer = E.load_model(tiny_chat_model)
    cfg = config(k="2", max_new_tokens=4)
    held_out = E.load_benchmarks("gsm8k", 3)["gsm8k"]
    own = V.validate(model, tokenizer, held_out, cfg)
    sampler = R.Sampler(model, R.EngineConfig(max_num_seqs=3))
    calls, generate = [], sampler.generate
    sampler.generate = lambda *a, **k: calls.append(a) or generate(*a, **k)
    made = count_samplers(monkeypatch)
    assert V.validate(model, tokenizer, held_out, cfg, sampler=sampler) == own
    assert len(calls) == 2 and not made  # two chunks, both through the caller's sampler; no sampler made
    other, _ = E.load_model(tiny_chat_model, tokenizer=False)
    with pytest.raises(ValueError, match="samples another model"):
        V.validate(other, tokenizer, held_out, cfg, sampler=sampler)


def test_resume_reads_fields_missing_from_an_older_config_as_their_defaults(tmp_path):
    out = tmp_path / "run"
    E.evaluate(gold_sampler, problems(2, 1), config(), str(out))
    saved = json.load(open(out / "config.json"))
    for name in ("precision", "attn", "decode", "kv_memory_fraction"):  # a run folder written before these existed
        del saved[name]
    (out / "config.json").write_text(json.dumps(saved))
    E.evaluate(gold_sampler, problems(2, 1), config(resume=True), str(out))
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="precision='auto' -> 'fp32'"):
        E.evaluate(gold_sampler, problems(2, 1), config(resume=True, precision="fp32"), str(out))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_eval_runs_in_bf16_with_graph_decode_and_one_sampler(tmp_path, tiny_chat_model, monkeypatch, capsys):
    made = count_samplers(monkeypatch)
    E.main(["--model", tiny_chat_model, "--benchmarks", "gsm8k", "--limit", "3", "--k", "4", "--problems-per-call", "1",
            "--max-new-tokens", "16", "--out-dir", str(tmp_path / "run"), "--no-progress"])
    assert len(made) == 1 and made[0].mode == "graph" and made[0].cache.k.dtype == torch.bfloat16
    assert "(bfloat16, attention " in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "run" / "samples.jsonl")) == 3 * 4
