"""The CUDA path's mechanisms, checked on CPU: RoPE precision under bf16 casts, fp32 logits from bf16 operands,
backend dispatch, the devices of the collectives' tensors, the static (CUDA-graph) decode step against the
eager dynamic one, the persistent sampler pool, out-of-memory retry, and FSDP2 bf16 mixed precision in one
process. (tests/test_cuda.py runs the kernels themselves where a GPU exists.)"""
import os
import subprocess
import sys

import pytest
import torch

import attention
import distributed
import model as M
import rollout as R
import sampling as S
from conftest import ROOT, random_prompts
from logprobs import chunked_logprobs_entropy, logits_fp32


pytestmark = pytest.mark.usefixtures("one_thread")


# RoPE ---------------------------------------------------------------------------------------------------------

def test_rope_frequencies_stay_fp32_under_bf16_cast(tiny_checkpoint):
    """model.to(bf16) and load_model(dtype=bf16) keep inv_freq fp32: the angles at position 4000 equal the fp32
    model's exactly (bf16 frequencies would put them off by whole radians)."""
    folder = tiny_checkpoint("qwen2", head_dim=128, num_attention_heads=2, num_key_value_heads=1, hidden_size=256)
    ours32, _ = M.load_model(folder, tokenizer=False)
    ours16, _ = M.load_model(folder, tokenizer=False, dtype=torch.bfloat16)
    cast = M.load_model(folder, tokenizer=False)[0].to(torch.bfloat16)
    reference = M.rope_inv_freq(ours32.cfg)  # fp32
    for model in (ours16, cast):
        assert model.inv_freq.dtype == torch.float32 and torch.equal(model.inv_freq, reference)
        assert model.embed_tokens.weight.dtype == torch.bfloat16
    positions = torch.tensor([4000])
    exact = positions.double()[:, None] * reference.double()[None]  # (1, D/2) radians
    rounded = positions.double()[:, None] * reference.to(torch.bfloat16).double()[None]
    assert (exact - rounded).abs().max() > 1.0  # what the bug did: whole radians off at 4K
    cos, _ = M.rope_tables(positions, ours16.inv_freq, torch.float32)
    assert (cos[0, 0, :64].double() - exact.cos()[0]).abs().max() < 1e-3


# fp32 logits ---------------------------------------------------------------------------------------------------

def test_logits_are_fp32_from_bf16_operands():
    """bf16 hidden x bf16 weight -> logits as exact as fp32 arithmetic on those values (not rounded to bf16)."""
    g = torch.Generator().manual_seed(0)
    h, w = (torch.randn(64, 256, generator=g) * 0.5).bfloat16(), (torch.randn(1000, 256, generator=g) * 0.5).bfloat16()
    exact = h.double() @ w.double().T
    ours = logits_fp32(h, w)
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() < 1e-4
    assert ((h @ w.T).float().double() - exact).abs().max() > 1e-2  # what bf16 output rounding costs
    targets = torch.randint(0, 1000, (64,), generator=g)
    logp, ent = chunked_logprobs_entropy(h, w, targets, 0.7, chunk_size=16)
    ref = torch.log_softmax(exact / 0.7, -1)
    assert (logp.double() - ref.gather(-1, targets[:, None])[:, 0]).abs().max() < 1e-4
    assert (ent.double() - (-(ref.exp() * ref).sum(-1))).abs().max() < 1e-4


def test_bf16_model_logits_are_fp32(tiny_checkpoint):
    ours, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False, dtype=torch.bfloat16)
    logits = ours(torch.arange(3, 13), torch.arange(10), M.AttnMeta.packed([10], "cpu"))
    assert logits.dtype == torch.float32


# backend dispatch ------------------------------------------------------------------------------------------------

