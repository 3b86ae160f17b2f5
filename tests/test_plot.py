"""plot.py: rollouts.jsonl rows as error_types.py reads them, the figure's panels for the metrics train.py logs, and
update_metrics with the statistics on the GPU."""
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch

import error_types
import plot
from problems import Problem
from strategic_grams import GramMatcher, high_entropy_planning_stats, text_metrics


class Masker:
    """Planning spans: the first 'wait' of a text."""

    def spans(self, text):
        start = text.find("wait")
        return [] if start < 0 else [(start, start + 4, "wait")]


class Tokenizer:
    def decode(self, ids):
        return "|".join(map(str, ids))


def group(problem, prompt, outcomes):
    """A train.py group: one response per outcome (True = correct), rewards 1 / -1."""
    texts = [f"{problem.id} response {j}: {'wait, ' if j % 2 else ''}\\boxed{{{j}}}" for j in range(len(outcomes))]
    results = [SimpleNamespace(answer=str(j), score=1.0 if ok else -1.0, correct=ok) for j, ok in enumerate(outcomes)]
    return dict(problem=problem, prompt=prompt, texts=texts, results=results)


def groups():
    p = [Problem("p0", "What is 1 + 1?", "2", None, "s", solution="1 + 1 = 2."),
         Problem("p1", "What is 2 + 3?", "5", None, "s"),
         Problem("p2", "What is 9 - 4?", "5", None, "s", solution="9 - 4 = 5.")]
    return [group(p[0], [7, 8], [True, False, True]), group(p[1], [9], [False, True, False, False]),
            group(p[2], [5, 6], [False, False, False, True, False])]


def test_rollouts_keep_the_first_group_and_the_first_failures_of_the_others(tmp_path):
    plot.write_rollouts(tmp_path, 3, groups(), Masker(), Tokenizer(), max_failed=5)
    rows = [json.loads(line) for line in open(tmp_path / "rollouts.jsonl")]
    # group 0 whole (3), then failures in group order: p1's 0, 2, 3 and p2's 0, 1 (p2's 2 and 4 are past max_failed)
    assert [(r["id"], r["response"].split(":")[0]) for r in rows] == \
        [("p0", "p0 response 0"), ("p0", "p0 response 1"), ("p0", "p0 response 2"), ("p1", "p1 response 0"),
         ("p1", "p1 response 2"), ("p1", "p1 response 3"), ("p2", "p2 response 0"), ("p2", "p2 response 1")]
    assert [r["correct"] for r in rows] == [True, False, True] + [False] * 5
    assert set(rows[0]) == {"step", "id", "problem", "solution", "prompt", "response", "gold", "answer", "reward",
                            "correct", "planning_spans"}
    assert rows[0]["problem"] == "What is 1 + 1?" and rows[0]["solution"] == "1 + 1 = 2." and rows[0]["gold"] == "2"
    assert rows[3]["solution"] is None and rows[3]["prompt"] == "9" and rows[7]["prompt"] == "5|6"
    assert rows[1]["planning_spans"] == [[rows[1]["response"].index("wait"), rows[1]["response"].index("wait") + 4]]
    assert rows[0]["planning_spans"] == [] and rows[4]["reward"] == -1.0 and rows[4]["answer"] == "2"
    assert all(r["step"] == 3 for r in rows)


def test_at_most_eight_failures_of_the_other_groups_by_default(tmp_path):
    many = groups() + [group(Problem(f"q{i}", "Q?", "1", None, "s"), [1], [False] * 3) for i in range(3)]
    plot.write_rollouts(tmp_path, 1, many, Masker(), Tokenizer())
    rows = [json.loads(line) for line in open(tmp_path / "rollouts.jsonl")]
    assert len(rows) == 3 + 8 and sum(not r["correct"] for r in rows[3:]) == 8  # 3 + 4 + 9 failures were there


