"""One step's experience: prompts from the curriculum, G samples each, rewards, dynamic sampling, the adaptive
curriculum's fresh-rollout probes, and the metrics over every response sampled (train.py's rollout phase).

    collect(...)        the step's groups: G responses per prompt from the sampler (rollout.Sampler over the
                        inference copy), scored against the gold (reward.score_batch with the level's length
                        budget and soft overlong buffer K^l); with dynamic sampling, groups with 0 < #correct < G
                        are kept and more are sampled until the batch is full (collect_groups)
    probe_pass_rate     HGRPO Algorithm 1's check of a level on a fresh rollout (curriculum.begin_step calls it):
                        G samples on the level's probe prompts, pass rate over all ranks
    sampled_metrics     over EVERY response sampled in the step, dropped groups and all ranks included: pass@8
                        (HICRA Fig. 8), semantic and conditional entropy of the strategic grams, and the overlap
                        of planning tokens with the step's top-30% entropy tokens (HICRA Figs. 9/10; token
                        entropies from the sampler, which are the trainer's up to numerics)
A group is a dict: problem, prompt (ids), samples (rollout.Sample), texts, results (reward.RewardResult),
rewards, correct. Seeds derive from (seed, step, rank, round), so a rerun or a resume samples the same.
When stop() turns True the sampler returns within one engine step and placeholder groups end the phase at
once, in the same collectives as the other ranks (the caller then abandons the step).

Dynamic sampling (collect_groups, DAPO / GRPO+): keep a group iff 0 < #correct < G (the papers' rule on
correctness, so a group that is all correct and differs only by the length penalty is dropped), sample
ceil(missing * oversample) more, after max_rounds extra rounds train on what is there, warn once.
"""
import math
import warnings
from typing import Callable

import torch
import torch.distributed as dist

from curriculum import overlong_buffer_for, raised_length
from distributed import all_gather_1d, all_sum, max_over_ranks
from problems import build_prompt, stop_strings
from reward import RewardConfig, score_batch
from rollout import Interrupted, SamplingParams
from strategic_grams import high_entropy_planning_stats, pass_at_8, text_metrics


def level_length(curriculum, index: int) -> int:
    """Level `index`'s maximum response length, raised when HICRA's context rule fired (every level is)."""
    level = curriculum.levels[index]
    if curriculum.context is None or not curriculum.state["context_raised"]:
        return level.max_len
    return raised_length(level.max_len, level.overlong_buffer, curriculum.context)[0]


def reward_config(cfg, level, max_len: int) -> RewardConfig:
    """The level's reward: correctness, the format penalty, and the soft overlong penalty over ITS last K^l tokens."""
    return RewardConfig(format_penalty=cfg.format_penalty,
                        overlong_buffer=overlong_buffer_for(level, cfg.overlong_buffer, max_len))


def sample_groups(run, cfg, prompts, max_len: int, reward_cfg: RewardConfig, group_size: int, seed: int, stop,
                  stats: dict) -> list[dict]:
    """G scored samples for each prompt (the placeholders when stop() is or turns True)."""
    tokenizer, G = run.tokenizer, group_size
    placeholders = [dict(problem=p, prompt=[], samples=[], texts=[], results=[], rewards=[1.0] + [0.0] * (G - 1),
                         correct=[True] + [False] * (G - 1)) for p in prompts]  # kept by dynamic sampling: it stops
    if stop():
        return placeholders
    prompt_ids = [tokenizer.encode(build_prompt(p, tokenizer, run.prompt_cfg), add_special_tokens=False) for p in prompts]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=max_len, n=G,
                            stop_token_ids=eos, stop_strings=stop_strings(run.prompt_cfg, prompts), seed=seed)
    try:
        with torch.no_grad():  # the sampler keeps its KV pool and decode graphs across steps (and retries on OOM)
            samples, gen_stats = run.sampler.generate(prompt_ids, params, tokenizer, should_stop=stop)
    except Interrupted:
        return placeholders
    if stop():  # scoring can take a while too
        return placeholders
    responses = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
    results = score_batch(responses, [p.answer for p in prompts for _ in range(G)], reward_cfg,
                          workers=cfg.reward_workers, response_lens=[len(s.token_ids) for s in samples], max_len=max_len)
    stats["generated_tokens"] = stats.get("generated_tokens", 0) + gen_stats["generated_tokens"]
    groups = []
    for i, problem in enumerate(prompts):
        rows = slice(i * G, (i + 1) * G)
        groups.append(dict(problem=problem, prompt=prompt_ids[i], samples=samples[rows], texts=responses[rows],
                           results=results[rows], rewards=[r.score for r in results[rows]],
                           correct=[r.correct for r in results[rows]]))
    return groups