def test_backend_resolution():
    assert attention.resolve_backend("auto", "cpu", torch.float32) == "sdpa"
    assert attention.resolve_backend("auto", "cuda", torch.float32) == "sdpa"  # fp32: no FlashAttention kernel
    assert attention.resolve_backend("sdpa", "cuda", torch.bfloat16) == "sdpa"
    if attention.HAS_TORCH_FLASH:
        assert attention.resolve_backend("auto", "cuda", torch.bfloat16) == "torch-flash"
    for name in ("torch-flash", "flash-attn"):
        with pytest.raises(ValueError, match=name):
            attention.resolve_backend(name, "cpu", torch.float32)
    with pytest.raises(ValueError, match="unknown"):
        attention.resolve_backend("xformers", "cpu", torch.float32)


def test_gathered_keys_bottom_right_causal_equals_explicit_attention():
    """kv_index layout: sequence b's queries are the last q_len of its gathered keys (FlashAttention's alignment)."""
    g = torch.Generator().manual_seed(1)
    N, H, Hkv, D = 9, 4, 2, 8
    q, k, v = (torch.randn(N, h, D, generator=g) for h in (H, Hkv, Hkv))
    # sequences: [0,1,2] causal over themselves; [3,4] with keys [0,1,2,3,4]; [5..8] with keys [0,1,5,6,7,8]
    kv_index = torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 5, 6, 7, 8])
    meta = M.AttnMeta.packed_gather([3, 2, 4], [3, 5, 6], kv_index, "cpu")
    out = attention.attention(q, k, v, meta, 0)
    expected = torch.empty_like(q)
    for rows, keys in (([0, 1, 2], [0, 1, 2]), ([3, 4], [0, 1, 2, 3, 4]), ([5, 6, 7, 8], [0, 1, 5, 6, 7, 8])):
        for i, row in enumerate(rows):
            visible = keys[:len(keys) - len(rows) + i + 1]
            for h in range(H):
                scores = (q[row, h] @ k[visible, h // (H // Hkv)].T) / D ** 0.5
                expected[row, h] = scores.softmax(-1) @ v[visible, h // (H // Hkv)]
    assert torch.allclose(out, expected, atol=1e-5)


# collectives -------------------------------------------------------------------------------------------------------

def test_collectives_use_tensors_their_backend_serves(monkeypatch):
    """Under CUDA the group is cpu:gloo,cuda:nccl, and the loop's reductions are CPU tensors, which gloo serves
    (an NCCL-only group refused them: "No backend type associated with device type cpu")."""
    seen = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: seen.setdefault("backend", backend))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.dist_init("cuda:0")
    served = {pair.split(":")[0] for pair in seen["backend"].split(",")}
    assert served == {"cpu", "cuda"}
    devices = []
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: devices.append(t.device.type))
    distributed.all_sum([1.0, 2.0], True)
    distributed.max_over_ranks(3)
    assert devices and set(devices) <= served


def test_collective_failure_names_the_rank(monkeypatch):
    def fail(t, op=None):
        raise RuntimeError("Connection closed by peer")
    monkeypatch.setattr(distributed.dist, "all_reduce", fail)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 8)
    with pytest.raises(RuntimeError, match="rank 3 of 8: all_sum failed"):
        distributed.all_sum([1.0], True)


