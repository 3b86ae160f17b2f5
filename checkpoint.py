"""Training checkpoints that survive crashes, corruption and preemption, and resume exactly.

Layout of RUN/checkpoints/step_000040/:
    policy/          HF-format folder (config.json, model.safetensors, tokenizer): loads in transformers and model.py
    optim/           AdamW state via torch.distributed.checkpoint (sharded per rank under FSDP)
    rng_<rank>.pt    torch / numpy / python RNG states of each rank
    trainer_state.json   step, run id, curriculum position, initial perplexities, config
    complete.json    written last: run id, step, and for every file above its size and a CRC-32 per 64 MiB chunk
A checkpoint is written to `step_XXXXXX.tmp` and renamed when complete, so a crash never leaves a half-written
latest checkpoint; stale .tmp folders (kill -9 mid-save) are removed at the next start, and a failed save (disk
full: said so, with the path) removes its own. Files are made readable by the group (mode 0666 & ~umask;
safetensors writes 0600).

Integrity is checked by content: resume recomputes every chunk's CRC-32 and compares it with complete.json, then
parses trainer_state.json, the rank's RNG file and the safetensors header, and refuses non-finite weights. Any
failure prints "checkpoint X is not usable: <reason>; trying the previous one", renames the folder to
X.unusable (kept for inspection, never resumed or rotated) and tries the next older one.
Why CRC-32 over 64 MiB chunks (zlib, stdlib): the fastest stdlib digest measured here, and chunks let threads
and ranks share the work. `python benchmarks/checksum_bench.py` (1 GiB from the page cache, 2 cores shared with
other jobs), MB/s on one core over two runs: crc32 1668-2303, adler32 1265-1991, sha1 825-1325, sha256 673-1223,
blake2b 354-676, md5 493-576; digests() with 2 threads 1191-1701 MB/s. So a 15 GB file costs ~7-9 s on one
core of this machine. CRC-32 catches every burst of <= 32 bits and misses other random damage with odds 2^-32
per chunk: it detects accidental corruption, not tampering.

Rotation keeps the `keep` newest checkpoints of THIS run (run id in complete.json), always including the one just
written; checkpoints of other runs (or older code, without a run id) are never deleted.

Signals (StopSignal): the first SIGTERM / SIGINT sets a flag the loop polls at safe points (rollout.generate's
should_stop, phase boundaries, after a save); a second one exits at once (os._exit, code 128 + signal).
"""
import errno
import json
import os
import random
import re
import shutil
import signal
import threading
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

import model as M
from distributed import max_over_ranks

CHUNK_BYTES = 64 << 20  # one CRC-32 per chunk: threads and ranks hash chunks in parallel
STEP_DIR = re.compile(r"step_\d{6,}")  # complete checkpoints; .tmp (in progress) and .unusable are other names
DISK_FULL_BYTES = 64 << 20  # a failed save with less free space than this was a full disk


# ----------------------------------------------------------------------------- signals

class StopSignal:
    """SIGTERM / SIGINT -> `stop()` is True from then on (the loop stops at its next safe point and saves);
    a second signal exits at once. A context manager: the previous handlers come back on exit."""

    def __init__(self, verbose: bool = True):
        self.name, self.verbose = None, verbose

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.name is not None:  # os.write, not print: a handler may interrupt a print to the same stream
            os.write(2, f"\n{name} again: exiting now, nothing more is saved\n".encode())
            os._exit(128 + signum)
        self.name = name
        if self.verbose:
            os.write(2, f"\n{name}: stopping at the next safe point (send it again to exit at once)\n".encode())

    def __call__(self) -> bool:
        return self.name is not None


# ----------------------------------------------------------------------------- RNG

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


def _read_rng(path: str) -> dict:
    try:
        state = torch.load(path, weights_only=False)
    except Exception as e:
        raise ValueError(f"{os.path.basename(path)} is not readable ({type(e).__name__}: {e})") from None
    ok = isinstance(state, dict) and {"torch", "numpy", "python"} <= set(state)
    if not ok or not isinstance(state["torch"], torch.Tensor) or state["torch"].shape != torch.get_rng_state().shape:
        raise ValueError(f"{os.path.basename(path)} does not hold the RNG states")
    return state


# ----------------------------------------------------------------------------- folders

def checkpoint_dirs(out_dir: str) -> list[str]:
    """Checkpoint folders (renamed into place, so complete unless damaged later), newest first."""
    root = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, n) for n in sorted(os.listdir(root), reverse=True) if STEP_DIR.fullmatch(n)]


def latest(out_dir: str) -> str | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[0] if dirs else None


def remove_stale(out_dir: str) -> list[str]:
    """Delete step_*.tmp folders (saves that never finished: kill -9, a crash); returns their names."""
    root = os.path.join(out_dir, "checkpoints")
    stale = sorted(n for n in os.listdir(root) if n.endswith(".tmp")) if os.path.isdir(root) else []
    for name in stale:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return stale


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files
                  if f != "complete.json")


def _manifest(folder: str) -> dict:
    with open(os.path.join(folder, "complete.json")) as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    return manifest


