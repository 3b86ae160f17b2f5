"""model.py (and its attention.py / logprobs.py parts) against transformers on the same weights, plus the
packed/paged paths against full forwards."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import model as M
from conftest import ROOT
from logprobs import chunked_logprobs_entropy

FAMILIES = [  # (family, tie, config overrides): every feature the loader maps
    ("llama", True, {}),
    ("llama", False, {"attention_bias": True, "mlp_bias": True,
                      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    ("llama", False, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_theta": 500.0}),
    ("qwen2", True, {}),
    ("qwen2", False, {}),
    ("qwen3", True, {}),
    ("qwen3", False, {"attention_bias": True}),
]


def hf_logits(folder, ids, lengths):
    """transformers on a right-padded batch with an attention mask: (B, T, V)."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        return hf(ids, attention_mask=mask).logits


def random_batch(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=g)
    return ids, torch.tensor(lengths)


@pytest.mark.parametrize("family,tie,overrides", FAMILIES)
def test_logits_match_transformers(tiny_checkpoint, family, tie, overrides):
    folder = tiny_checkpoint(family, tie, **overrides)
    ours, _ = M.load_model(folder, tokenizer=False)
    assert ours.cfg.tie_word_embeddings == tie
    ids, lengths = random_batch(ours.cfg.vocab_size, [9, 23, 4, 17])
    ref = hf_logits(folder, ids, lengths)
    with torch.no_grad():
        got = ours.forward_padded(ids, lengths)
    for b, T in enumerate(lengths.tolist()):
        assert (got[b, :T] - ref[b, :T]).abs().max().item() < 1e-4, (family, b)


def test_packed_equals_per_sequence(tiny_checkpoint):
    ours, _ = M.load_model(tiny_checkpoint("qwen3"), tokenizer=False)
    lengths = [5, 12, 1, 8]
    ids, _ = random_batch(ours.cfg.vocab_size, lengths, seed=1)
    flat = torch.cat([ids[b, :T] for b, T in enumerate(lengths)])
    positions = torch.cat([torch.arange(T) for T in lengths])
    with torch.no_grad():
        packed = ours(flat, positions, M.AttnMeta.packed(lengths, "cpu"))
        single = torch.cat([ours(ids[b, :T], torch.arange(T), M.AttnMeta.packed([T], "cpu"))
                            for b, T in enumerate(lengths)])
    assert (packed - single).abs().max().item() < 1e-5


def test_packed_cpu_linears_same_logits_and_restored(tiny_checkpoint):
    """oneDNN pre-packed linears (qwen2: q/k/v biases) give the plain forward's logits, and on exit, even through
    an exception, every layer is a plain nn.Linear again that follows later weight changes."""
    ours, _ = M.load_model(tiny_checkpoint("qwen2"), tokenizer=False)
    lengths = [5, 12, 1, 8]
    ids, _ = random_batch(ours.cfg.vocab_size, lengths, seed=2)
    flat = torch.cat([ids[b, :T] for b, T in enumerate(lengths)])
    positions = torch.cat([torch.arange(T) for T in lengths])
    run = lambda: ours(flat, positions, M.AttnMeta.packed(lengths, "cpu"))
    with torch.inference_mode():
        plain = run()
        with M.packed_cpu_linears(ours, batch_hint=4):
            packed = run()
            assert any("forward" in vars(m) for m in ours.modules())  # the packed path really ran
        with pytest.raises(RuntimeError), M.packed_cpu_linears(ours, batch_hint=4):
            raise RuntimeError("interrupted rollout")
    assert (packed - plain).abs().max().item() < 1e-4
    assert not any("forward" in vars(m) for m in ours.modules())
    with torch.no_grad():
        ours.lm_head.weight.mul_(2.0)  # a later weight change shows: no stale packed copy is left in use
        assert (run() - plain).abs().max().item() > 1e-3


