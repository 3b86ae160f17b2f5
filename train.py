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
built-in arithmetic levels so that the demo learns in minutes; the GPU preset keeps the papers' values.

    python train.py                                  # CPU demo on the embedded SmolLM2-135M
    python train.py --algo dapo --curriculum hgrpo1 --model PATH --data math500
    torchrun --nproc_per_node 8 train.py --model PATH --data gsm8k_train
    python train.py --resume auto --out-dir runs/x   # continue from the latest checkpoint
"""
import argparse
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import checkpoint as ckpt
from distributed import all_sum, dist_cleanup, dist_init, full_state_dict, max_over_ranks, shard_policy
import model as M
import eval as evaluation
from cli import add_dataclass_args, dataclass_from_args
from curriculum import Curriculum, collect_groups, make_schedule
from problems import PromptConfig, build_prompt, load_problems, stop_strings
from plot import open_metrics, plot_run, update_metrics, write_rollouts
from loss import LossConfig, group_advantages
from reward import RewardConfig, score_batch
from rollout import EngineConfig, SamplingParams, generate
from strategic_grams import PlanningMasker, load_grams, semantic_entropy
from update import Batch, ppo_update

ALGORITHMS = {
    "grpo": dict(agg="seq-mean-token-mean", eps_low=0.2, eps_high=0.2, dynamic_sampling=False, overlong_buffer=0, hicra_alpha=0.0),
    "dapo": dict(agg="token-mean", dynamic_sampling=True, overlong_buffer=-1, hicra_alpha=0.0),  # clip: the level's 0.2/0.28
    "hicra": dict(agg="token-mean", dynamic_sampling=True, overlong_buffer=-1, hicra_alpha=0.2),
}
PRESETS = {  # hardware presets: values of fields left unset on the command line
    "cpu": dict(lr=2e-5, group_size=8, prompts_per_step=4, max_new_tokens=32, total_steps=48, data="arith",
                curriculum="adaptive", micro_batch_tokens=4096, save_every=4, eval_every=0, share_prompt=True),
    "gpu": dict(lr=1e-6, group_size=16, prompts_per_step=32, max_new_tokens=8192, total_steps=1000, data="gsm8k_train",
                curriculum="none", micro_batch_tokens=32768, save_every=50, eval_every=50, share_prompt=False),
}


@dataclass
class TrainConfig:
    model: str = "default"  # HF checkpoint folder, or 'default' (embedded SmolLM2-135M-Instruct)
    out_dir: str = ""  # run folder (default runs/<algo>-<time>)
    algo: str = "hicra"  # grpo | dapo | hicra (presets for the loss fields below)
    preset: str = ""  # cpu | gpu (default: gpu when CUDA is available)
    data: str | None = None  # training data: 'arith', benchmark names, or files (comma-separated)
    curriculum: str | None = None  # none | deepscaler | hgrpo1 | hgrpo2 | adaptive
    schedule_overrides: str | None = None  # JSON file overriding level fields
    template: str = "auto"  # prompt template: auto | chat | plain | fewshot
    total_steps: int | None = None  # optimizer steps
    prompts_per_step: int | None = None  # N: groups per step (all ranks together)
    group_size: int | None = None  # G: samples per prompt
    max_new_tokens: int | None = None  # response length cap (levels may lower it)
    temperature: float = 1.0  # sampling temperature (the loss uses the same)
    top_p: float = 1.0  # nucleus sampling
    max_num_seqs: int = 256  # sampler slots
    lr: float | None = None  # AdamW learning rate (constant after warmup)
    warmup_steps: int = 0  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max global grad norm
    ppo_epochs: int | None = None  # mu: passes over each batch (default: the level's)
    micro_batch_tokens: int | None = None  # packed tokens per forward/backward
    share_prompt: bool | None = None  # forward a group's prompt once for its G responses (SDPA masks; short responses)
    agg: str | None = None  # loss aggregation (see loss.py)
    eps_low: float | None = None  # clip lower bound (default: the level's / algo's)
    eps_high: float | None = None  # clip upper bound
    kl_coef: float = 0.0  # k3 KL to the initial policy (grpo option; needs a reference copy)
    entropy_coef: float = 0.0  # entropy bonus
    adv_scale: str = "group"  # group | batch | none (Dr.GRPO)
    hicra_alpha: float | None = None  # HICRA amplification (0 = plain DAPO)
    hicra_tokens: str = "planning"  # planning | entropy | union: which tokens HICRA amplifies
    hicra_top_q: float = 0.2  # fraction of highest-entropy tokens per response for 'entropy'
    grams: str | None = None  # strategic-gram JSON (default: the paper's list in data/)
    dynamic_sampling: bool | None = None  # drop zero-variance groups and resample (DAPO)
    max_sampling_rounds: int = 3  # extra generation rounds before training on what there is
    overlong_buffer: int | None = None  # soft overlong penalty buffer in tokens (-1: a quarter of max length)
    format_penalty: float = 0.0  # reward for a response with no boxed answer is -this
    reward_workers: int = 0  # processes for reward scoring
    recompute_old_logprobs: bool = False  # old logprobs from a forward pass instead of the sampler's
    activation_checkpointing: bool = False  # recompute blocks in backward
    save_every: int | None = None  # checkpoint every K steps
    keep_checkpoints: int = 2  # how many checkpoints to keep
    log_rollouts_every: int = 1  # write sample rollouts to rollouts.jsonl every K steps
    eval_every: int | None = None  # validation every K steps (0 = off)
    eval_data: str | None = None  # validation problems (default: held-out arithmetic for 'arith', else math500)
    eval_limit: int = 32  # validation problems
    resume: str | None = None  # 'auto' or a checkpoint folder
    stop_after: int = 0  # end this invocation (with a checkpoint) after this many steps, 0 = never (job time limits)
    seed: int = 0  # everything random derives from it


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill unset fields from the algorithm and hardware presets."""
    if cfg.algo not in ALGORITHMS:
        raise ValueError(f"--algo must be one of {', '.join(ALGORITHMS)}, got {cfg.algo!r}")
    preset = cfg.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    if preset not in PRESETS:
        raise ValueError(f"--preset must be cpu or gpu, got {cfg.preset!r}")
    fills = {**PRESETS[preset], **ALGORITHMS[cfg.algo]}
    cfg = dataclasses.replace(cfg, preset=preset, **{k: v for k, v in fills.items() if getattr(cfg, k) is None})
    if cfg.overlong_buffer == -1:
        cfg.overlong_buffer = cfg.max_new_tokens // 4
    cfg.out_dir = cfg.out_dir or os.path.join("runs", f"{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg


# ----------------------------------------------------------------------------- rollout

def sample_with_retry(model, prompt_ids, params, cfg, tokenizer):
    """rollout.generate; on CUDA out-of-memory, halve the sampler's slots (for the rest of the run) and retry."""
    while True:
        try:
            with torch.no_grad():
                return generate(model, prompt_ids, params, EngineConfig(max_num_seqs=cfg.max_num_seqs), tokenizer)
        except torch.cuda.OutOfMemoryError:
            if cfg.max_num_seqs <= 1:
                raise
            torch.cuda.empty_cache()
            cfg.max_num_seqs //= 2
            print(f"rollout ran out of GPU memory; retrying with --max-num-seqs {cfg.max_num_seqs}", file=sys.stderr)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, TrainConfig)
    try:
        cfg = resolve(dataclass_from_args(TrainConfig, parser.parse_args(argv)))
    except ValueError as e:
        sys.exit(f"error: {e}")
    rank, world, device, is_dist = dist_init()
    try:
        train(cfg, rank, world, device, is_dist, is_master=rank == 0)
    finally:
        dist_cleanup(is_dist)


