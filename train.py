"""RL training loop for LLM reasoning: rollout -> reward -> group advantages (+HICRA) -> PPO update.

One script, one code path for `python train.py` and `torchrun --nproc_per_node N train.py`:
    step: prompts (curriculum) -> G samples each (rollout.py, from an inference copy of the full weights)
          -> rewards (reward.py) -> dynamic sampling (drop zero-variance groups, DAPO)
          -> A_i = group_advantages(r)  (loss.py)  -> A'_{i,t} = A_i + alpha |A_i| on planning tokens (HICRA)
          -> mu PPO epochs: clipped token-level loss on packed micro-batches, normalised over the whole step (update.py)
          -> AdamW -> refresh the inference copy -> log -> checkpoint.
Algorithms are presets over one loss (every field stays overridable):
    grpo : seq-mean-token-mean, clip 0.2/0.2, no dynamic sampling
    dapo : token-mean, clip-higher 0.2/0.28, no KL, dynamic sampling, soft overlong penalty (GRPO+)
    hicra: dapo + HICRA alpha = 0.2 on strategic-gram tokens (--grams for a user's own list)
Distributed: FSDP2 (fully_shard per block and root), bf16 params with fp32 reductions on CUDA, fp32 on
CPU (gloo). The loss divides by the step's global token/sequence counts, so gradients are summed, not
averaged, across ranks (the loss is scaled by world size to undo FSDP's mean).
Deviation: the default CPU preset (no GPU) uses lr 2e-5, G = 8, N = 4 and 32-token answers on the
built-in arithmetic levels so that the demo learns in minutes (64 tokens for the word problems' chain of thought,
--data words); the GPU preset keeps the papers' values.

    python train.py                                  # CPU demo on the embedded SmolLM2-135M
    python train.py --algo dapo --curriculum hgrpo1 --model PATH --data math500
    torchrun --nproc_per_node 8 train.py --model PATH --data gsm8k_train
    python train.py --resume auto --out-dir runs/x   # continue from the latest checkpoint

Nothing lost, nothing silently wrong: every flag, the run folder, the data's prompt lengths and a resume's
settings are checked before the model loads (preflight.py); a new run never writes into a folder holding another
run (--resume auto or --overwrite); checkpoints are verified by content on resume (checkpoint.py). SIGTERM /
SIGINT (every rank under torchrun) stop at the next safe point: during a rollout the step is abandoned at once
(the sampler polls the flag every engine step; the curriculum and RNG go back to the step's start) and the last
completed step is saved; during the update the step finishes first; a second signal exits at once. Ranks agree
through one all-reduce after the rollout and one at the step's end. The bound is one engine step (or the
update in progress) plus one checkpoint save.
Deviation: with the soft overlong penalty on (dapo, hicra), --format-penalty defaults to its factor 1.0, so an
empty or unboxed response never scores above a wrong boxed one however long (0 - 1 <= 0 - overlong).
"""
import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import checkpoint as ckpt
from distributed import all_sum, dist_cleanup, dist_init, full_state_dict, max_over_ranks, refresh_inference_copy
import eval as evaluation
import preflight
from cli import add_dataclass_args, dataclass_from_args
import experience
from validation import validate
from plot import MetricsLog, plot_run, update_metrics, write_rollouts
from loss import VARIANT_FIELDS, LossConfig, group_advantages
from reward import RewardConfig
from recipes import ALGORITHMS, EVAL_PROTOCOL, PRESETS, task_preset
from rollout import Interrupted
from update import Batch, ppo_update