def test_paged_decode_equals_full_forward(tiny_checkpoint):
    """Prefill into scattered pages, then decode token by token: logits equal the full causal forward."""
    ours, _ = M.load_model(tiny_checkpoint("qwen2"), tokenizer=False)
    prompt_lens, new_tokens, page_size = [3, 7, 5], 6, 4
    ids, _ = random_batch(ours.cfg.vocab_size, [p + new_tokens for p in prompt_lens], seed=2)
    cache = M.KVCache.allocate(ours.cfg, num_pages=16, page_size=page_size, device="cpu", dtype=torch.float32)
    block_table = torch.tensor([[9, 2, 14, 5], [0, 11, 7, 3], [15, 6, 1, 12]], dtype=torch.int32)  # non-contiguous
    slots = torch.cat([block_table[b, torch.arange(p) // page_size].long() * page_size + torch.arange(p) % page_size
                       for b, p in enumerate(prompt_lens)])[:, None]
    flat = torch.cat([ids[b, :p] for b, p in enumerate(prompt_lens)])
    positions = torch.cat([torch.arange(p) for p in prompt_lens])
    with torch.no_grad():
        ours(flat, positions, M.AttnMeta.packed(prompt_lens, "cpu", cache=cache, slot_mapping=slots))
        lens = torch.tensor(prompt_lens, dtype=torch.int32)
        for step in range(new_tokens):
            tokens = ids[torch.arange(3), lens.long()]
            logits = ours(tokens, lens.long(), M.AttnMeta(cache=cache, block_table=block_table, cache_seqlens=lens))
            for b in range(3):
                T = prompt_lens[b] + step + 1
                full = ours(ids[b, :T], torch.arange(T), M.AttnMeta.packed([T], "cpu"))[-1]
                assert (logits[b] - full).abs().max().item() < 1e-5
            lens = lens + 1


def test_chunked_logprobs_match_log_softmax():
    torch.manual_seed(0)
    N, C, V, T = 37, 16, 300, 0.7
    hidden = torch.randn(N, C, requires_grad=True)
    weight = torch.randn(V, C, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    logp, ent = chunked_logprobs_entropy(hidden, weight, targets, temperature=T, chunk_size=8)
    ref_all = F.log_softmax((hidden @ weight.T) / T, dim=-1)
    ref_logp = ref_all[torch.arange(N), targets]
    ref_ent = -(ref_all.exp() * ref_all).sum(-1)
    assert (logp - ref_logp).abs().max().item() < 1e-5
    assert (ent - ref_ent).abs().max().item() < 1e-5
    grads = torch.autograd.grad((logp * 1.3 + ent * 0.2).sum(), (hidden, weight))
    ref_grads = torch.autograd.grad((ref_logp * 1.3 + ref_ent * 0.2).sum(), (hidden, weight))
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max().item() < 1e-4


def test_forward_targets_equal_logits_path(tiny_checkpoint):
    ours, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    ids, lengths = random_batch(ours.cfg.vocab_size, [6, 10])
    targets = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        logits = ours.forward_padded(ids, lengths)
        logp, ent = ours.forward_padded(ids, lengths, targets=targets, chunk_size=4)
    ref = F.log_softmax(logits, -1)
    for b, T in enumerate(lengths.tolist()):
        assert torch.allclose(logp[b, :T], ref[b, :T].gather(-1, targets[b, :T, None])[:, 0], atol=1e-5)
        assert torch.allclose(ent[b, :T], -(ref[b, :T].exp() * ref[b, :T]).sum(-1), atol=1e-5)


def test_save_round_trip_through_transformers(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM
    for tie in (True, False):
        ours, _ = M.load_model(tiny_checkpoint("qwen2", tie), tokenizer=False)
        with torch.no_grad():  # a change, so the round trip cannot pass by re-reading the original
            ours.layers[0].mlp.up_proj.weight.mul_(1.5)
        out = tmp_path / f"saved-{tie}"
        M.save_hf(ours.state_dict(), ours.hf_config, str(out))
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        ids, lengths = random_batch(ours.cfg.vocab_size, [11])
        with torch.no_grad():
            assert (hf(ids).logits[0] - ours.forward_padded(ids, lengths)[0]).abs().max().item() < 1e-5
        reloaded, _ = M.load_model(str(out), tokenizer=False)
        assert torch.equal(reloaded.layers[0].mlp.up_proj.weight, ours.layers[0].mlp.up_proj.weight)


def test_embedded_default_matches_gguf_reference(default_model):
    """Logits vs transformers' own GGUF loader (the original file, not our cache), and greedy decoding."""
    import importlib.util
    from transformers import AutoModelForCausalLM
    ours, tok = default_model
    package = list(importlib.util.find_spec(M.GGUF_PACKAGE).submodule_search_locations)[0]
    ref = AutoModelForCausalLM.from_pretrained(package, gguf_file=M.GGUF_FILE, dtype=torch.float32).eval()
    ids = torch.tensor(tok("Question: What is 7 + 5?\nAnswer:")["input_ids"])
    with torch.no_grad():
        got = ours(ids, torch.arange(len(ids)), M.AttnMeta.packed([len(ids)], "cpu"))
        assert (got - ref(ids[None]).logits[0]).abs().max().item() < 1e-3
        ref_greedy = ref.generate(ids[None], max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
        seq = ids.tolist()
        for _ in range(16):  # greedy with full forwards: no cache involved
            T = len(seq)
            logits = ours(torch.tensor(seq), torch.arange(T), M.AttnMeta.packed([T], "cpu"), logits_index=[T - 1])
            seq.append(int(logits[0].argmax()))
    ours_greedy = seq[len(ids):]
    assert len(ref_greedy) == 16 or ref_greedy[-1] == tok.eos_token_id  # transformers stops at EOS
    assert ours_greedy[:len(ref_greedy)] == ref_greedy


def run_check(path):
    return subprocess.run([sys.executable, os.path.join(ROOT, "model.py"), "--check", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_bad_inputs_give_one_clear_line(tiny_checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        M.load_model(str(empty))
    result = run_check(empty)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0 and "no config.json" in result.stderr

    folder = tiny_checkpoint("llama")
    config = json.load(open(os.path.join(folder, "config.json")))
    json.dump({**config, "model_type": "gpt_neox"}, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(ValueError, match="model_type not supported: 'gpt_neox'"):
        M.load_model(folder)
    json.dump({**config, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(ValueError, match="rope scaling not supported: yarn"):
        M.load_model(folder)
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))

    weights = os.path.join(folder, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: cannot read safetensors"):
        M.load_model(folder)
    result = run_check(folder)
    assert result.returncode != 0 and "cannot read safetensors" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_weight_is_named(tiny_checkpoint):
    from safetensors.torch import load_file, save_file
    folder = tiny_checkpoint("llama")
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="missing weight 'layers.1.mlp.up_proj.weight'"):
        M.load_model(folder)


def test_check_cli_passes_on_good_checkpoint(tiny_checkpoint):
    result = run_check(tiny_checkpoint("qwen3"))
    assert result.returncode == 0, result.stderr
    assert "max abs logit difference" in result.stdout


@pytest.mark.parametrize("content, expected", [("{not json", "cannot read the model config"),
                                                ("[1, 2]", "expected a JSON object"), ("", "cannot read")])
def test_broken_config_json_is_named(tmp_path, content, expected):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match=expected) as info:
        M.load_model(str(tmp_path))
    assert str(tmp_path / "config.json") in str(info.value)


def test_load_tokenizer_names_a_folder_without_tokenizer_files(tiny_checkpoint, chat_model_factory, tiny_chat_model):
    bare = tiny_checkpoint()
    with pytest.raises(ValueError, match=f"^{bare}: no tokenizer files in the model folder$"):
        M.load_tokenizer(bare)
    assert M.load_model(bare)[1] is None  # load_model still answers None rather than failing
    long_context = chat_model_factory(max_position_embeddings=1 << 20)  # conftest's factory: one folder per config
    assert chat_model_factory(max_position_embeddings=1 << 20) == long_context != tiny_chat_model
    assert chat_model_factory() == tiny_chat_model
    contexts = [json.load(open(os.path.join(f, "config.json")))["max_position_embeddings"]
                for f in (tiny_chat_model, long_context)]
    assert contexts == [256, 1 << 20]
    tokenizer = M.load_tokenizer(long_context)
    assert tokenizer.decode(tokenizer.encode("What is 2 + 3?", add_special_tokens=False)) == "What is 2 + 3?"
    assert len(tokenizer) == 49152


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
                         ids=["umask-022", "umask-027"])
def test_save_hf_files_are_readable_by_the_group(tiny_chat_model, tmp_path, umask, file_mode, dir_mode):
    """safetensors writes 0600; save_hf leaves what any file written under the umask gets (the cached default too)."""
    ours, tokenizer = M.load_model(tiny_chat_model)
    old = os.umask(umask)
    try:
        M.save_hf(ours.state_dict(), ours.hf_config, str(tmp_path / "saved"), tokenizer)
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / "saved" / name).st_mode & 0o777 for name in os.listdir(tmp_path / "saved")}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(modes)
    assert modes == dict.fromkeys(modes, file_mode)
    assert os.stat(tmp_path / "saved").st_mode & 0o777 == dir_mode