def _run_id(folder: str) -> str | None:
    try:
        return _manifest(folder).get("run_id")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- digests

_buffers = threading.local()  # one reusable chunk buffer per hashing thread (a fresh 64 MiB each time halves the speed)


def _crc_chunk(path: str, index: int) -> int:
    if len(getattr(_buffers, "chunk", b"")) != CHUNK_BYTES:
        _buffers.chunk = bytearray(CHUNK_BYTES)
    view = memoryview(_buffers.chunk)
    with open(path, "rb", buffering=0) as f:
        f.seek(index * CHUNK_BYTES)
        n = f.readinto(view)
    return zlib.crc32(view[:n])  # releases the GIL: threads hash in parallel


def _hash_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def digests(folder: str, names: list[str], is_dist: bool = False) -> dict:
    """{name: {"bytes": size, "crc32": [8 hex digits per CHUNK_BYTES chunk]}} of files in `folder`. The chunks are
    shared round-robin over the ranks (a collective under torchrun: every rank calls it and gets the whole dict)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if is_dist else (0, 1)
    sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in names}
    chunks = [(n, i) for n in names for i in range(max(1, -(-sizes[n] // CHUNK_BYTES)))]
    mine = chunks[rank::world]
    with ThreadPoolExecutor(_hash_threads()) as pool:
        crcs = dict(zip(mine, pool.map(lambda c: _crc_chunk(os.path.join(folder, c[0]), c[1]), mine)))
    if is_dist:
        parts = [None] * world
        dist.all_gather_object(parts, crcs)
        crcs = {k: v for part in parts for k, v in part.items()}
    return {n: {"bytes": sizes[n], "crc32": [f"{crcs[c]:08x}" for c in chunks if c[0] == n]} for n in names}


# ----------------------------------------------------------------------------- save

@contextmanager
def _quiet_dcp(is_dist: bool):
    """dcp.save / dcp.load warn "torch.distributed is disabled" on every single-process call (no group exists
    by design here): silence exactly that warning."""
    with warnings.catch_warnings():
        if not is_dist:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier(is_dist):
    if is_dist:
        dist.barrier()


def save(out_dir, step, full_state, hf_config, tokenizer, policy, optimizer, trainer_state, is_dist, is_master,
         keep=2, run_id=""):
    """Write checkpoint `step` atomically (every rank calls this: the optimizer save is a collective).

    Raises ValueError (nothing left behind) for non-finite weights, a full disk or any other write failure."""
    final = os.path.join(out_dir, "checkpoints", f"step_{step:06d}")
    tmp = final + ".tmp"
    bad = next((name for name, t in full_state.items() if not torch.isfinite(t).all()), None)
    if bad is not None:  # every rank holds the full state: all refuse alike
        raise ValueError(f"step {step}: the policy weights are not finite ({bad} has NaN/inf); not saving them "
                         "over the good checkpoints")
    try:
        if is_master:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)  # a step redone after resuming from an older checkpoint
            M.save_hf(full_state, hf_config, os.path.join(tmp, "policy"), tokenizer)
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump({**trainer_state, "step": step, "run_id": run_id}, f, indent=2)
        _barrier(is_dist)
        torch.save(rng_state(), os.path.join(tmp, f"rng_{dist.get_rank() if is_dist else 0}.pt"))
        with _quiet_dcp(is_dist):
            dcp.save(get_optimizer_state_dict(policy, optimizer), checkpoint_id=os.path.join(tmp, "optim"))
        _barrier(is_dist)
        files = digests(tmp, _files(tmp), is_dist)
        if is_master:
            with open(os.path.join(tmp, "complete.json"), "w") as f:
                json.dump({"step": step, "run_id": run_id, "chunk_bytes": CHUNK_BYTES, "files": files}, f, indent=1)
            M.make_group_readable(tmp)
            os.replace(tmp, final)
            _rotate(out_dir, keep, run_id, final)
    except (Exception, CheckpointException) as e:  # dcp's errors are BaseExceptions
        free = shutil.disk_usage(os.path.dirname(final)).free if os.path.isdir(os.path.dirname(final)) else 0
        if is_master:
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(e) or free < DISK_FULL_BYTES:
            raise ValueError(f"disk full while writing checkpoint {tmp} ({free / 2**20:.0f} MiB free; "
                             f"{type(e).__name__}: {e}); the partial folder was removed. Free space (or "
                             f"--keep-checkpoints) and continue with --resume auto") from None
        raise ValueError(f"cannot write checkpoint {tmp} ({type(e).__name__}: {e}); the partial folder was removed")
    _barrier(is_dist)
    return final


def _is_disk_full(error: BaseException | None) -> bool:
    while error is not None:  # torch.save's zip writer hides ENOSPC as "unexpected pos ..."; free space tells then
        if isinstance(error, OSError) and error.errno == errno.ENOSPC or "No space left" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _rotate(out_dir: str, keep: int, run_id: str, saved: str):
    """Delete this run's checkpoints beyond the `keep` newest; `saved` (just written) always stays."""
    mine = [d for d in checkpoint_dirs(out_dir) if d != saved and _run_id(d) == run_id]
    for old in mine[max(keep - 1, 0):]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- resume

