"""What a run records about itself: metrics rows, sample rollouts, and the training-dynamics figure.

train.py combines each step's micro-batch statistics here (update_metrics: token-weighted means, exact
planning/execution statistics over the step's tokens, relative perplexity), appends them to metrics.jsonl
(MetricsLog first drops a torn last line and the rows past the checkpoint a resumed run restarts from:
repair_jsonl, which train.py also runs on rollouts.jsonl; with --log-to it also sends them to TensorBoard and/or
Weights & Biases), and writes sample rollouts with their planning
spans to rollouts.jsonl (write_rollouts: the first group whole, and failures of the others for error_types.py).
The figure (matplotlib, optional dependency):

Panels (3 rows of 4), one per question the HICRA/HGRPO papers ask of a run: is it learning (reward, accuracy, boxed
rate, validation pass@1; pass@8 over every sampled group, HICRA Fig. 8), how long are the answers, which curriculum
level is active, is the strategic vocabulary diversifying (semantic entropy; conditional entropy of the procedural
n-gram after a strategic gram; planning token ratio), where is uncertainty (the share of planning tokens among the
step's top-30% entropy tokens and the reverse, HICRA Figs. 9/10; planning vs execution token entropy), what is being
consolidated (relative perplexity = perplexity / first value), and how hard is the update pushing (clip fractions).
A metric a run did not log leaves its panel empty.

    python plot.py runs/hicra-xxxx            # writes runs/hicra-xxxx/dynamics.png
"""
import json
import math
import os
import sys

import torch

from strategic_grams import hierarchy_token_stats, planning_token_ratio

PANELS = [  # (title, [(metric, label)]), drawn row by row, 4 per row
    ("accuracy / reward", [("pass_rate", "accuracy (all sampled)"), ("reward", "reward (trained groups)"),
                           ("boxed_rate", "boxed rate (trained groups)"), ("val_pass@1", "validation pass@1")]),
    ("pass@8 (all sampled groups)", [("pass_at_8", "pass@8")]),
    ("response length", [("response_len", "mean"), ("response_len_max", "max")]),
    ("curriculum level", [("level", "level index (0 = L1)")]),
    ("semantic entropy (nats)", [("semantic_entropy", "semantic entropy")]),
    ("conditional entropy (nats)", [("conditional_entropy", "next procedural n-gram | strategic gram")]),
    ("planning token ratio", [("planning_token_ratio", "planning / all tokens")]),
    ("high-entropy tokens (top 30%)", [("planning_high_entropy_frac", "planning tokens that are high-entropy"),
                                       ("high_entropy_planning_frac", "high-entropy tokens that are planning")]),
    ("token entropy", [("planning_entropy", "planning"), ("execution_entropy", "execution")]),
    ("relative perplexity", [("planning_rel_ppl", "planning"), ("execution_rel_ppl", "execution")]),
    ("clip fraction", [("clip_frac_low", "low"), ("clip_frac_high", "high")]),
]
COLUMNS = 4


def repair_jsonl(path: str, max_step: int) -> tuple[int, int]:
    """Repair an append-only .jsonl of rows with a "step" before appending to it again: drop lines that do not
    parse (a kill mid-write tears the last one) and rows of steps after max_step (a resumed run redoes them).
    Rewritten atomically, only when something changes. Returns (torn lines dropped, later rows dropped)."""
    if not os.path.exists(path):
        return 0, 0
    with open(path, "rb") as f:  # bytes: a torn line may end inside a multi-byte character
        lines = [line for line in f.read().split(b"\n") if line.strip()]
    kept, torn, later = [], 0, 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            torn += 1
            continue
        if not isinstance(row, dict):
            torn += 1
        elif isinstance(row.get("step"), (int, float)) and row["step"] > max_step:
            later += 1
        else:
            kept.append(line + b"\n")
    if torn or later:
        with open(path + ".tmp", "wb") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
    return torn, later


TRACKERS = ("tensorboard", "wandb")  # --log-to: optional copies of metrics.jsonl's rows, neither package required


def tracker_error(names: list[str]) -> str | None:
    """Why --log-to cannot be honoured here (unknown name, package missing), or None: checked before the model loads."""
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        return f"--log-to: unknown tracker {unknown[0]!r} (choose from {', '.join(TRACKERS)})"
    for name in names:
        module = "torch.utils.tensorboard" if name == "tensorboard" else "wandb"
        try:
            __import__(module)
        except ImportError as e:
            return f"--log-to {name} needs the {name} package ({e}): pip install {name}"
    return None


