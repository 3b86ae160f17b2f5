"""The CUDA kernels against their SDPA twin, CUDA graphs against the eager step, bf16 sampler against the fp32
trainer, the KV pool's memory cap, and FSDP2 on GPUs. Every test skips without CUDA; benchmarks/gpu_check.py
runs this file first and reports each test's pass/fail."""
import os
import subprocess
import sys

import pytest
import torch

import attention
import model as M
import rollout as R
import update
from conftest import ROOT, make_tiny_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_torch_flash = pytest.mark.skipif(not attention.HAS_TORCH_FLASH, reason="this PyTorch has no varlen_attn")
CUDA_SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                  max_position_embeddings=8192)


@pytest.fixture(scope="module")
def cuda_checkpoint(tmp_path_factory):
    """A tiny qwen2 with real head_dim 128 (what FlashAttention kernels are tuned for) and GQA."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("cuda") / "qwen2", "qwen2", **CUDA_SHAPE)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def random_qkv(lengths, H=8, Hkv=2, D=128, seed=0, requires_grad=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    N = sum(lengths)
    return [torch.randn(N, h, D, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_(requires_grad)
            for h in (H, Hkv, Hkv)]


@pytest.mark.parametrize("backend", ["torch-flash", "flash-attn"])
def test_packed_attention_matches_sdpa_forward_and_backward(backend):
    if backend == "torch-flash" and not attention.HAS_TORCH_FLASH or backend == "flash-attn" and not attention.HAS_FLASH:
        pytest.skip(f"{backend} not available")
    lengths = [513, 7, 1024, 64]
    q, k, v = random_qkv(lengths, requires_grad=True)
    outs, grads = {}, {}
    for name in (backend, "sdpa"):
        meta = M.AttnMeta.packed(lengths, "cuda", backend=name)
        out = attention.attention(q, k, v, meta, 0)
        outs[name] = out
        grads[name] = torch.autograd.grad(out.float().pow(2).sum(), (q, k, v))
    assert rel_err(outs[backend], outs["sdpa"]) < 2e-2
    for a, b in zip(grads[backend], grads["sdpa"]):
        assert rel_err(a, b) < 3e-2


@needs_torch_flash
def test_gathered_keys_torch_flash_matches_sdpa():
    """The shared-prompt layout: a prompt of 300 and three responses whose keys are [prompt; themselves]."""
    prompt, responses = 300, [50, 1, 200]
    lengths = [prompt] + responses
    q, k, v = random_qkv(lengths, seed=1)
    kv_index, start = list(range(prompt)), prompt
    for n in responses:
        kv_index += list(range(prompt)) + list(range(start, start + n))
        start += n
    meta = lambda name: M.AttnMeta.packed_gather(lengths, [prompt] + [prompt + n for n in responses],
                                                torch.tensor(kv_index, device="cuda"), "cuda")
    outs = {}
    for name in ("torch-flash", "sdpa"):
        m = meta(name)
        m.backend = name
        outs[name] = attention.attention(q, k, v, m, 0)
    assert rel_err(outs["torch-flash"], outs["sdpa"]) < 2e-2


@pytest.mark.skipif(not attention.TORCH_FLASH_PAGED, reason="this PyTorch's varlen_attn has no block_table")
def test_paged_decode_torch_flash_matches_sdpa():
    B, H, Hkv, D, page, pages = 5, 8, 2, 128, 256, 24
    g = torch.Generator(device="cuda").manual_seed(2)
    cache = M.KVCache(*(torch.randn(1, pages, page, Hkv, D, device="cuda", generator=g, dtype=torch.bfloat16)
                        for _ in range(2)))
    lens = torch.tensor([0, 255, 256, 700, 1500], device="cuda", dtype=torch.int32)
    table = torch.randperm(pages - 1, device="cuda", generator=g)[:B * 4].view(B, 4).to(torch.int32)
    q, k, v = (torch.randn(B, h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (H, Hkv, Hkv))
    outs = {}
    for name in ("torch-flash", "sdpa"):
        c = M.KVCache(cache.k.clone(), cache.v.clone())
        meta = M.AttnMeta(cache=c, block_table=table, cache_seqlens=lens, static=True, backend=name)
        outs[name] = attention.attention(q, k, v, meta, 0)
    assert rel_err(outs["torch-flash"], outs["sdpa"]) < 2e-2


def test_model_backends_agree(cuda_checkpoint):
    ours, _ = M.load_model(cuda_checkpoint, device="cuda", dtype=torch.bfloat16, tokenizer=False)
    lengths = [33, 7, 300]
    ids = torch.randint(3, ours.cfg.vocab_size, (sum(lengths),), device="cuda")
    positions = torch.cat([torch.arange(n) for n in lengths]).cuda()
    logits = {}
    for name in ["sdpa"] + (["torch-flash"] if attention.HAS_TORCH_FLASH else []):
        ours.attn_backend = name
        with torch.no_grad():
            logits[name] = ours(ids, positions, M.AttnMeta.packed(lengths, "cuda"))
    for name, value in logits.items():
        assert value.dtype == torch.float32 and rel_err(value, logits["sdpa"]) < 2e-2, name


@pytest.mark.parametrize("params", [R.SamplingParams(temperature=1.0, max_new_tokens=40, n=4, seed=3, ignore_eos=True),
                                    R.SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=40, n=2, seed=4)])
def test_graph_decode_replays_the_eager_static_step(cuda_checkpoint, params):
    """CUDA graphs give exactly the eager static step's tokens and logprobs (same kernels and shapes), and the
    dynamic eager decode's tokens."""
    ours, _ = M.load_model(cuda_checkpoint, device="cuda", dtype=torch.bfloat16, tokenizer=False)
    prompts = [torch.randint(3, ours.cfg.vocab_size, (n,)).tolist() for n in (5, 300, 17, 64, 1)]
    results = {mode: R.generate(ours, prompts, params, R.EngineConfig(decode=mode, max_num_seqs=16))
               for mode in ("graph", "static", "eager")}
    graph, stats = results["graph"]
    assert stats["decode_mode"] == "graph"
    static = results["static"][0]
    assert [s.token_ids for s in graph] == [s.token_ids for s in static]
    assert [s.logprobs for s in graph] == [s.logprobs for s in static]
    agree = sum(a.token_ids == b.token_ids for a, b in zip(graph, results["eager"][0])) / len(graph)
    assert agree >= 0.8  # bf16 batch-size-dependent GEMMs may flip a rare near-tie draw; most rows are identical