def test_one_rank_fsdp_bf16_step_on_cpu(tmp_path, tiny_checkpoint):
    """The single-process mixed-precision path (one-rank group, FSDP2 bf16 compute, fp32 master weights) runs
    on CPU and lands near the fp32 step: same loss to bf16 precision, fp32 parameters, a different update."""
    folder = tiny_checkpoint("qwen2")
    script = os.path.join(ROOT, "tests", "fsdp_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for precision in ("fp32", "bf16"):
        subprocess.run([sys.executable, script, folder, str(tmp_path / f"{precision}.pt"), precision], check=True,
                       env=env, timeout=300)
    fp32, bf16 = (torch.load(tmp_path / f"{p}.pt") for p in ("fp32", "bf16"))
    assert bf16["param_dtypes"] == ["torch.float32"]  # master weights
    assert abs(fp32["loss"] - bf16["loss"]) < 2e-2 * max(1.0, abs(fp32["loss"]))
    diffs = [(fp32["state"][k] - bf16["state"][k]).abs().max().item() for k in fp32["state"]]
    assert 0 < max(diffs) < 0.05  # bf16 compute moved the update a little, not a lot


# static decode -----------------------------------------------------------------------------------------------------

def test_device_uniforms_equal_host_stream():
    g = torch.Generator().manual_seed(0)
    keys = [int(x) for x in torch.randint(0, 2 ** 62, (500,), generator=g)] + [2 ** 64 - 1, 2 ** 63, 0, 12345]
    keys = [(k * 0x9E3779B97F4A7C15) % 2 ** 64 for k in keys]  # spread over all 64 bits
    positions = [int(p) for p in torch.randint(0, 100_000, (len(keys),), generator=g)]
    host = S.uniform_draws(keys, positions)
    device = S.uniform_draws_tensor(torch.tensor([S.as_int64(k) for k in keys]), torch.tensor(positions))
    assert torch.equal(host, device)


@pytest.mark.parametrize("params", [
    R.SamplingParams(temperature=0.0, max_new_tokens=20, ignore_eos=True),
    R.SamplingParams(temperature=1.0, max_new_tokens=20, n=3, seed=5),
    R.SamplingParams(temperature=0.8, top_p=0.7, max_new_tokens=20, n=3, seed=7),
    R.SamplingParams(temperature=0.8, top_k=5, max_new_tokens=16, n=2, seed=9)], ids=["greedy", "t1", "top_p", "top_k"])
def test_static_decode_equals_eager_dynamic_decode(tiny_checkpoint, params):
    """The CUDA-graph step run eagerly (static shapes, buckets padded with a scratch page, device-side draws) gives
    the eager dynamic decode's tokens exactly, with refill and preemption too, and its logprobs to 1e-5."""
    ours, _ = M.load_model(tiny_checkpoint("qwen3"), tokenizer=False)
    prompts = random_prompts(ours.cfg.vocab_size, [3, 21, 8, 14, 5, 30])
    eager, _ = R.generate(ours, prompts, params, R.EngineConfig(page_size=4, decode="eager"))
    for engine in (R.EngineConfig(page_size=4, decode="static"),
                   R.EngineConfig(page_size=4, decode="static", max_num_seqs=3, kv_budget_tokens=64)):
        static, stats = R.generate(ours, prompts, params, engine)
        assert stats["decode_mode"] == "static"
        assert [s.token_ids for s in static] == [s.token_ids for s in eager]
        assert [s.finish_reason for s in static] == [s.finish_reason for s in eager]
        assert max(abs(a - b) for x, y in zip(static, eager) for a, b in zip(x.logprobs, y.logprobs)) < 1e-5
        assert max(abs(a - b) for x, y in zip(static, eager) for a, b in zip(x.entropies, y.entropies)) < 1e-5
    if engine.kv_budget_tokens:
        assert stats["preemptions"] > 0


def test_graph_decode_needs_cuda(tiny_checkpoint):
    ours, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            R.Sampler(ours, R.EngineConfig(decode="graph"))


# the sampler's pool -------------------------------------------------------------------------------------------------

def test_sampler_keeps_its_pool_across_calls_and_grows_it(tiny_checkpoint):
    ours, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    sampler = R.Sampler(ours, R.EngineConfig(page_size=4, max_num_seqs=8))
    prompts = random_prompts(ours.cfg.vocab_size, [5, 9])
    params = R.SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=1)
    first, _ = sampler.generate(prompts, params)
    pool = sampler.cache.k
    again, _ = sampler.generate(prompts, params)
    assert sampler.cache.k is pool  # no new allocation for a call of the same size
    assert [s.token_ids for s in again] == [s.token_ids for s in first]
    sampler.generate(prompts, R.SamplingParams(temperature=1.0, max_new_tokens=40, n=4, seed=1))
    assert sampler.cache.k.shape[1] > pool.shape[1]  # grown for a bigger call