class MetricsLog:
    """metrics.jsonl for appending, repaired first (repair_jsonl: no torn line, no rows past start_step), and the
    same rows to each tracker of --log-to: TensorBoard event files in RUN/tensorboard, a Weights & Biases run in
    RUN/wandb (offline unless WANDB_MODE says otherwise, so no network is needed; `wandb sync` uploads it later;
    a resumed run continues the same wandb run: its id is the run's id). Numbers only; each row at its step."""

    def __init__(self, out_dir: str, start_step: int, trackers=(), config: dict | None = None, run_id: str = ""):
        path = os.path.join(out_dir, "metrics.jsonl")
        repair_jsonl(path, start_step)
        self.file, self.tensorboard, self.wandb = open(path, "a"), None, None
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start_step + 1)
        if "wandb" in trackers:
            import wandb
            os.makedirs(os.path.join(out_dir, "wandb"), exist_ok=True)
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "hicra-rl"), dir=out_dir, config=config,
                                    mode=os.environ.get("WANDB_MODE", "offline"), id=run_id or None, resume="allow",
                                    name=os.path.basename(os.path.abspath(out_dir)))

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, row["step"])
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def update_metrics(loss_stats, token_stats, initial_ppl) -> dict:
    """Combine the first PPO epoch's micro-batch metrics: keys ending in _min by min, _max by max (loss.py's ranges:
    ratio, mismatch), the others as token-weighted means over the micro-batches whose value is finite."""
    row = {}
    if not loss_stats:
        return row
    weights = torch.tensor([float(s["tokens"]) for s in loss_stats])  # on the host, like the values below
    for key in loss_stats[0]:
        if key == "tokens":
            continue
        values = torch.stack([s[key].float() for s in loss_stats]).cpu()  # the stats may live on the GPU
        if key.endswith("_min"):
            row[key] = values.min().item()
        elif key.endswith("_max"):
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


def write_rollouts(out_dir, step, groups, masker, tokenizer, max_failed: int = 8):
    """Append this step's sample rollouts to rollouts.jsonl: every response of the first group, then the failed
    responses of the other groups (the first max_failed in group order), each with its planning spans. They are
    the input of sg_build.py (successful solutions) and of error_types.py (failures, judged with the problem
    text and the reference solution, None where the data has none)."""
    rows = [(g, text, result) for g in groups[:1] for text, result in zip(g["texts"], g["results"])]
    failed = [(g, text, result) for g in groups[1:] for text, result in zip(g["texts"], g["results"])
              if not result.correct]
    with open(os.path.join(out_dir, "rollouts.jsonl"), "a") as f:
        for g, text, result in rows + failed[:max_failed]:
            problem = g["problem"]
            f.write(json.dumps(dict(step=step, id=problem.id, problem=problem.problem,
                                    solution=getattr(problem, "solution", None), prompt=tokenizer.decode(g["prompt"]),
                                    response=text, gold=problem.answer, answer=result.answer, reward=result.score,
                                    correct=result.correct,
                                    planning_spans=[[a, b] for a, b, _ in masker.spans(text)])) + "\n")


def read_metrics(run_dir: str) -> list[dict]:
    """metrics.jsonl's rows; a torn last line (the run was killed mid-write) is skipped with a note."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise ValueError(f"{path}: not found (is {run_dir} a run folder?)")
    rows = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    for line_no, line in numbered:
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            if line_no == numbered[-1][0] and line_no == len(lines):  # the last line, with no newline after it
                print(f"plot: {path}:{line_no}: skipped a torn last line (the run was stopped mid-write)")
                continue
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
    fig = draw_figure(read_metrics(run_dir), os.path.basename(os.path.normpath(run_dir)))
    out = out or os.path.join(run_dir, "dynamics.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def draw_figure(rows: list[dict], title: str):
    """metrics.jsonl rows -> the matplotlib figure of PANELS (rows of COLUMNS panels; spare cells hidden)."""
    import matplotlib.pyplot as plt
    grid_rows = -(-len(PANELS) // COLUMNS)
    fig, axes = plt.subplots(grid_rows, COLUMNS, figsize=(18, 3.75 * grid_rows), squeeze=False)
    for ax in axes.flat[len(PANELS):]:
        ax.axis("off")
    for ax, (panel, series) in zip(axes.flat, PANELS):
        for key, label in series:
            points = [(r["step"], r[key]) for r in rows
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        for r in rows:  # level changes as vertical lines on every panel
            if r.get("level_changed"):
                ax.axvline(r["step"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(panel)
        ax.set_xlabel("step")
        if panel == "relative perplexity":  # few planning tokens make it jump by orders of magnitude
            ax.set_yscale("log")
        if len(series) > 1:
            if ax.get_legend_handles_labels()[0]:  # nothing to label when the run logged none of them
                ax.legend(fontsize=8)
        else:
            ax.set_ylabel(series[0][1])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit("usage: python plot.py RUN_DIR   (writes RUN_DIR/dynamics.png)")
    try:
        print(plot_run(sys.argv[1]))
    except ValueError as e:
        sys.exit(f"error: {e}")
