"""Side by side: several runs' curves and a table of mean +- sd over seeds; and where a task starts (the probe).

Runs. `python compare.py RUN_A RUN_B ... [--labels A,A,B,B] [--out fig.png]` reads each run folder's
metrics.jsonl (plot.read_metrics; training rows only, the last row of a step wins) and config.json, groups the
runs by label (default: config.json's `algo`, so the seeds of one method go together), overlays their curves
(pass rate, planning-token ratio, semantic entropy, curriculum level: one thin line per run, the group's mean
over the steps all of its runs reached drawn thick; matplotlib optional, without it the table only) and prints a
markdown table, one column per group, of mean +- sd over its runs (sd with n - 1; one run: its value):
  final level          the level (1 = L1) of the run's last step
  steps to L_l         steps completed before the first step at level l (l >= 2), over the runs that got there
  pass rate L_l        mean pass rate over the run's steps at level l
  pass-rate AUC        area under the pass-rate curve per step, (1/T) sum_t pass_rate_t over the T steps
                       (unit-width steps, so it lies in [0, 1] and runs of other lengths compare)
  planning ratio, semantic entropy   means over the run's steps (finite values)
Pass rates of different levels are different tasks: a method that climbs sooner meets harder problems, so
read the per-level rates and the steps to each level before the AUC.

Probe. `python compare.py --probe words [--per-level 64 --k 8 --max-new-tokens 64]` samples the untrained
model (default: the embedded SmolLM2-135M) the way train.py's rollout does (problems.build_prompt with its
template and stop strings, rollout.generate, reward.score_batch) and prints, per level (difficulty) of the
data: accuracy, boxed rate, the planning-token ratio (strategic_grams.PlanningMasker over all response
tokens), the fraction of groups with 0 < #correct < k (the ones dynamic sampling keeps), mean length, the
truncated fraction and sampling tokens/s: where a task starts, before choosing its demo settings.

    python compare.py runs/hicra-s0 runs/hicra-s1 runs/dapo-s0 runs/dapo-s1 --out compare.png
    python compare.py --probe words --per-level 64 --k 8
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

import model as M
from cli import add_dataclass_args, dataclass_from_args
from plot import read_metrics
from problems import PromptConfig, build_prompt, load_problems, stop_strings
from reward import RewardConfig, score_batch
from rollout import EngineConfig, SamplingParams, generate
from strategic_grams import PlanningMasker, load_grams


# ----------------------------------------------------------------------------- runs
CURVES = [("pass_rate", "pass rate (all sampled)"), ("planning_token_ratio", "planning-token ratio"),
          ("semantic_entropy", "semantic entropy (nats)"), ("level", "curriculum level (1 = L1)")]


def read_run(run_dir: str) -> tuple[dict, list[dict]]:
    """(config.json, the training rows in step order) of one run folder; ValueError naming the file otherwise."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: not a directory (a run folder holds metrics.jsonl and config.json)")
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (is {run_dir} a run folder?)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    by_step, metrics = {}, os.path.join(run_dir, "metrics.jsonl")
    for row in read_metrics(run_dir):
        if isinstance(row, dict) and "pass_rate" in row:  # validation rows carry val_* fields only
            rate = row["pass_rate"]
            if not (isinstance(row.get("step"), int) and isinstance(row.get("level"), int)
                    and isinstance(rate, (int, float)) and not isinstance(rate, bool)):
                raise ValueError(f"{metrics}: row {row.get('step')!r}: step and level must be integers and pass_rate "
                                 f"a number, got {row.get('step')!r}, {row.get('level')!r}, {row['pass_rate']!r}")
            by_step[row["step"]] = row  # a repeated step: the last row wins
    if not by_step:
        raise ValueError(f"{metrics}: no training rows (rows with step, level and pass_rate)")
    return config, [by_step[s] for s in sorted(by_step)]


def _mean(values) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def run_summary(rows: list[dict]) -> dict:
    """One run's numbers (module docstring); levels are 1-based (row["level"] is the 0-based index)."""
    levels = [r["level"] + 1 for r in rows]
    steps_to = {}
    for row, level in zip(rows, levels):
        steps_to.setdefault(level, row["step"] - 1)  # steps completed before the first step at this level
    summary = {"final level": levels[-1]}
    summary.update({f"steps to L{lv}": steps_to[lv] for lv in sorted(steps_to) if lv >= 2})
    summary.update({f"pass rate L{lv}": _mean(r["pass_rate"] for r, x in zip(rows, levels) if x == lv)
                    for lv in sorted(set(levels))})
    summary["pass-rate AUC"] = _mean(r["pass_rate"] for r in rows)
    summary["planning ratio"] = _mean(r.get("planning_token_ratio") for r in rows)
    summary["semantic entropy"] = _mean(r.get("semantic_entropy") for r in rows)
    return summary


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with n - 1); sd is None for one value."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, sd