def test_error_types_reads_what_write_rollouts_writes(tmp_path):
    plot.write_rollouts(tmp_path, 2, groups(), Masker(), Tokenizer(), max_failed=3)
    failed = error_types.read_failed(str(tmp_path / "rollouts.jsonl"))
    assert [(r["step"], r["id"]) for r in failed] == [(2, "p0"), (2, "p1"), (2, "p1"), (2, "p1")]
    with_solution = error_types.judge_text(failed[0], 4000)
    assert "What is 1 + 1?" in with_solution and "Reference solution:\n1 + 1 = 2." in with_solution
    assert "Correct final answer: 2" in with_solution and failed[0]["response"] in with_solution
    without = error_types.judge_text(failed[1], 4000)
    assert "What is 2 + 3?" in without and "Reference solution" not in without and "Correct final answer: 5" in without


def test_figure_has_a_panel_line_for_every_metric_the_step_logs():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # the names as the producers spell them, so a renamed metric would miss its panel
    names = set(high_entropy_planning_stats(torch.rand(2, 5), torch.rand(2, 5) > 0.5, torch.ones(2, 5)))
    names |= set(text_metrics(["wait, let me check"], GramMatcher(["wait"])))
    names |= {"pass_at_8", "val_pass@1", "pass_rate"}
    rows = [{"step": s, **{name: 0.1 * s + i for i, name in enumerate(sorted(names - {"val_pass@1"}))}}
            for s in (1, 2, 3)] + [{"step": 3, "val_pass@1": 0.25}]
    fig = plot.draw_figure(rows, "run")
    lines = {(ax.get_title(), line.get_label()): list(line.get_ydata()) for ax in fig.axes for line in ax.get_lines()}
    by_metric = {metric: (title, label) for title, series in plot.PANELS for metric, label in series}
    assert names <= set(by_metric)
    for name in names:
        expected = [r[name] for r in rows if name in r]
        assert lines[by_metric[name]] == pytest.approx(expected), name
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == len(plot.PANELS) and len(fig.axes) == 3 * plot.COLUMNS  # 3 rows of 4, spare cell hidden
    plt.close(fig)


def test_plot_run_writes_the_png(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "pass_at_8": 0.5, "conditional_entropy": 0.2,
                                                                "pass_rate": 0.1 * s}) + "\n" for s in (1, 2)))
    out = plot.plot_run(str(tmp_path))
    assert out == str(tmp_path / "dynamics.png") and open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def micro_batch_stats(device):
    """Two micro-batches' loss stats and token stats, as update.ppo_update returns them, on `device`."""
    t = lambda *v, dtype=torch.float32: torch.tensor(v, dtype=dtype, device=device)
    loss_stats = [dict(tokens=t(2, dtype=torch.long)[0], ratio_min=t(0.9)[0], ratio_max=t(1.2)[0], entropy=t(1.0)[0]),
                  dict(tokens=t(3, dtype=torch.long)[0], ratio_min=t(0.8)[0], ratio_max=t(1.1)[0], entropy=t(2.0)[0])]
    token_stats = [(t(1.0, 2.0), t(-1.0, -2.0), t(True, False, dtype=torch.bool), t(0.1, -0.3), t(0.5, 0.5)),
                   (t(3.0, 4.0, 5.0), t(-0.5, -0.5, -0.5), t(False, False, True, dtype=torch.bool), t(0.0, 0.2, 0.2),
                    t(-1.0, -1.0, -1.0))]
    return loss_stats, token_stats


