"""rollout.py against independent references: transformers generate, a teacher-forced full forward, brute force."""
import math

import pytest
import torch
import torch.nn.functional as F

import model as M
import rollout as R
import sampling as S
from conftest import random_prompts

PAGE = R.EngineConfig(page_size=4)  # small pages: every row spans several, scattered through the pool


pytestmark = pytest.mark.usefixtures("one_thread")


def greedy(max_new_tokens, **kw):
    return R.SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, **kw)


def hf_greedy(folder, prompts, max_new_tokens):
    """transformers generate, one prompt at a time (no padding): stops at EOS and keeps it, as we do."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return [hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                            max_new_tokens=max_new_tokens, do_sample=False)[0, len(p):].tolist() for p in prompts]


def assert_same_samples(got, want, tol=1e-5):
    assert [s.token_ids for s in got] == [s.token_ids for s in want]
    assert [s.finish_reason for s in got] == [s.finish_reason for s in want]
    for a, b in zip(got, want):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= tol


# 1. greedy == transformers generate --------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_greedy_matches_transformers_tiny(tiny_checkpoint, family):
    folder = tiny_checkpoint(family, tie=family == "qwen2")
    ours, _ = M.load_model(folder, tokenizer=False)
    prompts = random_prompts(ours.cfg.vocab_size, [5, 17, 1, 30, 9])
    samples, _ = R.generate(ours, prompts, greedy(24), PAGE)  # EOS (config.json's, id 2) stops rows
    for sample, ref in zip(samples, hf_greedy(folder, prompts, 24)):
        assert sample.token_ids == ref
        assert sample.finish_reason == ("stop" if ref[-1] == 2 else "length")


def test_greedy_matches_transformers_embedded_default(default_model, default_model_path):
    ours, tok = default_model
    texts = ["Question: What is 7 + 5?\nAnswer:", "The capital of France is", "def fibonacci(n):\n    \"\"\"Return"]
    prompts = [tok.encode(t) for t in texts]
    samples, _ = R.generate(ours, prompts, greedy(20), tokenizer=tok)
    for sample, ref in zip(samples, hf_greedy(default_model_path, prompts, 20)):
        assert sample.token_ids == ref
        assert len(ref) == 20 or ref[-1] == tok.eos_token_id


# 2. logprobs == teacher-forced full forward ------------------------------------------------------------------

def teacher_forced_logprobs(model, prompt, response, temperature, entropy=False):
    ids = torch.tensor(prompt + response)
    with torch.no_grad():
        logits = model(ids, torch.arange(len(ids)), M.AttnMeta.packed([len(ids)], "cpu"))  # (T, V)
    logp = F.log_softmax(logits / (temperature or 1.0), dim=-1)[len(prompt) - 1:-1]  # rows predicting the response
    chosen = logp.gather(-1, torch.tensor(response)[:, None])[:, 0]
    return (chosen, -(logp.exp() * logp).sum(-1)) if entropy else chosen


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_match_teacher_forced_forward(tiny_checkpoint, temperature):
    ours, _ = M.load_model(tiny_checkpoint("qwen3"), tokenizer=False)
    prompts = random_prompts(ours.cfg.vocab_size, [4, 11, 7])
    params = R.SamplingParams(temperature=temperature, max_new_tokens=12, n=2, seed=3, ignore_eos=True)
    samples, _ = R.generate(ours, prompts, params, PAGE)
    for s in samples:  # the sampler's entropies are the trainer's too (softmax(z / T), T = 1 when greedy)
        ref, ref_entropy = teacher_forced_logprobs(ours, prompts[s.prompt_index], s.token_ids, temperature, entropy=True)
        assert (torch.tensor(s.logprobs) - ref).abs().max().item() < 1e-4
        assert (torch.tensor(s.entropies) - ref_entropy).abs().max().item() < 1e-4


def test_logprobs_match_teacher_forced_forward_embedded_default(default_model):
    ours, tok = default_model
    prompts = [tok.encode("Question: What is 3 + 4?\nAnswer:"), tok.encode("Once upon a time")]
    samples, _ = R.generate(ours, prompts, R.SamplingParams(temperature=0.7, max_new_tokens=12, n=2, seed=1), tokenizer=tok)
    for s in samples:
        ref = teacher_forced_logprobs(ours, prompts[s.prompt_index], s.token_ids, 0.7)
        assert (torch.tensor(s.logprobs) - ref).abs().max().item() < 1e-4


# 3. batch invariance: alone, mixed batch, slot refill, preemption --------------------------------------------

def test_batch_invariance_with_slot_refill_and_preemption(tiny_checkpoint):
    """Greedy: alone == mixed batch == 2 slots for 6 rows == a pool of 16 pages that forces preemption.
    Sampled: a draw depends on (seed, sample index, position) only, so slots and preemption change nothing."""
    ours, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    prompts = random_prompts(ours.cfg.vocab_size, [3, 21, 8, 14, 5, 30])
    for params in (greedy(20, ignore_eos=True), R.SamplingParams(temperature=1.0, max_new_tokens=20, n=2, seed=5)):
        batch, _ = R.generate(ours, prompts, params, PAGE)
        refill, refill_stats = R.generate(ours, prompts, params, R.EngineConfig(max_num_seqs=2, page_size=4))
        tight, tight_stats = R.generate(ours, prompts, params, R.EngineConfig(page_size=4, kv_budget_tokens=64))
        assert tight_stats["preemptions"] > 0 and refill_stats["preemptions"] == 0
        assert_same_samples(refill, batch)
        assert_same_samples(tight, batch)
        if params.temperature == 0:
            alone = [R.generate(ours, [p], params, PAGE)[0][0] for p in prompts]
            assert_same_samples([R.Sample(i, 0, s.token_ids, s.logprobs, s.finish_reason, s.entropies)
                                 for i, s in enumerate(alone)], batch)


# 4. seeded sampling ------------------------------------------------------------------------------------------

def test_seeded_sampling_reproducible_and_samples_differ(tiny_checkpoint):
    ours, _ = M.load_model(tiny_checkpoint("qwen2"), tokenizer=False)
    prompts = random_prompts(ours.cfg.vocab_size, [6, 13])
    params = R.SamplingParams(temperature=1.0, max_new_tokens=16, n=4, seed=7, ignore_eos=True)
    first, stats = R.generate(ours, prompts, params, PAGE)
    assert stats["prefill_tokens"] == 6 + 13  # one prefill per prompt, shared by its 4 samples
    torch.manual_seed(123)  # the global RNG plays no part
    again, _ = R.generate(ours, prompts, params, PAGE)
    other, _ = R.generate(ours, prompts, R.SamplingParams(**{**params.__dict__, "seed": 8}), PAGE)
    assert_same_samples(again, first, tol=0)
    assert [s.token_ids for s in other] != [s.token_ids for s in first]
    for i in range(len(prompts)):
        responses = [tuple(s.token_ids) for s in first if s.prompt_index == i]
        assert len(set(responses)) == params.n


# 5. top-k / top-p vs brute force -----------------------------------------------------------------------------

def brute_force_filtered(logits_row, temperature, top_k, top_p):
    """Plain Python: softmax, keep the k most likely, renormalise, keep the smallest prefix reaching top_p."""
    z = [x / temperature for x in logits_row.tolist()]
    peak = max(z)
    p = [math.exp(x - peak) for x in z]
    p = [x / sum(p) for x in p]
    order = sorted(range(len(p)), key=lambda v: -p[v])
    kept = order[:top_k] if top_k else order
    mass = sum(p[v] for v in kept)
    nucleus, before = [], 0.0
    for v in kept:
        if before >= top_p:
            break
        nucleus.append(v)
        before += p[v] / mass
    total = sum(p[v] for v in nucleus)
    return [p[v] / total if v in nucleus else 0.0 for v in range(len(p))]


@pytest.mark.parametrize("vocab,scale,top_k,top_p", [
    (12, 2.0, 0, 1.0), (12, 2.0, 3, 1.0), (12, 2.0, 1, 1.0), (12, 2.0, 0, 0.6), (12, 2.0, 5, 0.8),
    (12, 2.0, 0, 0.01), (700, 0.3, 0, 0.9), (700, 0.3, 100, 0.5)])  # 700, flat: the candidate list must grow past 64
def test_filtered_distribution_matches_brute_force(vocab, scale, top_k, top_p):
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(vocab + top_k)) * scale
    draws = 8192
    grid = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws  # evenly spread uniforms: counts are exact
    for row in range(3):
        want = torch.tensor(brute_force_filtered(logits[row], 0.8, top_k, top_p))
        got = S.filtered_probs(logits[row:row + 1], 0.8, top_k, top_p)[0]
        assert (got - want).abs().max().item() < 1e-6
        tokens, _, _ = S.sample_tokens(logits[row:row + 1].expand(draws, vocab), 0.8, top_k, top_p, grid)
        counts = torch.bincount(tokens, minlength=vocab).double()
        assert (counts - draws * want).abs().max().item() <= 1.0 + 1e-6  # inverse CDF on a grid: off by < 1
        assert counts[want == 0].sum() == 0


# 6. finish reasons -------------------------------------------------------------------------------------------

def test_finish_reasons_eos_and_length(tiny_checkpoint):
    free_model, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    prompts = random_prompts(free_model.cfg.vocab_size, [6, 9, 4, 12])
    free, _ = R.generate(free_model, prompts, greedy(16, ignore_eos=True), PAGE)
    eos = free[0].token_ids[5]  # same weights, EOS moved to a token that row 0 produces
    ours, _ = M.load_model(tiny_checkpoint("llama", eos_token_id=eos), tokenizer=False)
    samples, _ = R.generate(ours, prompts, greedy(16), PAGE)
    for f, s in zip(free, samples):
        if eos in f.token_ids:
            assert s.token_ids == f.token_ids[:f.token_ids.index(eos) + 1] and s.finish_reason == "stop"
        else:
            assert s.token_ids == f.token_ids and s.finish_reason == "length"
    assert {s.finish_reason for s in samples} == {"stop", "length"}
    ignored, _ = R.generate(ours, prompts, greedy(16, ignore_eos=True), PAGE)
    assert [s.token_ids for s in ignored] == [s.token_ids for s in free]


def test_stop_strings_cut_after_completing_token(tiny_chat_model):
    ours, tok = M.load_model(tiny_chat_model)
    prompts = [tok.encode("Question: 1 + 2?\nAnswer:"), tok.encode("Hello")]
    free, _ = R.generate(ours, prompts, greedy(16, ignore_eos=True), tokenizer=tok)
    texts = [tok.decode(free[0].token_ids[:k]) for k in range(1, 17)]
    stop = next(t[-3:] for t in texts[4:] if "\ufffd" not in t[-3:] and len(t) >= 3)  # spans a token boundary
    samples, _ = R.generate(ours, prompts, greedy(16, ignore_eos=True, stop_strings=[stop]), tokenizer=tok)
    for f, s in zip(free, samples):
        cut = next((k for k in range(1, 17) if stop in tok.decode(f.token_ids[:k])), None)  # full decodes
        if cut is None:
            assert s.token_ids == f.token_ids and s.finish_reason == "length"
        else:
            assert s.token_ids == f.token_ids[:cut] and s.finish_reason == "stop"
    assert samples[0].finish_reason == "stop"
    with pytest.raises(ValueError, match="stop_strings need a tokenizer"):
        R.generate(ours, prompts, greedy(4, stop_strings=[stop]))


# 7. page accounting ------------------------------------------------------------------------------------------

def test_pages_return_to_pool_and_small_budget_fails_before_work(tiny_checkpoint, monkeypatch):
    ours, _ = M.load_model(tiny_checkpoint("qwen2"), tokenizer=False)
    prompts = random_prompts(ours.cfg.vocab_size, [3, 21, 8, 30])
    params = R.SamplingParams(temperature=1.0, max_new_tokens=20, n=3)  # EOS stops some rows early
    _, stats = R.generate(ours, prompts, params, R.EngineConfig(max_num_seqs=5, page_size=4, kv_budget_tokens=80))
    assert stats["preemptions"] > 0
    assert stats["kv_pages_free"] == stats["kv_pages"] == 20
    assert 50 <= stats["peak_kv_tokens"] <= 80
    _, stats = R.generate(ours, prompts, params, R.EngineConfig(page_size=4))
    assert stats["kv_pages_free"] == stats["kv_pages"] and stats["peak_kv_tokens"] <= stats["kv_budget_tokens"]

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the budget check")
    monkeypatch.setattr(ours, "forward", no_work)
    monkeypatch.setattr(M.KVCache, "allocate", no_work)
    with pytest.raises(ValueError, match="cannot hold one sequence of 50 tokens"):
        R.generate(ours, prompts, params, R.EngineConfig(page_size=4, kv_budget_tokens=48))