ROWS = ["final level", "steps to", "pass rate", "pass-rate AUC", "planning ratio", "semantic entropy"]


def _row_order(key: str) -> tuple[int, int]:
    kind, _, level = key.rpartition(" L")  # "steps to L3" -> ("steps to", 3)
    return (ROWS.index(kind), int(level)) if level.isdigit() else (ROWS.index(key), 0)


def table(summaries: dict[str, list[dict]]) -> str:
    """Markdown table, one column per group: "mean +- sd" over the group's runs that have the number; "(m/n)"
    when only m of its n runs do (e.g. m of them reached that level); "-" when none does."""
    keys = list(dict.fromkeys(k for runs in summaries.values() for run in runs for k in run))  # each row once
    lines = ["| | " + " | ".join(summaries) + " |", "| --- |" + " --- |" * len(summaries),
             "| runs | " + " | ".join(str(len(runs)) for runs in summaries.values()) + " |"]
    for key in sorted(keys, key=_row_order):
        cells = []
        for runs in summaries.values():
            values = [run[key] for run in runs if key in run and math.isfinite(run[key])]
            if not values:
                cells.append("-")
                continue
            mean, sd = mean_sd(values)
            digits = 1 if key.startswith("steps") else 2 if key == "final level" else 3
            cell = f"{mean:.{digits}f}" + (f" +- {sd:.{digits}f}" if sd is not None else "")
            cells.append(cell + (f" ({len(values)}/{len(runs)})" if len(values) < len(runs) else ""))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_runs(run_dirs: list[str], labels: list[str] | None) -> dict[str, list[tuple[str, list[dict]]]]:
    """label -> [(run folder, training rows)], in first-seen order; default label: config.json's algo."""
    if not run_dirs:
        raise ValueError("no run folders given (python compare.py RUN_A RUN_B ...)")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"--labels gives {len(labels)} labels for {len(run_dirs)} run folders (one per run)")
    groups = {}
    for i, run_dir in enumerate(run_dirs):
        config, rows = read_run(run_dir)
        label = labels[i] if labels is not None else config.get("algo")
        if not isinstance(label, str) or not label:
            raise ValueError(f"{os.path.join(run_dir, 'config.json')}: no 'algo' to label the run by; pass --labels")
        groups.setdefault(label, []).append((run_dir, rows))
    return groups