def _field(group, name: str):
    return group.get(name) if isinstance(group, dict) else getattr(group, name, None)


def group_correct(group) -> list[bool]:
    """One bool per response: `correct`, else the `.correct` of each of its `results` (train.py's groups)."""
    if (correct := _field(group, "correct")) is None and (results := _field(group, "results")) is not None:
        correct = [r.correct for r in results]
    if correct is None:
        raise ValueError("collect_groups: a group needs `correct` (one bool per response) or `results` (.correct)")
    return [bool(c) for c in correct]


def collect_groups(next_prompts: Callable[[int], list], sample_and_score: Callable[[list], list], n_groups: int,
                   max_rounds: int, oversample: float = 1.0, min_over_ranks: Callable[[int], int] | None = None,
                   sampled_groups: list | None = None) -> tuple[list, dict]:
    """Keep groups with 0 < #correct < G (correctness from group_correct; `rewards` for the stats) until
    n_groups, in at most 1 + max_rounds rounds. Distributed runs pass min_over_ranks (all_reduce MIN) so all
    ranks run the same rounds with the same prompt counts, keeping their curricula in lockstep. The stats
    cover every sampled group, dropped ones included: mean_reward, pass_rate (the unbiased rate for
    end_step), all_correct / none_correct group counts; `sampled_groups`, when given, receives every group."""
    min_over_ranks = min_over_ranks or (lambda x: x)
    kept, rewards, correct, rounds = [], [], [], 0
    while (missing := n_groups - min_over_ranks(len(kept))) > 0:
        if rounds > max_rounds:
            warnings.warn("dynamic sampling: batch not full after max_rounds extra rounds (too many groups all "
                          "correct or all wrong); training on the groups collected. Raise max_rounds or oversample, "
                          "or change the data's difficulty.", RuntimeWarning, stacklevel=2)
            break
        prompts = next_prompts(math.ceil(missing * (oversample if rounds else 1.0)))
        groups = sample_and_score(prompts)
        if len(groups) != len(prompts):
            raise ValueError(f"sample_and_score returned {len(groups)} groups for {len(prompts)} prompts")
        if sampled_groups is not None:
            sampled_groups += groups
        verdicts = [group_correct(g) for g in groups]
        kept += [g for g, c in zip(groups, verdicts) if 0 < sum(c) < len(c)]
        rewards += [list(_field(g, "rewards") or []) for g in groups]
        correct, rounds = correct + verdicts, rounds + 1
    flat, right = [x for r in rewards for x in r], [x for c in correct for x in c]
    all_correct, none_correct = sum(all(c) for c in correct), sum(not any(c) for c in correct)
    return kept[:n_groups], {"rounds": rounds, "sampled": len(correct), "kept": min(len(kept), n_groups),
                             "dropped": all_correct + none_correct, "all_correct": all_correct,
                             "none_correct": none_correct,
                             "dropped_fraction": (all_correct + none_correct) / max(len(correct), 1),
                             "mean_reward": sum(flat) / max(len(flat), 1), "pass_rate": sum(right) / max(len(right), 1)}


