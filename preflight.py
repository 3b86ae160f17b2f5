"""Starting a run: what train.py checks before any work starts (so that bad input costs a one-line error and
nothing is lost), then setup(), which builds what the loop needs, heavy parts last.

- validate(cfg): every TrainConfig field (after the presets are filled in), each problem naming its flag.
- check_out_dir / check_run_folder: the run folder is writable (found before the model loads; nothing is
  created), and a new run never goes into a folder that holds another run's metrics or checkpoints
  (--resume auto continues it, --overwrite replaces it).
- check_resume: a resumed run keeps the settings it was trained with (changed flags are named; allowed with
  --allow-config-change) and --total-steps is not below the checkpoint's step.
- fit_context: prompts that do not fit the model's context next to the response budget (or are longer than
  --max-prompt-tokens) are skipped, each named by file and line; then a response budget that would overflow
  the context next to the longest prompt left is capped, with a warning. A prompt keeps at least half the
  context: budget cap B = min(max_new_tokens, context / 2), prompt limit = context - B.
- setup(): the data, schedule, curriculum and the checkpoint to resume (checkpoint.find: verified by content)
  are read and checked, and only then the model and optimizer are built and the checkpoint restored;
  claim_run_folder() then writes config.json and repairs the append-only files (master only).
"""
import dataclasses
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

import checkpoint as ckpt
import model as M
from cli import flag
from curriculum import SCHEDULES, ContextRule, Curriculum, make_curriculum, overlong_buffer_for
import rollout as R
from attention import BACKENDS
from distributed import memory_plan, refresh_inference_copy, shard_policy
from loss import ADV_SCALES, AGG_MODES, AMPLIFY_MODES, VARIANT_FIELDS, LossConfig
from plot import repair_jsonl, tracker_error
from problems import TEMPLATES, Problem, PromptConfig, build_prompt, load_problems
from strategic_grams import PlanningMasker, load_grams
import validation

# Fields a resumed run may change: where and how long it runs, how often it saves and logs, and compute layout
# (micro-batching, sampler slots, prompt sharing, activation checkpointing, precision and kernels change the update
# by rounding only). Validation settings are not among them: the held-out problems are taken out of the training data.
RESUME_MAY_CHANGE = {"out_dir", "resume", "total_steps", "stop_after", "save_every", "keep_checkpoints",
                     "log_rollouts_every", "reward_workers", "max_num_seqs",
                     "micro_batch_tokens", "share_prompt", "activation_checkpointing", "preset", "overwrite",
                     "precision", "attn", "decode", "kv_memory_fraction", "dist_timeout",
                     "allow_config_change"}
RUN_FILES = ("metrics.jsonl", "rollouts.jsonl", "config.json", "dynamics.png")  # --overwrite removes them, checkpoints/