def plot_groups(groups: dict, out: str) -> str | None:
    """The overlay figure (CURVES): thin lines per run, the group's mean over common steps thick."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare: matplotlib is not installed (pip install matplotlib); no figure written")
        return None
    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4))
    for ax, (key, title) in zip(axes, CURVES):
        for color, (label, runs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9, groups.items()):
            curves = [{r["step"]: r[key] + (key == "level") for r in rows
                       if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])} for _, rows in runs]
            for curve in curves:
                ax.plot(list(curve), list(curve.values()), color=color, alpha=0.35, linewidth=1)
            common = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(common, [_mean(c[s] for c in curves) for s in common], color=color, linewidth=2.5,
                    label=f"{label} (mean of {len(runs)})")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def compare(run_dirs: list[str], labels: list[str] | None = None, out: str | None = None) -> str:
    """The table (returned and printed) and, with `out`, the figure."""
    groups = group_runs(run_dirs, labels)
    text = table({label: [run_summary(rows) for _, rows in runs] for label, runs in groups.items()})
    print(text)
    if out:
        figure = plot_groups(groups, out)
        if figure:
            print(f"figure: {figure}")
    return text


# ----------------------------------------------------------------------------- probe
@dataclass
class ProbeConfig:
    probe: str = ""  # data to probe (e.g. words, arith, words1, a .jsonl): one table row per difficulty
    model: str = "default"  # HF checkpoint folder, or 'default' (embedded SmolLM2-135M-Instruct)
    per_level: int = 64  # problems per level (the first ones of each difficulty)
    k: int = 8  # samples per problem (the group size G)
    max_new_tokens: int = 64  # response length cap
    temperature: float = 1.0  # sampling temperature
    template: str = "auto"  # prompt template (problems.TEMPLATES)
    grams: str | None = None  # strategic-gram JSON (default: the paper's list)
    show: int = 0  # print this many sample responses per level
    seed: int = 0  # data and sampling seed


def probe_level(model, tokenizer, masker, problems, cfg: ProbeConfig) -> dict:
    """One level's row: sample k responses per problem as train.py's rollout does, score and mask them."""
    prompt_cfg = PromptConfig(template=cfg.template)
    prompts = [tokenizer.encode(build_prompt(p, tokenizer, prompt_cfg), add_special_tokens=False) for p in problems]
    params = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, n=cfg.k, seed=cfg.seed,
                            stop_strings=stop_strings(prompt_cfg, problems))
    start = time.perf_counter()
    with torch.no_grad():
        samples, stats = generate(model, prompts, params, EngineConfig(max_num_seqs=256), tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
    results = score_batch(texts, [p.answer for p in problems for _ in range(cfg.k)], RewardConfig())
    masks = masker.masks([s.token_ids for s in samples])
    tokens = sum(len(m) for m in masks)
    correct = [sum(r.correct for r in results[i * cfg.k:(i + 1) * cfg.k]) for i in range(len(problems))]
    for text, result in list(zip(texts, results))[:cfg.show * cfg.k:cfg.k]:  # the first sample of each problem
        print(f"  [{'ok' if result.correct else '--'}] {text!r}")
    return dict(problems=len(problems), accuracy=sum(r.correct for r in results) / len(results),
                boxed=sum(r.format_ok for r in results) / len(results),
                planning=sum(int(m.sum()) for m in masks) / max(tokens, 1),
                signal=sum(0 < c < cfg.k for c in correct) / len(problems), length=tokens / len(samples),
                truncated=sum(s.finish_reason == "length" for s in samples) / len(samples),
                tok_s=stats["generated_tokens"] / seconds)


def probe(cfg: ProbeConfig) -> list[dict]:
    """The probe table's rows, one per difficulty of cfg.probe (printed as they come)."""
    if min(cfg.per_level, cfg.k, cfg.max_new_tokens) < 1:
        raise ValueError("--per-level, --k and --max-new-tokens must be >= 1")
    problems = load_problems(cfg.probe, builtin_per_level=cfg.per_level, seed=cfg.seed, verbose=False)
    levels = sorted({p.difficulty for p in problems}, key=lambda d: -1 if d is None else d)
    model, tokenizer = M.load_model(cfg.model)
    if tokenizer is None:
        raise ValueError(f"{cfg.model}: the model folder has no tokenizer files")
    masker = PlanningMasker(tokenizer, load_grams(cfg.grams))
    print(f"probe {cfg.probe}: {cfg.per_level} problems x {cfg.k} samples per level, T = {cfg.temperature}, "
          f"{cfg.max_new_tokens} new tokens, template {cfg.template}")
    header = ("| difficulty | problems | accuracy | boxed | planning ratio | groups with signal | length | truncated "
              "| tok/s |")
    print(header + "\n|" + " --- |" * (header.count("|") - 1))
    rows = []
    for d in levels:
        level = [p for p in problems if p.difficulty == d][:cfg.per_level]
        row = dict(difficulty=d, **probe_level(model, tokenizer, masker, level, cfg))
        rows.append(row)
        print(f"| {'none' if d is None else f'{d:.2f}'} | {row['problems']} | {row['accuracy']:.3f} | "
              f"{row['boxed']:.3f} | {row['planning']:.3f} | {row['signal']:.3f} | {row['length']:.1f} | "
              f"{row['truncated']:.3f} | {row['tok_s']:.0f} |", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders to compare (each with metrics.jsonl, config.json)")
    parser.add_argument("--labels", help="comma-separated label per run (default: each config.json's algo)")
    parser.add_argument("--out", help="overlay figure to write (e.g. compare.png; needs matplotlib)")
    add_dataclass_args(parser, ProbeConfig)
    args = parser.parse_args(argv)
    try:
        cfg = dataclass_from_args(ProbeConfig, args)
        if cfg.probe and args.runs:
            raise ValueError("give run folders or --probe, not both")
        if cfg.probe:
            probe(cfg)
        else:
            compare(args.runs, args.labels.split(",") if args.labels is not None else None, args.out)
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