@dataclass
class TrainConfig:
    model: str = "default"  # HF checkpoint folder, or 'default' (embedded SmolLM2-135M-Instruct)
    out_dir: str = ""  # run folder (default runs/<algo>-<time>)
    algo: str = "hicra"  # a recipe (recipes.py): grpo | dapo | hicra | grpo-clip-higher | hicra-paper | hicra-llama | entropy-reg | hgrpo
    preset: str = ""  # cpu | gpu (default: gpu when CUDA is available; the choice is printed)
    data: str | None = None  # training data: 'arith', 'words' (or one level: arith3, words2), benchmark names, files
    curriculum: str | None = None  # none | deepscaler | hgrpo1 | hgrpo2 | adaptive
    schedule_overrides: str | None = None  # JSON file overriding level fields
    template: str = "auto"  # prompt template: auto | chat | plain | fewshot | fewshot-cot
    system_prompt: str | None = None  # chat: none = no system turn (the template's default one is removed) | default | text
    total_steps: int | None = None  # optimizer steps
    prompts_per_step: int | None = None  # N: groups per step (all ranks together; a multiple of the ranks)
    group_size: int | None = None  # G: samples per prompt (>= 2)
    max_new_tokens: int | None = None  # response length cap (levels may lower it; capped to fit the model's context)
    max_prompt_tokens: int = 0  # skip problems with longer prompts (0: what the context leaves beside responses)
    temperature: float | None = None  # sampling temperature, the loss uses the same (default 1; hgrpo: 0.6)
    top_p: float = 1.0  # nucleus sampling
    max_num_seqs: int = 256  # sampler slots
    lr: float | None = None  # AdamW learning rate (constant after warmup)
    warmup_steps: int = 0  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max global grad norm
    ppo_epochs: int | None = None  # mu: passes over each batch (default: the level's)
    micro_batch_tokens: int | None = None  # packed tokens per forward/backward
    share_prompt: bool | None = None  # forward a group's prompt once for its G responses (keys gathered per response)
    agg: str | None = None  # loss aggregation (see loss.py)
    eps_low: float | None = None  # clip lower bound (default: the level's / algo's)
    eps_high: float | None = None  # clip upper bound
    kl_coef: float = 0.0  # k3 KL to the initial policy (grpo option; needs a reference copy)
    entropy_coef: float | None = None  # entropy bonus on every response token (default 0; entropy-reg: 0.001)
    adv_scale: str | None = None  # group (default) | batch | none (Dr.GRPO; HICRA's R - mean(R))
    loss: str = "ppo"  # ppo | gspo | cispo | sapo: the policy-gradient term (loss.py)
    gspo_eps_low: float = 3e-4  # gspo sequence-ratio clip: s >= 1 - this
    gspo_eps_high: float = 4e-4  # gspo sequence-ratio clip: s <= 1 + this
    cispo_eps_low: float = 1.0  # cispo IS-weight clip: w >= 1 - this (>= 1: no lower bound)
    cispo_eps_high: float = 4.0  # cispo IS-weight clip: w <= 1 + this
    sapo_tau_pos: float = 1.0  # sapo gate temperature for A > 0
    sapo_tau_neg: float = 1.05  # sapo gate temperature for A <= 0
    top_entropy_q: float = 1.0  # 80/20: policy gradient on the step's top-q entropy tokens only (1 = all)
    cov_mode: str = "none"  # none | clip (Clip-Cov) | kl (KL-Cov); loss ppo only
    clip_cov_frac: float = 2e-4  # Clip-Cov: fraction of tokens detached
    clip_cov_lb: float = 1.0  # Clip-Cov: covariance band lower bound (exclusive)
    clip_cov_ub: float = 5.0  # Clip-Cov: covariance band upper bound (exclusive)
    kl_cov_frac: float = 2e-3  # KL-Cov: fraction of tokens given the KL penalty
    kl_cov_coef: float = 1.0  # KL-Cov: coefficient of |logp - old_logp|
    mismatch_correction: str = "none"  # none | tis | mis: sampler/trainer mismatch (needs --recompute-old-logprobs)
    mismatch_level: str = "token"  # token | sequence: pi_old / pi_sampler per token or per response
    tis_cap: float = 2.0  # tis: weight min(ratio, cap)
    mis_low: float = 0.5  # mis: drop tokens/responses with ratio < this
    mis_high: float = 5.0  # mis: drop tokens/responses with ratio > this
    hicra_alpha: float | None = None  # HICRA amplification (0 = plain DAPO)
    hicra_tokens: str = "planning"  # planning | entropy | union: which tokens HICRA amplifies
    hicra_top_q: float = 0.2  # fraction of highest-entropy tokens per response for 'entropy'
    grams: str | None = None  # strategic-gram JSON (default: the paper's list in data/)
    grams_drop: float = 0.0  # SG sensitivity: drop this random fraction of the grams (HICRA: 0.3)
    grams_seed: int = 0  # which grams --grams-drop drops
    adaptive_p_min: int | None = None  # adaptive curriculum: shortest block of steps committed to a level (default 2)
    adaptive_p_max: int | None = None  # adaptive curriculum: longest block (default 4)
    context_factor: float | None = None  # HICRA's context rule: raise the response length by this once (none = off)
    context_cap: int | None = None  # ... to at most this many tokens (default 32768, and the model's context)
    context_threshold: float = 0.2  # ... when more than this fraction of a step's sampled responses is cut
    dynamic_sampling: bool | None = None  # drop zero-variance groups and resample (DAPO)
    max_sampling_rounds: int = 3  # extra generation rounds before training on what there is
    overlong_buffer: int | None = None  # soft overlong penalty over the last N tokens (-1: a quarter of each level's)
    format_penalty: float | None = None  # no boxed answer scores -this (default: 1 with the overlong penalty, else 0)
    reward_workers: int = 0  # processes for reward scoring
    recompute_old_logprobs: bool = False  # old logprobs from a forward pass instead of the sampler's
    activation_checkpointing: bool | None = None  # recompute blocks in backward (gpu preset: on)
    precision: str = "auto"  # auto | fp32 | bf16: compute dtype (auto: bf16 on CUDA); master weights stay fp32
    attn: str = "auto"  # attention backend: auto | torch-flash | flash-attn | sdpa (auto: torch-flash on CUDA)
    decode: str = "auto"  # sampler decode step: auto (CUDA graphs on CUDA, eager on CPU) | eager | static | graph
    kv_memory_fraction: float = 0.3  # CUDA: the sampler's KV pool takes at most this share of free memory
    dist_timeout: float = 3600.0  # seconds a collective waits for the other ranks (rollouts differ in length)
    save_every: int | None = None  # checkpoint every K steps
    keep_checkpoints: int = 2  # how many checkpoints of this run to keep (>= 1)
    log_rollouts_every: int = 1  # write sample rollouts to rollouts.jsonl every K steps
    log_to: str = ""  # also send metrics to: tensorboard, wandb (comma-separated; optional packages; wandb offline)
    eval_every: int | None = None  # validation every K steps (0 = off)
    eval_data: str | None = None  # validation problems (default: held out of the training data); never overlap it
    eval_limit: int = 32  # validation problems (k samples each, the papers' protocol: recipes.EVAL_PROTOCOL)
    resume: str | None = None  # 'auto' (newest usable checkpoint in --out-dir) or a checkpoint folder
    overwrite: bool = False  # start a new run in an --out-dir that holds one, deleting its metrics and checkpoints
    allow_config_change: bool = False  # resume even though loss/data/sampling flags differ from the checkpoint's
    stop_after: int = 0  # end this invocation (with a checkpoint) after this many steps, 0 = never (job time limits)
    seed: int = 0  # everything random derives from it


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill unset fields from the algorithm and hardware presets."""
    if cfg.algo not in ALGORITHMS:
        raise ValueError(f"--algo must be one of {', '.join(ALGORITHMS)}, got {cfg.algo!r}")
    preset = cfg.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    if preset not in PRESETS:
        raise ValueError(f"--preset must be cpu or gpu, got {cfg.preset!r}")
    if cfg.resume == "auto" and not cfg.out_dir:
        raise ValueError("--resume auto needs --out-dir: the run folder to continue")
    fills = {**PRESETS[preset], **ALGORITHMS[cfg.algo]}
    fills.update(task_preset(preset, cfg.data or fills["data"]))
    cfg = dataclasses.replace(cfg, preset=preset, **{k: v for k, v in fills.items() if getattr(cfg, k) is None})
    for field, default in (("temperature", 1.0), ("entropy_coef", 0.0), ("adv_scale", "group")):
        if getattr(cfg, field) is None:
            setattr(cfg, field, default)
    if cfg.precision == "auto":
        cfg.precision = "bf16" if torch.cuda.is_available() else "fp32"
    if cfg.format_penalty is None:  # no answer must never beat a wrong one that the overlong penalty hits
        cfg.format_penalty = RewardConfig.overlong_factor if cfg.overlong_buffer else 0.0
    cfg.out_dir = cfg.out_dir or os.path.join("runs", f"{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg


def loss_config(cfg: TrainConfig, level) -> LossConfig:
    """The step's loss: the level's clip bounds unless --eps-low/--eps-high, Dr.GRPO's constant the level's length."""
    return LossConfig(eps_low=cfg.eps_low if cfg.eps_low is not None else level.eps_low,
                      eps_high=cfg.eps_high if cfg.eps_high is not None else level.eps_high, agg=cfg.agg,
                      norm_len=level.max_len, kl_coef=cfg.kl_coef, entropy_coef=cfg.entropy_coef,
                      **{k: getattr(cfg, k) for k in VARIANT_FIELDS})


# ----------------------------------------------------------------------------- the loop's phases

def agree(flag: bool, is_dist: bool) -> bool:
    """True on every rank when it is True on any (one all-reduce)."""
    return bool(max_over_ranks(int(flag))) if is_dist else flag


# ----------------------------------------------------------------------------- log

def reward_traps(row: dict, seen: dict) -> list[str]:
    """Warnings, each once per run, for a policy learning to say nothing: most responses empty, the mean length
    below a quarter of its first value, or the length penalty outweighing the correctness reward."""
    if "response_len" not in row:
        return []
    first = seen.setdefault("first_len", (row["step"], row["response_len"]))
    found = {}
    if row["empty_frac"] >= 0.5:
        found["empty"] = f"{row['empty_frac']:.0%} of the responses are empty"
    if first[1] >= 4 and row["response_len"] < first[1] / 4:
        found["short"] = (f"the mean response length fell to {row['response_len']:.1f} tokens "
                          f"({first[1]:.1f} at step {first[0]})")
    if -row["length_penalty"] > max(row["accuracy"], 0.1):
        found["penalty"] = (f"the length penalty (mean {row['length_penalty']:.2f}) outweighs the correctness reward "
                            f"(mean {row['accuracy']:.2f})")
    new = [k for k in found if k not in seen]
    seen.update({k: row["step"] for k in new})
    return [f"warning: step {row['step']}: {found[k]}: the policy may be learning to answer short or not at all "
            "(check --max-new-tokens, --overlong-buffer, --format-penalty)" for k in new]


def step_row(step, level_index, level, max_len, groups, stats, update, sums, timings, ppo_epochs) -> dict:
    """metrics.jsonl row of one step (the means over sums: responses in the trained groups of all ranks; pass_rate
    and truncated_sampled over every response sampled)."""
    samples = [s for g in groups for s in g["samples"]]
    results = [r for g in groups for r in g["results"]]
    rollout_s, update_s = timings
    row = dict(step=step + 1, level=level_index, level_name=level.name, max_len=max_len,
               pass_rate=sums["correct_sampled"] / max(sums["sampled"], 1),
               truncated_sampled=sums["truncated_sampled"] / max(sums["sampled"], 1),
               response_len_max=max((len(s.token_ids) for s in samples), default=0),
               reward_timeouts=sum(r.timed_out for r in results),
               zero_variance_frac=stats.get("dropped_fraction", 0.0), sampling_rounds=stats["rounds"],
               grad_norm=update["grad_norm"], skipped_updates=update["skipped"],
               rollout_tok_s=stats["generated_tokens"] / rollout_s, rollout_s=rollout_s, update_s=update_s)
    n = sums["responses"]  # 0 when dynamic sampling kept no group: no means to log
    if n:
        trained_tokens = sum(len(g["prompt"]) + len(s.token_ids) for g in groups for s in g["samples"])
        row.update(reward=sums["reward"] / n, accuracy=sums["correct"] / n, boxed_rate=sums["boxed"] / n,
                   response_len=sums["tokens"] / n, truncated_frac=sums["truncated"] / n,
                   empty_frac=sums["empty"] / n, length_penalty=sums["length_penalty"] / n,
                   train_tok_s=ppo_epochs * trained_tokens / update_s)
    return row


def step_sums(groups, sampled, cfg, is_dist) -> dict:
    """Sums over all ranks: the trained groups' rewards, lengths, penalties; over everything sampled: the pass rate
    (the kept groups are biased: dynamic sampling drops the all-correct ones) and the truncation (context rule)."""
    samples = [s for g in groups for s in g["samples"]]
    results = [r for g in groups for r in g["results"]]
    texts = [t for g in groups for t in g["texts"]]
    every = [s for g in sampled for s in g["samples"]]
    values = {"reward": sum(r.score for r in results), "correct": sum(r.correct for r in results),
              "boxed": sum(r.format_ok for r in results), "tokens": sum(len(s.token_ids) for s in samples),
              "truncated": sum(s.finish_reason == "length" for s in samples), "responses": len(results),
              "empty": sum(not t.strip() for t in texts),
              "length_penalty": sum(r.score - r.correct + (not r.format_ok) * cfg.format_penalty for r in results),
              "correct_sampled": sum(sum(g["correct"]) for g in sampled if g["samples"]), "sampled": len(every),
              "truncated_sampled": sum(s.finish_reason == "length" for s in every)}
    return dict(zip(values, all_sum(list(values.values()), is_dist)))


def choose_level(run, cfg, rank, world, is_dist, stop) -> dict:
    """Adaptive curriculum, before a step: Algorithm 1's check on fresh rollouts (at a block boundary); returns the
    probed pass rates, {"probe_L2": 0.8, ...} (empty mid-block and for the other schedules)."""
    probed = {}

    def evaluate(index):
        rate = experience.probe_pass_rate(run, cfg, index, rank, world, is_dist, stop)
        probed[f"probe_{run.curriculum.levels[index].name}"] = rate
        return rate
    run.curriculum.begin_step(evaluate if cfg.curriculum == "adaptive" else None)
    return probed


def validation(run, cfg, rank, world) -> dict:
    """pass@1 / pass@k / maj@k on the held-out problems at the papers' protocol (k per source, temperature 0.6)."""
    by_source = {}
    for p in run.held_out:
        by_source.setdefault(p.source, []).append(p)
    val_cfg = evaluation.EvalConfig(k="paper", temperature=EVAL_PROTOCOL["temperature"], top_p=EVAL_PROTOCOL["top_p"],
                                    max_new_tokens=cfg.max_new_tokens, template=cfg.template, progress=False)
    return validate(run.infer, run.tokenizer, by_source, val_cfg, rank, world, sampler=run.sampler)["average"]