def validate(cfg, world: int = 1) -> None:
    """Raise one ValueError listing every field of the resolved TrainConfig that is out of range (flag named)."""
    bad = []

    def need(ok, field, rule):
        if not ok:
            bad.append(f"{flag(field)} {getattr(cfg, field)!r}: {rule}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    need(isinstance(cfg.model, str) and cfg.model.strip(), "model", "must be a model folder or 'default'")
    need(isinstance(cfg.data, str) and cfg.data.strip(), "data", "must name the training data")
    need(cfg.curriculum in SCHEDULES, "curriculum", f"must be one of {', '.join(SCHEDULES)}")
    need(cfg.template in TEMPLATES, "template", f"must be one of {', '.join(TEMPLATES)}")
    need(cfg.agg in AGG_MODES, "agg", f"must be one of {', '.join(AGG_MODES)}")
    need(cfg.adv_scale in ADV_SCALES, "adv_scale", f"must be one of {', '.join(ADV_SCALES)}")
    need(cfg.hicra_tokens in AMPLIFY_MODES, "hicra_tokens", f"must be one of {', '.join(AMPLIFY_MODES)}")
    for field in ("total_steps", "prompts_per_step", "max_new_tokens", "max_num_seqs", "micro_batch_tokens",
                  "keep_checkpoints", "eval_limit"):
        need(is_int(getattr(cfg, field)) and getattr(cfg, field) >= 1, field, "must be a whole number >= 1")
    for field in ("warmup_steps", "max_sampling_rounds", "reward_workers", "save_every", "log_rollouts_every",
                  "eval_every", "stop_after", "seed", "max_prompt_tokens"):
        need(is_int(getattr(cfg, field)) and getattr(cfg, field) >= 0, field, "must be a whole number >= 0")
    need(is_int(cfg.group_size) and cfg.group_size >= 2, "group_size",
         "must be >= 2 (advantages compare the samples of a prompt: one sample has nothing to compare with)")
    if is_int(cfg.prompts_per_step) and world > 1:
        need(cfg.prompts_per_step % world == 0, "prompts_per_step",
             f"must be a multiple of the {world} ranks (each rank samples the same number of prompts)")
    need(cfg.ppo_epochs is None or is_int(cfg.ppo_epochs) and cfg.ppo_epochs >= 1, "ppo_epochs",
         "must be >= 1 (or none: the level's)")
    for field in ("lr", "temperature", "grad_clip"):
        need(is_num(getattr(cfg, field)) and getattr(cfg, field) > 0, field, "must be a number > 0")
    for field in ("weight_decay", "kl_coef", "entropy_coef", "hicra_alpha", "format_penalty"):
        need(is_num(getattr(cfg, field)) and getattr(cfg, field) >= 0, field, "must be a number >= 0")
    need(is_num(cfg.top_p) and 0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]")
    need(is_num(cfg.hicra_top_q) and 0 < cfg.hicra_top_q <= 1, "hicra_top_q", "must be in (0, 1]")
    need(cfg.eps_low is None or is_num(cfg.eps_low) and 0 <= cfg.eps_low < 1, "eps_low",
         "must be in [0, 1) (the ratio is clipped at 1 - eps_low)")
    need(cfg.eps_high is None or is_num(cfg.eps_high) and cfg.eps_high >= 0, "eps_high", "must be a number >= 0")
    if is_int(cfg.max_new_tokens):
        need(is_int(cfg.overlong_buffer) and -1 <= cfg.overlong_buffer < cfg.max_new_tokens, "overlong_buffer",
             f"must be -1 (a quarter of each level's length), 0 (off) or below --max-new-tokens {cfg.max_new_tokens}")
    need(cfg.system_prompt is None or isinstance(cfg.system_prompt, str), "system_prompt", "must be text, default or none")
    need(is_num(cfg.grams_drop) and 0 <= cfg.grams_drop < 1, "grams_drop", "must be in [0, 1)")
    need(is_int(cfg.grams_seed), "grams_seed", "must be a whole number")
    for field in ("adaptive_p_min", "adaptive_p_max", "context_cap"):
        need(getattr(cfg, field) is None or is_int(getattr(cfg, field)) and getattr(cfg, field) >= 1, field,
             "must be a whole number >= 1 (or none)")
    if is_int(cfg.adaptive_p_min) and is_int(cfg.adaptive_p_max):
        need(cfg.adaptive_p_min <= cfg.adaptive_p_max, "adaptive_p_max", f"must be >= --adaptive-p-min {cfg.adaptive_p_min}")
    need(cfg.context_factor is None or is_num(cfg.context_factor) and cfg.context_factor > 1, "context_factor",
         "must be a number > 1 (or none: off)")
    need(is_num(cfg.context_threshold) and 0 <= cfg.context_threshold < 1, "context_threshold", "must be in [0, 1)")
    for field in ("schedule_overrides", "grams"):
        need(getattr(cfg, field) is None or os.path.isfile(getattr(cfg, field)), field, "must be an existing file")
    need(cfg.eval_data is None or isinstance(cfg.eval_data, str) and cfg.eval_data.strip(), "eval_data",
         "must name validation data (or none)")
    need(cfg.precision in ("fp32", "bf16"), "precision", "must be auto, fp32 or bf16")
    need(cfg.attn in BACKENDS, "attn", f"must be one of {', '.join(BACKENDS)}")
    need(cfg.decode in R.DECODE_MODES, "decode", f"must be one of {', '.join(R.DECODE_MODES)}")
    need(cfg.decode != "graph" or torch.cuda.is_available(), "decode", "graph needs CUDA (static: the same step)")
    need(is_num(cfg.kv_memory_fraction) and 0 < cfg.kv_memory_fraction <= 1, "kv_memory_fraction", "must be in (0, 1]")
    need(is_num(cfg.dist_timeout) and cfg.dist_timeout > 0, "dist_timeout", "must be a number of seconds > 0")
    need(cfg.resume in (None, "auto") or os.path.isdir(cfg.resume), "resume", "must be 'auto' or a checkpoint folder")
    trackers = [t.strip() for t in cfg.log_to.split(",") if t.strip()] if isinstance(cfg.log_to, str) else [None]
    if (problem := tracker_error(trackers)) is not None:
        bad.append(problem)
    need(not (cfg.overwrite and cfg.resume), "overwrite", "starts a new run: it cannot be combined with --resume")
    need(cfg.mismatch_correction == "none" or cfg.recompute_old_logprobs, "mismatch_correction",
         "needs --recompute-old-logprobs (without it the old logprobs are the sampler's: nothing to correct)")
    if not bad:  # the loss options' ranges and combinations: LossConfig checks them, here with the flag's name
        try:
            LossConfig(eps_low=0.2 if cfg.eps_low is None else cfg.eps_low, agg=cfg.agg, kl_coef=cfg.kl_coef,
                       eps_high=0.28 if cfg.eps_high is None else cfg.eps_high, entropy_coef=cfg.entropy_coef,
                       **{k: getattr(cfg, k) for k in VARIANT_FIELDS})
        except ValueError as e:
            field = re.match(r"LossConfig\.(\w+) (.*)", str(e))
            bad.append(f"{flag(field.group(1))} {getattr(cfg, field.group(1), '')!r}: {field.group(2)}" if field else str(e))
    if bad:
        raise ValueError("; ".join(bad))


# ----------------------------------------------------------------------------- the run folder

def check_out_dir(path: str) -> None:
    """--out-dir is a folder that can be written, or can be created: tried in the nearest existing ancestor."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"--out-dir {path}: {probe} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".write-test-").cleanup()
    except OSError as e:
        raise ValueError(f"--out-dir {path}: cannot write in {probe} ({e.strerror})") from None


def run_contents(out_dir: str) -> str:
    """What a new run would destroy in out_dir: its metrics rows and checkpoints ('' when none)."""
    held = []
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if os.path.isfile(metrics):
        with open(metrics, "rb") as f:
            rows = sum(1 for line in f if line.strip())
        if rows:
            held.append(f"{rows} rows in metrics.jsonl")
    root = os.path.join(out_dir, "checkpoints")
    names = sorted(n for n in os.listdir(root) if not n.endswith(".tmp")) if os.path.isdir(root) else []
    if names:
        held.append(f"{len(names)} checkpoints, the last {names[-1]}")
    return ", ".join(held)


def check_run_folder(cfg) -> None:
    """A new run (no --resume, or --resume of another folder's checkpoint) may not write into a folder that holds
    a run, unless --overwrite."""
    if cfg.overwrite or cfg.resume == "auto":
        return
    held = run_contents(cfg.out_dir)
    if held and cfg.resume is None:
        raise ValueError(f"{cfg.out_dir} already holds a run ({held}): continue it with --resume auto, choose "
                         "another --out-dir, or pass --overwrite to replace it")
    own = os.path.realpath(os.path.join(cfg.resume or "", "..", "..")) == os.path.realpath(cfg.out_dir)
    if held and not own:
        raise ValueError(f"{cfg.out_dir} holds another run ({held}): continue {cfg.resume} in a new --out-dir")


def clear_run(out_dir: str) -> None:
    """--overwrite: remove the previous run's files (only those train.py writes)."""
    shutil.rmtree(os.path.join(out_dir, "checkpoints"), ignore_errors=True)
    for name in RUN_FILES:
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))