def test_bf16_sampler_matches_fp32_trainer_at_long_positions(cuda_checkpoint):
    """The sampler's bf16 copy and the fp32 master weights agree on the sampled tokens' logprobs at positions past
    1K (fp32 RoPE frequencies in both; bf16 frequencies would drift by radians)."""
    sampler_model, _ = M.load_model(cuda_checkpoint, device="cuda", dtype=torch.bfloat16, tokenizer=False)
    trainer, _ = M.load_model(cuda_checkpoint, device="cuda", dtype=torch.float32, tokenizer=False)
    prompt = torch.randint(3, sampler_model.cfg.vocab_size, (64,)).tolist()
    samples, _ = R.generate(sampler_model, [prompt], R.SamplingParams(temperature=1.0, max_new_tokens=1536, n=2,
                                                                      ignore_eos=True))
    with torch.no_grad():
        logp, _, mask = update.policy_logprobs(trainer, [(prompt, [s.token_ids for s in samples])], 1.0, "cuda")
    gap = (logp - torch.tensor([s.logprobs for s in samples], device="cuda")).abs()[:, 1024:]
    assert gap.mean().item() < 0.05, gap.mean().item()


def test_kv_pool_capped_by_free_memory(cuda_checkpoint):
    ours, _ = M.load_model(cuda_checkpoint, device="cuda", dtype=torch.bfloat16, tokenizer=False)
    free = torch.cuda.mem_get_info()[0]
    sampler = R.Sampler(ours, R.EngineConfig(max_num_seqs=512, kv_memory_fraction=0.01))
    sampler.generate([[5, 6, 7]], R.SamplingParams(max_new_tokens=8, n=2))
    pool_bytes = sampler.cache.k.nbytes * 2
    assert pool_bytes <= 0.011 * free + 2 * sampler.cache.bytes_per_token() * sampler.page_size


def test_one_rank_fsdp_bf16_step_on_gpu(tmp_path, cuda_checkpoint):
    script = os.path.join(ROOT, "tests", "fsdp_step.py")
    subprocess.run([sys.executable, script, cuda_checkpoint, str(tmp_path / "bf16.pt"), "bf16"], check=True, timeout=300)
    out = torch.load(tmp_path / "bf16.pt")
    assert out["param_dtypes"] == ["torch.float32"] and torch.isfinite(torch.tensor(out["loss"]))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_fsdp_step_equals_one_process(tmp_path, cuda_checkpoint):
    """torchrun on 2 GPUs (NCCL for FSDP, gloo for the loop's host reductions) == one process, fp32 compute."""
    script = os.path.join(ROOT, "tests", "fsdp_step.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script, cuda_checkpoint,
                    str(tmp_path / "two.pt")], check=True, timeout=600)
    subprocess.run([sys.executable, script, cuda_checkpoint, str(tmp_path / "one.pt")], check=True, timeout=300)
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert abs(two["loss"] - one["loss"]) < 1e-4
    for name in one["state"]:
        assert torch.allclose(two["state"][name].cpu(), one["state"][name].cpu(), atol=1e-4), name