def print_step(row: dict, bar, traps: dict):
    bar.set_postfix(reward=f"{row.get('reward', float('nan')):.2f}", pass_rate=f"{row['pass_rate']:.2f}",
                    level=row["level_name"])
    tqdm.write(" ".join(f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in
                        ("step", "level_name", "pass_rate", "reward", "accuracy", "boxed_rate", "response_len",
                         "clip_frac_high", "semantic_entropy", "planning_token_ratio", "rollout_tok_s", "train_tok_s")
                        if k in row))
    for warning in reward_traps(row, traps):
        tqdm.write(warning, file=sys.stderr)


# ----------------------------------------------------------------------------- main

def fail(message, rank: int = 0, is_dist: bool = False):
    sys.exit(f"error (rank {rank}): {message}" if is_dist else f"error: {message}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, TrainConfig)
    args = parser.parse_args(argv)
    world_env, rank_env = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    try:  # cheap checks first, before torchrun's rendezvous and anything heavy; nothing is written
        cfg = resolve(dataclass_from_args(TrainConfig, args))
        preflight.validate(cfg, world_env)
        preflight.check_out_dir(cfg.out_dir)
        preflight.check_run_folder(cfg)
    except ValueError as e:
        sys.exit(f"error: {e}" if rank_env == 0 else 1)
    if not args.preset and rank_env == 0:
        print(f"preset {cfg.preset}: " + ("CUDA is available (--preset cpu: the CPU demo's values)"
                                          if cfg.preset == "gpu" else "no CUDA device (--preset gpu: the papers' values)"))
    rank, world, device, is_dist = dist_init(one_rank_group=cfg.precision == "bf16", timeout_s=cfg.dist_timeout)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 matmuls that remain
    try:
        with ckpt.StopSignal(verbose=rank == 0) as stop:
            try:
                run = preflight.setup(cfg, rank, world, device, is_dist, is_master=rank == 0)
            except ValueError as e:
                fail(e, rank, is_dist)
            train(cfg, run, rank, world, device, is_dist, rank == 0, stop)
    finally:
        dist_cleanup(is_dist)


def save_checkpoint(cfg, run: preflight.Run, steps_done, is_dist, is_master, rank) -> str:
    local = (p.to_local() if hasattr(p, "to_local") else p for p in run.policy.parameters())
    if agree(not all(bool(torch.isfinite(p).all()) for p in local), is_dist):  # checked on the shards, agreed
        fail(f"step {steps_done}: the policy weights are not finite (NaN/inf); not saving them over the good "
             "checkpoints", rank, is_dist)
    try:
        return ckpt.save(cfg.out_dir, steps_done, full_state_dict(run.policy, is_dist), run.hf_config, run.tokenizer,
                         run.policy, run.optimizer, dict(curriculum=run.curriculum.state_dict(),
                                                         initial_ppl=run.initial_ppl, config=dataclasses.asdict(cfg)),
                         is_dist, is_master, keep=cfg.keep_checkpoints, run_id=run.run_id)
    except ValueError as e:  # disk full, non-finite weights: the last good checkpoint stays
        fail(e, rank, is_dist)


def train(cfg, run: preflight.Run, rank, world, device, is_dist, is_master, stop):
    curriculum, tokenizer, masker = run.curriculum, run.tokenizer, run.masker
    metrics_file = None
    if is_master:
        preflight.claim_run_folder(cfg, run.start_step)
        metrics_file = MetricsLog(cfg.out_dir, run.start_step, [t.strip() for t in cfg.log_to.split(",") if t.strip()],
                                  dataclasses.asdict(cfg), run.run_id)
    bar = tqdm(range(run.start_step, cfg.total_steps), initial=run.start_step, total=cfg.total_steps,
               disable=not is_master, desc="train", dynamic_ncols=True)
    saved, steps_done, ended, traps = run.resumed_from, run.start_step, None, {}
    for step in bar:
        if curriculum.finished:
            break
        at_start = curriculum.state_dict(), ckpt.rng_state()  # what an abandoned step goes back to
        t0 = time.perf_counter()

        # ---------------------------------------------------------- rollout + reward (dynamic sampling)
        probed = choose_level(run, cfg, rank, world, is_dist, stop)  # adaptive: Algorithm 1 on fresh rollouts
        level, level_index = curriculum.level, curriculum.level_index
        max_len, G = experience.level_length(curriculum, level_index), level.group_size
        groups, sampled, stats = experience.collect(run, cfg, step, rank, world, is_dist, stop, max_len)
        rollout_s = time.perf_counter() - t0
        samples = [s for g in groups for s in g["samples"]]

        # ---------------------------------------------------------- advantages + HICRA mask
        rewards = torch.tensor([r.score for g in groups for r in g["results"]], dtype=torch.float32)  # (B,)
        batch = Batch(seqs=[(g["prompt"], s.token_ids) for g in groups for s in g["samples"]],
                      old_logprobs=[torch.tensor(s.logprobs, dtype=torch.float32) for s in samples],
                      seq_advantages=group_advantages(rewards, G, scale=cfg.adv_scale) if groups else rewards,  # (B,)
                      planning=masker.mask([s.token_ids for s in samples], T=max_len))  # (B, max_len) bool

        # ---------------------------------------------------------- update: mu PPO epochs over packed micro-batches
        t1 = time.perf_counter()
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        ppo_epochs = cfg.ppo_epochs or level.ppo_epochs
        try:  # a signal before the first optimizer step abandons the step, as during the rollout
            if agree(stop(), is_dist):
                raise Interrupted("rollout")
            update = ppo_update(run.policy, run.optimizer, batch, cfg, loss_config(cfg, level), ppo_epochs, lr, world,
                                is_dist, device, run.reference, seed=cfg.seed * 1_000_003 + step * 1009 + rank * 101 + 7,
                                should_stop=stop)
        except Interrupted as e:  # nothing was applied: back to the step's start, keep the last completed step
            curriculum.load_state_dict(at_start[0])
            ckpt.set_rng_state(at_start[1])
            phase = "rollout" if str(e) == "rollout" else "update"
            ended = f"by {stop.name or 'a signal on another rank'} during step {step + 1}'s {phase} (abandoned)"
            break
        if run.infer is not run.policy:  # refresh the inference copy once per step, in place, never per token
            refresh_inference_copy(run.policy, run.infer)
        update_s = time.perf_counter() - t1

        # ---------------------------------------------------------- curriculum decision (same on every rank)
        sums = step_sums(groups, sampled, cfg, is_dist)
        level_changed = curriculum.end_step(sums["correct_sampled"] / max(sums["sampled"], 1))
        context_raised = curriculum.observe_truncation(int(sums["truncated_sampled"]), int(sums["sampled"]))
        sampled_row = experience.sampled_metrics(sampled, masker, is_dist)  # every rank: it gathers
        steps_done = step + 1
        stopping = agree(stop() or steps_done - run.start_step == cfg.stop_after, is_dist)

        # ---------------------------------------------------------- log
        if is_master:
            row = step_row(step, level_index, level, max_len, groups, stats, update, sums, (rollout_s, update_s),
                           ppo_epochs)
            row.update(level_changed=level_changed, **probed, **sampled_row)
            row.update(update_metrics(update["loss_stats"], update["token_stats"], run.initial_ppl))
            if update.get("entropy_threshold") is not None:
                row["entropy_threshold"] = update["entropy_threshold"]
            if context_raised:
                row["context_raised"] = True
                tqdm.write(f"step {steps_done}: {sums['truncated_sampled'] / sums['sampled']:.0%} of the responses hit "
                           f"the length limit: maximum lengths raised (HICRA's context rule), level "
                           f"{level.name} now {experience.level_length(curriculum, curriculum.level_index)} tokens")
            metrics_file.write(row)
            print_step(row, bar, traps)
            if cfg.log_rollouts_every and step % cfg.log_rollouts_every == 0:
                write_rollouts(cfg.out_dir, step + 1, sampled, masker, tokenizer)  # dropped groups' failures too

        # ---------------------------------------------------------- validation (not when stopping: it takes a rollout)
        if cfg.eval_every and steps_done % cfg.eval_every == 0 and not stopping:
            val = validation(run, cfg, rank, world)
            if is_master:
                metrics_file.write({"step": steps_done, **{f"val_{k}": v for k, v in val.items()}})
                tqdm.write(f"validation step {steps_done}: " + " ".join(f"{k}={v:.3g}" for k, v in val.items()))

        # ---------------------------------------------------------- checkpoint
        last = steps_done == cfg.total_steps or curriculum.finished
        if (cfg.save_every and steps_done % cfg.save_every == 0) or last or stopping:
            saved = save_checkpoint(cfg, run, steps_done, is_dist, is_master, rank)
            stopping = stopping or agree(stop(), is_dist)  # a signal during the save: no extra step
        if stopping:
            by_signal = steps_done - run.start_step != cfg.stop_after
            ended = (f"by {stop.name or 'a signal to another rank'} after step {steps_done}" if by_signal
                     else f"after --stop-after {cfg.stop_after} steps")
            break
    if ended and (saved is None or not saved.endswith(f"step_{steps_done:06d}")) and steps_done > 0:
        saved = save_checkpoint(cfg, run, steps_done, is_dist, is_master, rank)  # the last completed step
    if is_master:
        finish(cfg, metrics_file, saved, steps_done, ended, saved != run.resumed_from)


def finish(cfg, metrics_file, saved, steps_done, ended, saved_now):
    metrics_file.close()
    if ended:
        kept = (f"checkpoint saved: {saved} (step {steps_done}); continue with --resume auto" if saved_now else
                f"nothing new to save: continue from {saved} with --resume auto" if saved else
                "no step completed: nothing saved")
        tqdm.write(f"stopped {ended}; {kept}")
    figure = plot_run(cfg.out_dir)
    print(f"\nrun folder: {cfg.out_dir}\n  metrics:    {os.path.join(cfg.out_dir, 'metrics.jsonl')}"
          f"\n  rollouts:   {os.path.join(cfg.out_dir, 'rollouts.jsonl')}\n  figure:     {figure}"
          f"\n  checkpoint: {saved}")


if __name__ == "__main__":
    main()