def collect(run, cfg, step: int, rank: int, world: int, is_dist: bool, stop, max_len: int):
    """This rank's training groups of the step -> (groups, every sampled group, stats over everything sampled)."""
    level, curriculum = run.curriculum.level, run.curriculum
    reward_cfg = reward_config(cfg, level, max_len)
    stats, sampled = {"generated_tokens": 0, "rounds": 0}, []

    def sample_and_score(prompts):
        seed = cfg.seed * 1_000_003 + step * 1009 + rank * 101 + stats["rounds"]
        stats["rounds"] += 1
        return sample_groups(run, cfg, prompts, max_len, reward_cfg, level.group_size, seed, stop, stats)

    groups_per_rank = level.prompts_per_step // world
    if cfg.dynamic_sampling:
        groups, ds_stats = collect_groups(curriculum.next_prompts, sample_and_score, groups_per_rank,
                                          cfg.max_sampling_rounds, sampled_groups=sampled,
                                          min_over_ranks=(lambda n: -max_over_ranks(-n)) if is_dist else None)
    else:
        groups = sampled = sample_and_score(curriculum.next_prompts(groups_per_rank))
        flat = sum(not 0 < sum(g["correct"]) < len(g["correct"]) for g in groups)  # all right or all wrong
        ds_stats = {"dropped_fraction": flat / max(len(groups), 1)}
    stats.update(ds_stats)
    return groups, sampled, stats


def probe_pass_rate(run, cfg, level_index: int, rank: int, world: int, is_dist: bool, stop) -> float | None:
    """Algorithm 1's fresh rollout of a level: G samples on each of its probe prompts (as many as a training step
    has), scored with the level's reward; the pass rate over all ranks (None when stopping)."""
    curriculum = run.curriculum
    level = curriculum.levels[level_index]
    max_len = level_length(curriculum, level_index)
    prompts = curriculum.probe_prompts(level_index, level.prompts_per_step // world)
    seed = cfg.seed * 1_000_003 + 7919 * (curriculum.state["blocks"] + 1) + 131 * level_index + rank * 101
    groups = sample_groups(run, cfg, prompts, max_len, reward_config(cfg, level, max_len), level.group_size, seed, stop,
                           {})
    correct, total = all_sum([sum(sum(g["correct"]) for g in groups), sum(len(g["correct"]) for g in groups)], is_dist)
    return None if stop() or not total else correct / total


def _gathered_texts(texts: list[str], is_dist: bool) -> list[str]:
    if not is_dist:
        return texts
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, texts)  # small: strings of one step's responses
    return [t for part in parts for t in part]


def sampled_metrics(sampled: list[dict], masker, is_dist: bool) -> dict:
    """Metrics over every response sampled in the step on every rank (module docstring); every rank calls it."""
    real = [g for g in sampled if g["samples"]]  # placeholders (a stop) carry no samples
    rates = [pass_at_8([g["correct"]]) for g in real if len(g["correct"]) >= 8]
    total, count = all_sum([sum(rates), len(rates)], is_dist)
    row = {"pass_at_8": total / count} if count else {}
    texts = _gathered_texts([t for g in real for t in g["texts"]], is_dist)
    row.update(text_metrics(texts, masker))
    samples = [s for g in real for s in g["samples"]]
    planning = masker.mask([s.token_ids for s in samples], T=max((len(s.token_ids) for s in samples), default=1))
    flags = torch.cat([planning[i, :len(s.token_ids)] for i, s in enumerate(samples)]) if samples else torch.zeros(0)
    entropy = torch.tensor([h for s in samples for h in s.entropies], dtype=torch.float64)
    entropy, flags = all_gather_1d(entropy, is_dist), all_gather_1d(flags.double(), is_dist).bool()
    if entropy.numel():
        stats = high_entropy_planning_stats(entropy[None], flags[None], torch.ones_like(flags)[None])
        row.update({k: v.item() for k, v in stats.items()})
        row["sampled_planning_ratio"] = flags.double().mean().item()
    return row
