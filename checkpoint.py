"""Training checkpoints that survive crashes and resume exactly.

Layout of RUN/checkpoints/step_000040/:
    policy/          HF-format folder (config.json, model.safetensors, tokenizer): loads in transformers and model.py
    optim/           AdamW state via torch.distributed.checkpoint (sharded per rank under FSDP)
    rng_<rank>.pt    torch / numpy / python RNG states of each rank
    trainer_state.json   step, curriculum position, initial perplexities, config
    complete.json    size of every file above, written last: its presence and the sizes define "complete"
A checkpoint is written to `step_XXXXXX.tmp` and renamed when complete, so a crash never leaves a
half-written latest checkpoint; resume (`--resume auto`) takes the newest complete one and, when its files
do not match complete.json (e.g. truncated), says so and falls back to the previous one.
"""
import json
import os
import random
import shutil
import signal

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

import model as M


def install_stop_handler():
    """SIGTERM / SIGINT set a flag; the loop finishes its step, saves, and exits. Returns flag reader."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return lambda: flag["stop"]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(out_dir: str) -> list[str]:
    """Complete-looking checkpoint folders, newest first."""
    root = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = sorted((n for n in os.listdir(root) if n.startswith("step_") and not n.endswith(".tmp")), reverse=True)
    return [os.path.join(root, n) for n in names]


def latest(out_dir: str) -> str | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[0] if dirs else None


def _file_sizes(folder: str) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(folder) for f in files if f != "complete.json"}


def save(out_dir, step, full_state, hf_config, tokenizer, policy, optimizer, trainer_state, is_dist, is_master, keep=2):
    """Write checkpoint `step` atomically (every rank calls this: the optimizer save is a collective)."""
    final = os.path.join(out_dir, "checkpoints", f"step_{step:06d}")
    tmp = final + ".tmp"
    if is_master:
        shutil.rmtree(tmp, ignore_errors=True)
        M.save_hf(full_state, hf_config, os.path.join(tmp, "policy"), tokenizer)
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump({**trainer_state, "step": step}, f, indent=2)
    if is_dist:
        dist.barrier()
    rank = dist.get_rank() if is_dist else 0
    torch.save(rng_state(), os.path.join(tmp, f"rng_{rank}.pt"))
    dcp.save(get_optimizer_state_dict(policy, optimizer), checkpoint_id=os.path.join(tmp, "optim"))
    if is_dist:
        dist.barrier()
    if is_master:
        with open(os.path.join(tmp, "complete.json"), "w") as f:
            json.dump(_file_sizes(tmp), f, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    if is_dist:
        dist.barrier()
    return final


def verify(folder: str) -> str | None:
    """None when `folder` is a complete, readable checkpoint, else the reason it is not."""
    manifest = os.path.join(folder, "complete.json")
    if not os.path.exists(manifest):
        return "no complete.json (the save did not finish)"
    expected = json.load(open(manifest))
    for name, size in expected.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path)} bytes, expected {size} (truncated?)"
    return None


def _init_optimizer_state(optimizer):
    """AdamW creates its state lazily; dcp.load needs the tensors to exist. One zero-lr step makes them."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr


def load(resume: str, out_dir: str, policy, optimizer, is_dist: bool, log: bool = True):
    """Restore policy + optimizer from `resume` ('auto' = newest good checkpoint in out_dir).

    Returns the trainer state dict (with 'rng': this rank's RNG state), or None when 'auto' finds nothing.
    """
    candidates = checkpoint_dirs(out_dir) if resume == "auto" else [resume]
    if resume != "auto" and not os.path.isdir(resume):
        raise ValueError(f"--resume {resume}: no such checkpoint folder")
    for folder in candidates:
        problem = verify(folder)
        if problem is not None:
            if log:
                print(f"checkpoint {folder} is not usable: {problem}; trying the previous one")
            continue
        state_dict = M.read_state_dict(os.path.join(folder, "policy"))
        if "lm_head.weight" not in state_dict:  # tied embeddings are saved once
            state_dict["lm_head.weight"] = state_dict["embed_tokens.weight"]
        if is_dist:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
            set_model_state_dict(policy, state_dict, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
        else:
            with torch.no_grad():
                for name, param in policy.named_parameters():
                    param.copy_(state_dict[name])
        _init_optimizer_state(optimizer)
        optim_state = get_optimizer_state_dict(policy, optimizer)
        dcp.load(optim_state, checkpoint_id=os.path.join(folder, "optim"))
        set_optimizer_state_dict(policy, optimizer, optim_state)
        state = json.load(open(os.path.join(folder, "trainer_state.json")))
        rank = dist.get_rank() if is_dist else 0
        rng_file = os.path.join(folder, f"rng_{rank}.pt")
        state["rng"] = torch.load(rng_file if os.path.exists(rng_file) else os.path.join(folder, "rng_0.pt"), weights_only=False)
        if log:
            print(f"resumed from {folder} (step {state['step']})")
        return state
    if resume != "auto":
        raise ValueError(f"--resume {resume}: checkpoint is not usable")
    if log and candidates:
        print("no usable checkpoint found; starting from scratch")
    return None
