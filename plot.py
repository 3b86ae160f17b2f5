"""Training-dynamics figure from a run's metrics.jsonl (matplotlib, optional dependency).

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

PANELS = [  # (title, [(metric, label)])
    ("accuracy / reward", [("pass_rate", "accuracy (all sampled)"), ("reward", "reward (trained groups)"),
                           ("boxed_rate", "boxed rate (trained groups)"), ("val_pass@1", "validation pass@1")]),
    ("response length", [("response_len", "mean"), ("response_len_max", "max")]),
    ("semantic entropy (bits)", [("semantic_entropy", "semantic entropy")]),
    ("planning token ratio", [("planning_token_ratio", "planning / all tokens")]),
    ("token entropy", [("planning_entropy", "planning"), ("execution_entropy", "execution")]),
    ("relative perplexity", [("planning_rel_ppl", "planning"), ("execution_rel_ppl", "execution")]),
    ("clip fraction", [("clip_frac_low", "low"), ("clip_frac_high", "high")]),
    ("curriculum level", [("level", "level")]),
]


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
        if len(series) > 1:
            ax.legend(fontsize=8)
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
