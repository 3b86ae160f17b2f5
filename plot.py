"""What a run records about itself: metrics rows, sample rollouts, and the training-dynamics figure.

train.py combines each step's micro-batch statistics here (update_metrics: token-weighted means, exact
planning/execution statistics over the step's tokens, relative perplexity), appends them to metrics.jsonl
(open_metrics drops rows past the checkpoint a resumed run restarts from), and writes sample rollouts with
their planning spans to rollouts.jsonl. The figure (matplotlib, optional dependency):

Panels, one per question the HICRA/HGRPO papers ask of a run: is it learning (reward, accuracy, boxed
rate), how long are the answers, is the strategic vocabulary diversifying (semantic entropy, planning
token ratio), where is uncertainty (planning vs execution token entropy), what is being consolidated
(relative perplexity = perplexity / first value), how hard is the update pushing (clip fractions),
and which curriculum level is active.

    python plot.py runs/hicra-xxxx            # writes runs/hicra-xxxx/dynamics.png
"""
import json
import math
import os
import sys

import torch

from strategic_grams import hierarchy_token_stats, planning_token_ratio

PANELS = [  # (title, [(metric, label)])
    ("accuracy / reward", [("pass_rate", "accuracy (all sampled)"), ("reward", "reward (trained groups)"),
                           ("boxed_rate", "boxed rate (trained groups)"), ("val_pass@1", "validation pass@1")]),
    ("response length", [("response_len", "mean"), ("response_len_max", "max")]),
    ("semantic entropy (nats)", [("semantic_entropy", "semantic entropy")]),
    ("planning token ratio", [("planning_token_ratio", "planning / all tokens")]),
    ("token entropy", [("planning_entropy", "planning"), ("execution_entropy", "execution")]),
    ("relative perplexity", [("planning_rel_ppl", "planning"), ("execution_rel_ppl", "execution")]),
    ("clip fraction", [("clip_frac_low", "low"), ("clip_frac_high", "high")]),
    ("curriculum level", [("level", "level index (0 = L1)")]),
]


def open_metrics(out_dir, start_step):
    """metrics.jsonl for appending, without rows past the checkpoint we resumed from (they get redone)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(path):
        rows = [line for line in open(path) if line.strip() and json.loads(line)["step"] <= start_step]
        open(path, "w").writelines(rows)
    return open(path, "a")


def update_metrics(loss_stats, token_stats, initial_ppl) -> dict:
    """Combine the first PPO epoch's micro-batch metrics: token-weighted means, min/max for the ratio."""
    row = {}
    if not loss_stats:
        return row
    weights = torch.tensor([float(s["tokens"]) for s in loss_stats])
    for key in loss_stats[0]:
        if key == "tokens":
            continue
        values = torch.stack([s[key].float() for s in loss_stats])
        if key == "ratio_min":
            row[key] = values.min().item()
        elif key == "ratio_max":
            row[key] = values.max().item()
        else:
            finite = torch.isfinite(values)  # e.g. no planning tokens in a micro-batch
            row[key] = ((values * weights)[finite].sum() / weights[finite].sum()).item() if finite.any() else float("nan")
    entropy, logprobs, planning, gap, advantages = (torch.cat(parts) for parts in zip(*token_stats))  # flat valid tokens
    for name, subset in (("adv_planning_mean", planning), ("adv_execution_mean", ~planning)):  # exact, not token-weighted
        row[name] = advantages[subset].mean().item() if subset.any() else float("nan")
    ones = torch.ones_like(planning)[None]
    stats = hierarchy_token_stats(entropy[None], logprobs[None], planning[None], ones)
    row.update({k: v.item() for k, v in stats.items()})
    row["planning_token_ratio"] = planning_token_ratio(planning[None], ones).item()
    row["logprob_gap"] = gap.abs().mean().item()  # |trainer - sampler| logprob at the first epoch
    for kind in ("planning", "execution"):  # relative perplexity = ppl / its first logged value
        ppl = row.get(f"{kind}_ppl", float("nan"))
        if math.isfinite(ppl):
            initial_ppl.setdefault(kind, ppl)
            row[f"{kind}_rel_ppl"] = ppl / initial_ppl[kind]
    return row


def write_rollouts(out_dir, step, groups, masker, tokenizer):
    """Sample rollouts (one group) with planning spans, for reading and as SG-construction input."""
    with open(os.path.join(out_dir, "rollouts.jsonl"), "a") as f:
        for g in groups[:1]:
            prompt = tokenizer.decode(g["prompt"])
            for text, result in zip(g["texts"], g["results"]):
                f.write(json.dumps(dict(step=step, id=g["problem"].id, prompt=prompt, response=text, gold=g["problem"].answer,
                                        answer=result.answer, reward=result.score, correct=result.correct,
                                        planning_spans=[[a, b] for a, b, _ in masker.spans(text)])) + "\n")


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise ValueError(f"{path}: not found (is {run_dir} a run folder?)")
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not JSON ({e})") from None
    return rows


def plot_run(run_dir: str, out: str | None = None) -> str | None:
    """Write the figure; returns its path, or None (with a message) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed (pip install matplotlib); no figure written")
        return None
    rows = read_metrics(run_dir)
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for ax, (title, series) in zip(axes.flat, PANELS):
        for key, label in series:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        for r in rows:  # level changes as vertical lines on every panel
            if r.get("level_changed"):
                ax.axvline(r["step"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        if title == "relative perplexity":  # few planning tokens make it jump by orders of magnitude
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=8)
        else:
            ax.set_ylabel(series[0][1])
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "dynamics.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit("usage: python plot.py RUN_DIR   (writes RUN_DIR/dynamics.png)")
    try:
        print(plot_run(sys.argv[1]))
    except ValueError as e:
        sys.exit(f"error: {e}")