# ----------------------------------------------------------------------------- resume

def _same(a, b) -> bool:
    if a == b:
        return True
    paths = isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b)
    return paths and os.path.realpath(a) == os.path.realpath(b)


def check_resume(cfg, state: dict, folder: str) -> list[str]:
    """Refuse a resume that cannot continue the checkpoint's run as it was; returns the changed flags (allowed
    by --allow-config-change), [] when none."""
    if cfg.total_steps < state["step"]:
        raise ValueError(f"--total-steps {cfg.total_steps} is below the step of {folder} ({state['step']}): "
                         "raise it to continue, or --resume an earlier checkpoint")
    saved = state.get("config") or {}
    changed = [f"{flag(k)} {getattr(cfg, k)!r} (checkpoint: {v!r})" for k, v in saved.items()
               if k not in RESUME_MAY_CHANGE and hasattr(cfg, k) and not _same(getattr(cfg, k), v)]
    if changed and not cfg.allow_config_change:
        raise ValueError(f"{folder} was trained with other settings: {', '.join(changed)}. Resume with the same "
                         "flags, or pass --allow-config-change to continue with the new ones")
    return changed


# ----------------------------------------------------------------------------- input limits

def fit_context(problems: list[Problem], tokenizer, prompt_cfg, cfg, context: int | None, where: str,
                verbose: bool = True) -> tuple[list[Problem], int]:
    """(The problems whose prompt fits (module docstring), the longest of their prompts in tokens); caps
    cfg.max_new_tokens when it would overflow the context next to the longest prompt kept. `where` names the
    model config (for messages)."""
    limit = cfg.max_prompt_tokens or math.inf
    if context:
        limit = min(limit, context - min(cfg.max_new_tokens, context // 2))
    # a token is at least one byte of its text: a prompt of at most `sure` bytes fits whatever its tokens
    sure = min(limit, context - cfg.max_new_tokens) if context else limit
    texts = [build_prompt(p, tokenizer, prompt_cfg) for p in problems]
    lengths = [len(t.encode()) for t in texts]
    unsure = [i for i, n in enumerate(lengths) if n > sure]
    if unsure:
        ids = tokenizer([texts[i] for i in unsure], add_special_tokens=False)["input_ids"]
        for i, tokens in zip(unsure, ids):
            lengths[i] = len(tokens)
    skipped = [i for i, n in enumerate(lengths) if n > limit]
    why = (f"--max-prompt-tokens {cfg.max_prompt_tokens}" if limit == cfg.max_prompt_tokens else
           f"the model's context of {context} tokens ({where}) minus the response budget")
    for i in skipped[:5] if verbose else []:
        p = problems[i]
        print(f"problems: skipped {p.location or p.id} (id {p.id}): its prompt has {lengths[i]} tokens, more than "
              f"the {limit} that fit ({why})")
    if verbose and len(skipped) > 5:
        print(f"problems: ... and {len(skipped) - 5} more prompts over {limit} tokens skipped")
    kept = [i for i, n in enumerate(lengths) if n <= limit]
    if not kept:
        raise ValueError(f"every prompt is longer than {limit} tokens ({why}): lower --max-new-tokens or use "
                         "shorter problems")
    longest = max(lengths[i] for i in kept)  # exact wherever it matters: above `sure` every length is tokenized
    if context and cfg.max_new_tokens + longest > context:
        if verbose:
            print(f"warning: --max-new-tokens {cfg.max_new_tokens} + the longest prompt ({longest} tokens) exceeds "
                  f"the model's context of {context} tokens ({where}): capped to {context - longest}")
        cfg.max_new_tokens = context - longest
    return [problems[i] for i in kept], longest


# ----------------------------------------------------------------------------- setup: data checks, then the model

@dataclass
class Run:
    """What setup() built and checked, for the loop."""
    policy: torch.nn.Module  # the trainable weights (FSDP-sharded under torchrun)
    infer: torch.nn.Module  # the sampler's full copy (bf16; the policy itself in an fp32 single process)
    reference: torch.nn.Module | None  # frozen initial policy for the KL term
    optimizer: torch.optim.Optimizer
    tokenizer: object
    hf_config: dict  # the model's config.json (written into every checkpoint)
    curriculum: Curriculum
    masker: PlanningMasker
    prompt_cfg: PromptConfig
    held_out: list  # validation problems
    start_step: int  # steps done before this invocation
    initial_ppl: dict  # first logged perplexities (relative perplexity divides by them)
    run_id: str  # names this run's checkpoints (rotation deletes no other run's)
    resumed_from: str | None  # checkpoint folder
    sampler: R.Sampler  # the inference copy's sampler: KV pool and decode graphs kept across steps


def setup_data(cfg, rank, world, is_master):
    """The model's config and tokenizer, the problems that fit its context, the level schedule and the curriculum,
    the grams and the validation problems: every check on the input before anything heavy."""
    folder = M.resolve_path(cfg.model)
    hf_config = M.read_hf_config(folder)
    tokenizer = M.load_tokenizer(folder)
    prompt_cfg = PromptConfig(template=cfg.template, system_prompt=cfg.system_prompt)
    context = hf_config.get("max_position_embeddings")
    problems, longest = fit_context(load_problems(cfg.data), tokenizer, prompt_cfg, cfg, context,
                                    os.path.join(folder, "config.json"), verbose=is_master)
    held_out = []
    if cfg.eval_every:  # disjoint from what is trained on, by id and by text
        problems, held_out = validation.validation_set(problems, cfg.eval_limit, cfg.seed, cfg.eval_data)
    rule = None
    if cfg.context_factor is not None:  # HICRA's context rule, capped where the model's context ends
        cap = min(cfg.context_cap or 32768, context - longest if context else math.inf)
        rule = ContextRule(cfg.context_factor, int(cap), cfg.context_threshold)
    curriculum = make_curriculum(problems, cfg.curriculum, cfg.total_steps, cfg.max_new_tokens, cfg.group_size,
                                 cfg.prompts_per_step, cfg.seed, rank, world, cfg.schedule_overrides,
                                 cfg.adaptive_p_min, cfg.adaptive_p_max, rule, verbose=is_master)
    for lv in curriculum.levels:
        if lv.prompts_per_step % world:
            raise ValueError(f"level {lv.name}: prompts_per_step {lv.prompts_per_step} is not a multiple of the "
                             f"{world} ranks")
        overlong_buffer_for(lv, cfg.overlong_buffer)  # an --overlong-buffer no level can take: one line, now
    masker = PlanningMasker(tokenizer, load_grams(cfg.grams, cfg.grams_drop, cfg.grams_seed))
    return folder, hf_config, tokenizer, prompt_cfg, curriculum, masker, held_out


def setup(cfg, rank, world, device, is_dist, is_master) -> Run:
    """Data and the checkpoint to resume are read and checked before the model loads (ValueError: one line for
    the user). Nothing is written to the run folder but removals of stale / unusable checkpoints."""
    torch.manual_seed(cfg.seed)  # python's and numpy's too: every RNG state a checkpoint keeps is then reproducible
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if is_master:
        for name in ckpt.remove_stale(cfg.out_dir):
            print(f"removed checkpoints/{name}: a save that never finished")
    folder, hf_config, tokenizer, prompt_cfg, curriculum, masker, held_out = setup_data(cfg, rank, world, is_master)
    found = ckpt.find(cfg.resume, cfg.out_dir, is_dist, log=is_master) if cfg.resume else None
    if cfg.resume and found is None:
        held = run_contents(cfg.out_dir)
        if held:
            raise ValueError(f"--resume auto: no usable checkpoint in {cfg.out_dir}, which holds a run ({held}); "
                             "start a new run there with --overwrite (no --resume), or choose another --out-dir")
        if is_master:
            print(f"--resume auto: no checkpoint in {cfg.out_dir}; starting a new run")
    if found is not None:
        changed = check_resume(cfg, found.state, found.folder)
        if changed and is_master:
            print(f"warning: --allow-config-change: continuing {found.folder} with {', '.join(changed)}")
        curriculum.load_state_dict(found.state["curriculum"])

    # ------------------------------------------------------------------ the model (the heavy part)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32  # compute; master weights stay fp32
    M.resolve_backend(cfg.attn, device.type, dtype)  # an --attn that cannot run here: one line, before loading
    policy = M.load_model(folder, device=device, dtype=torch.float32, tokenizer=False)[0]
    infer = policy  # fp32 in one process: sample from the trainable weights themselves
    if is_dist:  # torchrun, or a one-rank group for bf16: FSDP2 mixed precision and a bf16 sampler copy
        infer = M.load_model(folder, device=device, dtype=dtype, tokenizer=False)[0]
        policy = shard_policy(policy, device, cfg.activation_checkpointing, param_dtype=dtype if dtype != torch.float32 else None)
    else:
        policy.activation_checkpointing = cfg.activation_checkpointing
    reference = M.load_model(folder, device=device, dtype=dtype, tokenizer=False)[0] if cfg.kl_coef > 0 else None
    for m in (policy, infer, reference):
        if m is not None:
            m.attn_backend = cfg.attn
    sampler = R.Sampler(infer, R.EngineConfig(max_num_seqs=cfg.max_num_seqs, decode=cfg.decode,
                                              kv_memory_fraction=cfg.kv_memory_fraction))
    if is_master and device.type == "cuda":
        print_memory_plan(cfg, infer, world, device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    start_step, initial_ppl, run_id = 0, {}, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(4).hex()}"
    if found is not None:
        ckpt.restore(found, policy, optimizer, is_dist)
        start_step, initial_ppl = found.state["step"], found.state.get("initial_ppl", {})
        run_id = found.state.get("run_id") or run_id
        ckpt.set_rng_state(found.rng)
        if infer is not policy:
            refresh_inference_copy(policy, infer)
        if is_master:
            print(f"resumed from {found.folder} (step {start_step})")
    return Run(policy, infer, reference, optimizer, tokenizer, hf_config, curriculum, masker, prompt_cfg, held_out,
               start_step, initial_ppl, run_id, found.folder if found else None, sampler)


def print_memory_plan(cfg, infer, world: int, device) -> None:
    """Per-rank memory estimate (distributed.memory_plan) against the device's memory, before the first step."""
    kv_note = ""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        kv = int(cfg.kv_memory_fraction * free)
        kv_note = f" (at most {cfg.kv_memory_fraction:g} of the {free / 2**30:.1f} GiB free now)"
    else:
        total, kv = None, 0
    plan = memory_plan(infer.cfg, world, cfg.micro_batch_tokens, cfg.activation_checkpointing, kv_bytes=kv,
                       sampler_copy=cfg.precision == "bf16" or world > 1)
    lines = [f"  {name:<48} {size / 2**30:7.1f} GiB{kv_note if name == 'KV pool' else ''}" for name, size in plan]
    print(f"memory plan per rank ({cfg.precision} compute, {world} rank(s)):\n" + "\n".join(lines))
    if total is not None and plan[-1][1] > 0.95 * total:
        print(f"warning: the plan ({plan[-1][1] / 2**30:.0f} GiB) exceeds the device's {total / 2**30:.0f} GiB: lower "
              "--micro-batch-tokens, turn on --activation-checkpointing, or use more GPUs")


def claim_run_folder(cfg, start_step):
    """Master, after setup succeeded: --overwrite's removal, config.json, and the append-only files repaired."""
    if cfg.overwrite:
        clear_run(cfg.out_dir)
    os.makedirs(cfg.out_dir, exist_ok=True)
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2)
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        torn, later = repair_jsonl(os.path.join(cfg.out_dir, name), start_step)
        if torn or later:
            print(f"{name}: dropped {torn} torn line(s) and {later} row(s) past step {start_step} (redone now)")