def train(cfg, rank, world, device, is_dist, is_master):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(cfg.seed)
    # ------------------------------------------------------------------ setup (bad input: one line, no traceback)
    try:
        policy, tokenizer = M.load_model(cfg.model, device=device, dtype=torch.float32)
        if tokenizer is None:
            raise ValueError(f"{cfg.model}: no tokenizer files in the model folder")
        problems = load_problems(cfg.data)
        levels = make_schedule(cfg.curriculum, cfg.total_steps, cfg.max_new_tokens, cfg.group_size,
                               cfg.prompts_per_step, overrides=cfg.schedule_overrides)
        masker = PlanningMasker(tokenizer, load_grams(cfg.grams))
    except ValueError as e:
        sys.exit(f"error: {e}")
    hf_config = policy.hf_config
    infer = policy  # single process: sample from the trainable weights themselves
    if is_dist:
        infer = M.load_model(cfg.model, device=device, dtype=dtype, tokenizer=False)[0]
        policy = shard_policy(policy, device, cfg.activation_checkpointing)
    else:
        policy.activation_checkpointing = cfg.activation_checkpointing
    reference = M.load_model(cfg.model, device=device, dtype=dtype, tokenizer=False)[0] if cfg.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    curriculum = Curriculum(problems, levels, cfg.curriculum, seed=cfg.seed, rank=rank, world_size=world)
    prompt_cfg = PromptConfig(template=cfg.template)
    reward_cfg = RewardConfig(format_penalty=cfg.format_penalty, overlong_buffer=cfg.overlong_buffer)
    start_step, initial_ppl = 0, {}
    if cfg.resume:
        try:
            state = ckpt.load(cfg.resume, cfg.out_dir, policy, optimizer, is_dist, log=is_master)
        except ValueError as e:
            sys.exit(f"error: {e}")
        if state is not None:
            curriculum.load_state_dict(state["curriculum"])
            start_step, initial_ppl = state["step"], state.get("initial_ppl", {})
            ckpt.set_rng_state(state["rng"])
            if is_dist:
                infer.load_state_dict(full_state_dict(policy, is_dist))
    if is_master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        json.dump(dataclasses.asdict(cfg), open(os.path.join(cfg.out_dir, "config.json"), "w"), indent=2)
    stop_requested = ckpt.install_stop_handler()
    metrics_file = open_metrics(cfg.out_dir, start_step) if is_master else None
    held_out = []
    if cfg.eval_every:
        pool = load_problems(cfg.eval_data or ("arith" if cfg.data == "arith" else "math500"), seed=cfg.seed + 1, verbose=False)
        held_out = random.Random(cfg.seed).sample(pool, min(cfg.eval_limit, len(pool)))  # a spread over levels
    bar = tqdm(range(start_step, cfg.total_steps), initial=start_step, total=cfg.total_steps, disable=not is_master,
               desc="train", dynamic_ncols=True)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for step in bar:
        if curriculum.finished:
            break
        level = curriculum.level
        eps_low, eps_high = cfg.eps_low if cfg.eps_low is not None else level.eps_low, cfg.eps_high if cfg.eps_high is not None else level.eps_high
        loss_cfg = LossConfig(eps_low=eps_low, eps_high=eps_high, agg=cfg.agg, norm_len=level.max_len,
                              kl_coef=cfg.kl_coef, entropy_coef=cfg.entropy_coef)
        G, max_len = level.group_size, min(level.max_len, cfg.max_new_tokens)
        groups_per_rank = max(1, level.prompts_per_step // world)
        t0 = time.perf_counter()

        # ---------------------------------------------------------- rollout + reward (dynamic sampling)
        rollout_stats = {"generated_tokens": 0, "rounds": 0, "correct": 0, "responses": 0}  # over everything sampled

        def sample_and_score(batch):
            texts = [build_prompt(p, tokenizer, prompt_cfg) for p in batch]
            prompt_ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=max_len, n=G,
                                    stop_token_ids=eos, stop_strings=stop_strings(prompt_cfg, batch),
                                    seed=cfg.seed * 1_000_003 + step * 1009 + rank * 101 + rollout_stats["rounds"])
            rollout_stats["rounds"] += 1
            samples, stats = sample_with_retry(infer, prompt_ids, params, cfg, tokenizer)
            rollout_stats["generated_tokens"] += stats["generated_tokens"]
            responses = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
            results = score_batch(responses, [p.answer for p in batch for _ in range(G)], reward_cfg,
                                  workers=cfg.reward_workers, response_lens=[len(s.token_ids) for s in samples], max_len=max_len)
            rollout_stats["correct"] += sum(r.correct for r in results)
            rollout_stats["responses"] += len(results)
            return [dict(problem=batch[i], prompt=prompt_ids[i], samples=samples[i * G:(i + 1) * G],
                         texts=responses[i * G:(i + 1) * G], results=results[i * G:(i + 1) * G],
                         rewards=[r.score for r in results[i * G:(i + 1) * G]]) for i in range(len(batch))]

        if cfg.dynamic_sampling:
            groups, ds_stats = collect_groups(curriculum.next_prompts, sample_and_score, groups_per_rank, cfg.max_sampling_rounds,
                                              min_over_ranks=(lambda n: -max_over_ranks(-n)) if is_dist else None)
        else:
            groups = sample_and_score(curriculum.next_prompts(groups_per_rank))
            ds_stats = {"dropped_fraction": float(np.mean([len(set(g["rewards"])) == 1 for g in groups]))}
        rollout_s = time.perf_counter() - t0
        samples = [s for g in groups for s in g["samples"]]
        results = [r for g in groups for r in g["results"]]
        texts = [t for g in groups for t in g["texts"]]

        # ---------------------------------------------------------- advantages + HICRA mask
        rewards = torch.tensor([r.score for r in results], dtype=torch.float32)  # (B,)
        batch = Batch(seqs=[(g["prompt"], s.token_ids) for g in groups for s in g["samples"]],
                      old_logprobs=[torch.tensor(s.logprobs, dtype=torch.float32) for s in samples],
                      seq_advantages=group_advantages(rewards, G, scale=cfg.adv_scale) if groups else rewards,  # (B,)
                      planning=masker.mask([s.token_ids for s in samples], T=max_len))  # (B, max_len) bool

        # ---------------------------------------------------------- update: mu PPO epochs over packed micro-batches
        t1 = time.perf_counter()
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        ppo_epochs = cfg.ppo_epochs or level.ppo_epochs
        update = ppo_update(policy, optimizer, batch, cfg, loss_cfg, ppo_epochs, lr, world, is_dist, device, reference)
        if is_dist:  # refresh the inference copy once per step, never per decoded token
            infer.load_state_dict(full_state_dict(policy, is_dist))
        update_s = time.perf_counter() - t1

        # ---------------------------------------------------------- curriculum decision (same on every rank)
        # pass rate over everything sampled: the kept groups are biased (dynamic sampling drops all-correct ones)
        sample_sums = all_sum([sum(r.score for r in results), sum(r.correct for r in results),
                               sum(r.format_ok for r in results), sum(len(s.token_ids) for s in samples),
                               sum(s.finish_reason == "length" for s in samples), len(results),
                               rollout_stats["correct"], rollout_stats["responses"]], is_dist)
        pass_rate = sample_sums[6] / max(sample_sums[7], 1)
        level_index = curriculum.level_index
        level_changed = curriculum.end_step(pass_rate)
        stop = stop_requested() or step + 1 - start_step == cfg.stop_after
        stop = bool(max_over_ranks(int(stop))) if is_dist else stop

        # ---------------------------------------------------------- log
        if is_master:
            row = dict(step=step + 1, level=level_index, level_name=level.name, max_len=max_len, pass_rate=pass_rate,
                       response_len_max=max((len(s.token_ids) for s in samples), default=0),
                       reward_timeouts=sum(r.timed_out for r in results),
                       zero_variance_frac=ds_stats.get("dropped_fraction", 0.0), sampling_rounds=rollout_stats["rounds"],
                       grad_norm=update["grad_norm"], skipped_updates=update["skipped"], level_changed=level_changed,
                       rollout_tok_s=rollout_stats["generated_tokens"] / rollout_s, rollout_s=rollout_s, update_s=update_s)
            n = sample_sums[5]  # responses in the trained groups; 0 when dynamic sampling kept none: no means to log
            if n:
                row.update(reward=sample_sums[0] / n, accuracy=sample_sums[1] / n, boxed_rate=sample_sums[2] / n,
                           response_len=sample_sums[3] / n, truncated_frac=sample_sums[4] / n,
                           train_tok_s=ppo_epochs * sum(len(p) + len(r) for p, r in batch.seqs) / update_s)
            row.update(update_metrics(update["loss_stats"], update["token_stats"], initial_ppl))
            row["semantic_entropy"] = semantic_entropy(masker.matched_grams(texts)) + 0.0  # no "-0"
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            bar.set_postfix(reward=f"{row.get('reward', float('nan')):.2f}", pass_rate=f"{pass_rate:.2f}", level=level.name)
            tqdm.write(" ".join(f"{k}={row[k]:.3g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in
                                ("step", "level_name", "pass_rate", "reward", "accuracy", "boxed_rate", "response_len", "clip_frac_high",
                                 "semantic_entropy", "planning_token_ratio", "rollout_tok_s", "train_tok_s") if k in row))
            if cfg.log_rollouts_every and step % cfg.log_rollouts_every == 0:
                write_rollouts(cfg.out_dir, step + 1, groups, masker, tokenizer)

        # ---------------------------------------------------------- validation
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            val_cfg = evaluation.EvalConfig(k="1", temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                            template=cfg.template, progress=False)
            val = evaluation.validate(infer, tokenizer, held_out, val_cfg, rank, world)["average"]
            if is_master:
                metrics_file.write(json.dumps({"step": step + 1, **{f"val_{k}": v for k, v in val.items()}}) + "\n")
                tqdm.write(f"validation step {step + 1}: " + " ".join(f"{k}={v:.3g}" for k, v in val.items()))

        # ---------------------------------------------------------- checkpoint
        last = step + 1 == cfg.total_steps or curriculum.finished
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or last or stop:
            ckpt.save(cfg.out_dir, step + 1, full_state_dict(policy, is_dist), hf_config, tokenizer, policy, optimizer,
                      dict(curriculum=curriculum.state_dict(), initial_ppl=initial_ppl, config=dataclasses.asdict(cfg)),
                      is_dist, is_master, keep=cfg.keep_checkpoints)
        if stop:
            if is_master:
                tqdm.write(f"stopped after step {step + 1}; checkpoint saved, continue with --resume auto")
            break
    if is_master:
        metrics_file.close()
        figure = plot_run(cfg.out_dir)
        print(f"\nrun folder: {cfg.out_dir}\n  metrics:    {os.path.join(cfg.out_dir, 'metrics.jsonl')}"
              f"\n  rollouts:   {os.path.join(cfg.out_dir, 'rollouts.jsonl')}\n  figure:     {figure}"
              f"\n  checkpoint: {ckpt.latest(cfg.out_dir)}")


if __name__ == "__main__":
    main()