def test_out_of_memory_retry_frees_then_halves(tiny_checkpoint, monkeypatch, capsys):
    """A CUDA OOM: the failed call's pool is released before the cache is emptied, then the call is retried with
    half the KV pool and slots (and says so); a fourth failure is raised."""
    ours, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    sampler = R.Sampler(ours, R.EngineConfig(page_size=4))
    real, calls = sampler._generate, []

    def flaky(*args):
        calls.append((sampler.scale, sampler.cache))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(*args)
    emptied = []
    monkeypatch.setattr(sampler, "_generate", flaky)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(sampler.cache))
    samples, _ = sampler.generate(random_prompts(ours.cfg.vocab_size, [4]), R.SamplingParams(max_new_tokens=4, n=2))
    assert len(samples) == 2 and [scale for scale, _ in calls] == [1.0, 0.5]
    assert emptied == [None]  # the pool was dropped before empty_cache ran
    assert "out of GPU memory" in capsys.readouterr().err
    monkeypatch.setattr(sampler, "_generate", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sampler.generate(random_prompts(ours.cfg.vocab_size, [4]), R.SamplingParams(max_new_tokens=4))


# memory plan ---------------------------------------------------------------------------------------------------------

def test_memory_plan_counts():
    """Parameter bytes match a real (meta-device) model of the Qwen2.5-1.5B shape; activations follow the formula
    by hand; checkpointing cuts them by the layer count's factor."""
    hf = dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
              num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
    cfg = M.ModelConfig.from_hf(hf)
    with torch.device("meta"):
        params = sum(p.numel() for p in M.Transformer(cfg).parameters())
    plan = dict(distributed.memory_plan(cfg, world=8, micro_batch_tokens=1000, activation_checkpointing=False))
    assert abs(plan["fp32 weights + grads + AdamW (sharded)"] - 16 * params / 8) / (16 * params / 8) < 1e-3
    assert plan["bf16 sampler copy"] == pytest.approx(2 * params, rel=1e-3)
    per_layer = 22 * 1536 + 10 * 8960 + 8 * 256  # 125,440 bytes per token per layer
    assert plan["activations, 1000 tokens"] == 1000 * 28 * per_layer
    checkpointed = dict(distributed.memory_plan(cfg, 8, 1000, True))["activations, 1000 tokens (checkpointed)"]
    assert checkpointed == 1000 * (28 * 2 * 1536 + per_layer)
    assert plan["total"] == sum(v for k, v in plan.items() if k != "total")


# the single-process bf16 path end to end --------------------------------------------------------------------------

def test_train_bf16_single_process_on_cpu(tmp_path, tiny_chat_model):
    """python train.py --precision bf16 takes the GPU's code path on CPU: a one-rank FSDP2 group (bf16 compute,
    fp32 master weights), a bf16 sampler copy refreshed in place each step, fp32 weights in the checkpoint, and a
    resume that continues it."""
    import json
    import train
    args = ["--model", tiny_chat_model, "--out-dir", str(tmp_path), "--data", "arith", "--preset", "cpu",
            "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "8", "--curriculum", "none",
            "--no-dynamic-sampling", "--precision", "bf16", "--save-every", "1", "--entropy-coef", "0.01"]
    train.main(args + ["--total-steps", "2"])
    train.main(args + ["--total-steps", "3", "--resume", "auto"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["grad_norm"] > 0 for r in rows)  # the entropy bonus moves the weights even without rewards
    assert all(r["logprob_gap"] < 0.1 for r in rows)  # bf16 sampler vs bf16-compute trainer on the same weights
    policy, _ = M.load_model(str(tmp_path / "checkpoints" / "step_000003" / "policy"), tokenizer=False)
    saved = json.load(open(tmp_path / "checkpoints" / "step_000003" / "policy" / "config.json"))
    assert saved.get("dtype", "float32") == "float32" and policy.embed_tokens.weight.dtype == torch.float32