def test_update_metrics_by_hand():
    row = plot.update_metrics(*micro_batch_stats("cpu"), {})
    assert row["ratio_min"] == pytest.approx(0.8) and row["ratio_max"] == pytest.approx(1.2)
    assert row["entropy"] == pytest.approx((1.0 * 2 + 2.0 * 3) / 5)
    assert row["planning_entropy"] == pytest.approx((1.0 + 5.0) / 2) and row["execution_entropy"] == pytest.approx(3.0)
    assert row["planning_ppl"] == pytest.approx(math.exp(0.75)) and row["planning_rel_ppl"] == pytest.approx(1.0)
    assert row["planning_token_ratio"] == pytest.approx(2 / 5) and row["logprob_gap"] == pytest.approx(0.8 / 5)
    assert row["adv_planning_mean"] == pytest.approx(-0.25) and row["adv_execution_mean"] == pytest.approx(-0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_update_metrics_with_the_stats_on_the_gpu_equals_the_host():
    on_host = plot.update_metrics(*micro_batch_stats("cpu"), {})
    on_gpu = plot.update_metrics(*micro_batch_stats("cuda"), {})
    assert on_gpu.keys() == on_host.keys()
    for key, value in on_host.items():
        assert isinstance(on_gpu[key], float) and on_gpu[key] == pytest.approx(value, rel=1e-6), key


class FakeTrackers:
    """Stand-ins for torch.utils.tensorboard and wandb that record what MetricsLog sends them."""

    def __init__(self):
        self.calls = []
        tracker = self

        class SummaryWriter:
            def __init__(self, folder, purge_step=None):
                tracker.calls.append(("tb-open", folder.rsplit("/", 1)[-1], purge_step))

            def add_scalar(self, key, value, step):
                tracker.calls.append(("tb", key, value, step))

            def flush(self):
                pass

            def close(self):
                tracker.calls.append(("tb-close",))

        class Run:
            def log(self, values, step):
                tracker.calls.append(("wandb", values, step))

            def finish(self):
                tracker.calls.append(("wandb-finish",))

        def init(**kwargs):
            tracker.calls.append(("wandb-init", kwargs["mode"], kwargs["id"], kwargs["config"]))
            return Run()

        self.tensorboard = SimpleNamespace(SummaryWriter=SummaryWriter)
        self.wandb = SimpleNamespace(init=init)


def test_metrics_log_sends_each_row_to_the_trackers(tmp_path, monkeypatch):
    fake = FakeTrackers()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake.tensorboard)
    monkeypatch.setitem(sys.modules, "wandb", fake.wandb)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": 0.7}\n{"step": 3, "rew')
    log = plot.MetricsLog(str(tmp_path), 1, ["tensorboard", "wandb"], {"lr": 1e-6}, "run-7")
    log.write({"step": 2, "reward": 0.25, "level_name": "L1", "nan": float("nan"), "level": 0})
    log.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["level_name"] == "L1"  # repaired, then appended
    assert fake.calls == [("tb-open", "tensorboard", 2), ("wandb-init", "offline", "run-7", {"lr": 1e-6}),
                          ("tb", "reward", 0.25, 2), ("tb", "level", 0, 2), ("wandb", {"reward": 0.25, "level": 0}, 2),
                          ("tb-close",), ("wandb-finish",)]


def test_tracker_errors_name_the_flag_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import raises ImportError
    assert plot.tracker_error([]) is None
    assert "unknown tracker 'mlflow'" in plot.tracker_error(["mlflow"])
    assert "unknown tracker 'mlflow'" in plot.tracker_error(["wandb", "mlflow"])  # names first, whatever is installed
    assert plot.tracker_error(["wandb"]).startswith("--log-to wandb needs the wandb package")
    assert plot.tracker_error(["wandb"]).endswith("pip install wandb")


def test_real_tensorboard_and_wandb_offline_runs(tmp_path, monkeypatch):
    """With the packages installed: the event file holds the rows, and an offline wandb run folder is written."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = plot.MetricsLog(str(tmp_path), 0, ["tensorboard", "wandb"], {"lr": 1e-6}, "abc123")
    for step, reward in ((1, 0.5), (2, -0.25)):
        log.write({"step": step, "reward": reward})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward")] == [(1, 0.5), (2, -0.25)]
    assert any(p.name.startswith("offline-run-") and p.name.endswith("-abc123") for p in (tmp_path / "wandb").iterdir())