def verify(folder: str, is_dist: bool = False) -> str | None:
    """None when every file of `folder` matches complete.json (sizes and chunk CRCs), else the reason it does not.
    A collective under torchrun (the ranks share the hashing)."""
    try:
        manifest = _manifest(folder)
    except FileNotFoundError:
        return "no complete.json (the save did not finish)"
    except (OSError, ValueError) as e:
        return f"complete.json is unreadable ({e})"
    files = manifest.get("files")
    if files is None:  # older checkpoints: {name: size}, sizes only
        files = {name: {"bytes": size} for name, size in manifest.items()}
    for name, entry in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != entry.get("bytes"):
            return f"{name} has {os.path.getsize(path)} bytes, expected {entry.get('bytes')} (truncated?)"
    if manifest.get("chunk_bytes") not in (None, CHUNK_BYTES):
        return f"complete.json uses {manifest['chunk_bytes']}-byte chunks, this code {CHUNK_BYTES}"
    checked = [name for name, entry in files.items() if "crc32" in entry]
    for name, got in digests(folder, checked, is_dist).items():
        bad = [i for i, (a, b) in enumerate(zip(got["crc32"], files[name]["crc32"])) if a != b]
        if bad or len(got["crc32"]) != len(files[name]["crc32"]):
            lo = bad[0] * CHUNK_BYTES if bad else 0
            hi = min(lo + CHUNK_BYTES, got["bytes"])
            return f"{name} does not match its checksum (bytes {lo}..{hi} changed: corrupt)"
    return None


@dataclass
class Found:
    """A checkpoint that passed every check, read into memory (its optimizer state is read by restore())."""
    folder: str
    state: dict  # trainer_state.json
    rng: dict  # this rank's RNG states
    weights: dict  # policy tensors, names without `model.`


def _read(folder: str, rank: int) -> Found:
    """trainer_state.json, this rank's RNG file and the policy weights; ValueError with the reason if unusable."""
    try:
        with open(os.path.join(folder, "trainer_state.json")) as f:
            state = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"trainer_state.json is not readable JSON ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "curriculum" not in state:
        raise ValueError("trainer_state.json lacks the step or the curriculum position")
    rng_file = os.path.join(folder, f"rng_{rank}.pt")
    rng = _read_rng(rng_file if os.path.exists(rng_file) else os.path.join(folder, "rng_0.pt"))
    weights = M.read_state_dict(os.path.join(folder, "policy"))  # ValueError naming the file when unreadable
    bad = next((name for name, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise ValueError(f"the policy weights are not finite ({bad} has NaN/inf)")
    return Found(folder, state, rng, weights)


def find(resume: str, out_dir: str, is_dist: bool, log: bool = True) -> Found | None:
    """The checkpoint to resume from: `resume` itself, or for 'auto' the newest usable one in out_dir (each unusable
    one is said so, renamed to .unusable, and the previous tried). None when 'auto' finds none."""
    rank = dist.get_rank() if is_dist else 0
    if resume != "auto" and not os.path.isdir(resume):
        raise ValueError(f"--resume {resume}: no such checkpoint folder")
    for folder in checkpoint_dirs(out_dir) if resume == "auto" else [resume]:
        reason, found, mine = verify(folder, is_dist), None, False  # verify's reason is the same on every rank
        if reason is None:
            try:
                found = _read(folder, rank)
            except ValueError as e:
                reason, mine = (f"rank {rank}: {e}" if is_dist else str(e)), True
        if is_dist and max_over_ranks(int(reason is not None)) and reason is None:
            reason = "another rank could not read it (see its message)"
        if reason is None:
            return found
        if resume != "auto":
            raise ValueError(f"--resume {resume}: checkpoint is not usable: {reason}")
        if log or mine:
            print(f"checkpoint {folder} is not usable: {reason}; trying the previous one "
                  f"(it is kept as {os.path.basename(folder)}.unusable)", flush=True)
        _barrier(is_dist)
        if rank == 0:
            shutil.rmtree(folder + ".unusable", ignore_errors=True)
            os.replace(folder, folder + ".unusable")
        _barrier(is_dist)
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


def restore(found: Found, policy, optimizer, is_dist: bool):
    """Load the found checkpoint's weights and optimizer state into policy / optimizer (every rank)."""
    weights = dict(found.weights)
    if "lm_head.weight" not in weights:  # tied embeddings are saved once
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    try:
        if is_dist:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
            set_model_state_dict(policy, weights, options=options)
        else:
            with torch.no_grad():
                for name, param in policy.named_parameters():
                    param.copy_(weights[name])
        _init_optimizer_state(optimizer)
        optim_state = get_optimizer_state_dict(policy, optimizer)
        with _quiet_dcp(is_dist):
            dcp.load(optim_state, checkpoint_id=os.path.join(found.folder, "optim"))
        set_optimizer_state_dict(policy, optimizer, optim_state)
    except (KeyError, RuntimeError, ValueError, CheckpointException) as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"checkpoint {found.folder} does not fit this model/optimizer ({type(e).__name__}: "
                         f"{first_line})") from None
