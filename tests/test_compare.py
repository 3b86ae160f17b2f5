"""compare.py: the table over synthetic run folders (means and sds worked out by hand below), the overlay
figure, one-line errors for bad run folders, and the probe's numbers on responses whose planning tokens and
correctness are known by construction."""
import json
import math
import os

import pytest

import compare as C
from rollout import Sample


def make_run(folder, algo, rows, extra=()):
    """A run folder: config.json and metrics.jsonl with one training row per (level index, pass rate, ratio, H)."""
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"algo": algo, "seed": 0}, f)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for step, (level, rate, ratio, entropy) in enumerate(rows, 1):
            f.write(json.dumps(dict(step=step, level=level, pass_rate=rate, planning_token_ratio=ratio,
                                    semantic_entropy=entropy)) + "\n")
        for line in extra:
            f.write(line + "\n")
    return str(folder)


@pytest.fixture
def runs(tmp_path):
    # hicra seed A: L1 L1 L2 L2; seed B: L1 L2 L2 L3; dapo: one run, L1 throughout (a validation row in between)
    a = make_run(tmp_path / "hicra-a", "hicra", [(0, 0.2, 0.10, 1.0), (0, 0.6, 0.20, 2.0), (1, 0.1, 0.30, 0.0),
                                                 (1, 0.3, float("nan"), 1.0)])
    b = make_run(tmp_path / "hicra-b", "hicra", [(0, 0.4, 0.05, 0.5), (1, 0.2, 0.05, 0.5), (1, 0.4, 0.05, 0.5),
                                                 (2, 0.0, 0.05, 0.5)])
    d = make_run(tmp_path / "dapo", "dapo", [(0, 0.5, 0.0, 0.0), (0, 0.7, 0.0, 0.0)],
                 extra=['{"step": 2, "val_pass@1": 0.9}'])
    return a, b, d


def test_run_summary_by_hand(runs, tmp_path):
    _, rows = C.read_run(runs[0])
    summary = C.run_summary(rows)
    assert summary["final level"] == 2 and summary["steps to L2"] == 2 and "steps to L3" not in summary
    assert summary["pass rate L1"] == pytest.approx(0.4) and summary["pass rate L2"] == pytest.approx(0.2)
    assert summary["pass-rate AUC"] == pytest.approx((0.2 + 0.6 + 0.1 + 0.3) / 4)
    assert summary["planning ratio"] == pytest.approx(0.2)  # the NaN step is left out: (0.1 + 0.2 + 0.3) / 3
    assert summary["semantic entropy"] == pytest.approx(1.0)
    # down again (adaptive can go back), and a step logged twice (the last row counts): L1 0.2, L2 0.5, L1 0.6
    down = make_run(tmp_path / "down", "hicra", [(0, 0.2, 0.1, 0.0), (1, 0.9, 0.1, 0.0), (0, 0.6, 0.1, 0.0)],
                    extra=['{"step": 2, "level": 1, "pass_rate": 0.5}'])
    summary = C.run_summary(C.read_run(down)[1])
    assert summary["final level"] == 1 and summary["steps to L2"] == 1
    assert summary["pass rate L1"] == pytest.approx(0.4) and summary["pass rate L2"] == pytest.approx(0.5)
    assert summary["pass-rate AUC"] == pytest.approx((0.2 + 0.5 + 0.6) / 3)


def test_table_means_and_sds_by_hand(runs, capsys):
    text = C.compare(list(runs))
    assert text == capsys.readouterr().out.strip()
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert len(lines) == len(text.splitlines())  # every row once (two hicra runs share their keys)
    sd = lambda *v: math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1))
    assert lines[""] == "| | hicra | dapo |"
    assert lines["runs"] == "| runs | 2 | 1 |"
    # final level: hicra 2 and 3, dapo 1; steps to L2: 2 and 1; L3: only seed B (3 steps); dapo never
    assert lines["final level"] == f"| final level | 2.50 +- {sd(2, 3):.2f} | 1.00 |"
    assert lines["steps to L2"] == f"| steps to L2 | 1.5 +- {sd(2, 1):.1f} | - |"
    assert lines["steps to L3"] == "| steps to L3 | 3.0 (1/2) | - |"
    # pass rate L1: A (0.2 + 0.6) / 2 = 0.4, B 0.4; L2: A 0.2, B (0.2 + 0.4) / 2 = 0.3; dapo (0.5 + 0.7) / 2
    assert lines["pass rate L1"] == "| pass rate L1 | 0.400 +- 0.000 | 0.600 |"
    assert lines["pass rate L2"] == f"| pass rate L2 | 0.250 +- {sd(0.2, 0.3):.3f} | - |"
    assert lines["pass rate L3"] == "| pass rate L3 | 0.000 (1/2) | - |"
    # AUC: A 1.2 / 4 = 0.3, B 1.0 / 4 = 0.25; planning: A 0.2, B 0.05; semantic entropy: A 1.0, B 0.5
    assert lines["pass-rate AUC"] == f"| pass-rate AUC | 0.275 +- {sd(0.3, 0.25):.3f} | 0.600 |"
    assert lines["planning ratio"] == f"| planning ratio | 0.125 +- {sd(0.2, 0.05):.3f} | 0.000 |"
    assert lines["semantic entropy"] == f"| semantic entropy | 0.750 +- {sd(1.0, 0.5):.3f} | 0.000 |"
    assert list(lines)[3:] == ["final level", "steps to L2", "steps to L3", "pass rate L1", "pass rate L2",
                               "pass rate L3", "pass-rate AUC", "planning ratio", "semantic entropy"]


def test_labels_regroup_runs_and_the_figure_is_written(runs, tmp_path):
    text = C.compare(list(runs), labels=["x", "y", "x"], out=str(tmp_path / "fig.png"))
    assert text.splitlines()[0] == "| | x | y |" and "| runs | 2 | 1 |" in text
    # x = hicra-a and dapo: final levels 2 and 1
    assert f"| final level | 1.50 +- {math.sqrt(0.5):.2f} | 3.00 |" in text
    pytest.importorskip("matplotlib")
    assert os.path.getsize(tmp_path / "fig.png") > 1000


def test_bad_run_folders_give_one_line_errors(runs, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"nope: not a directory"):
        C.compare([runs[0], missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty/config\.json: not found"):
        C.compare([str(empty)])
    (empty / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"empty/config\.json: not JSON"):
        C.compare([str(empty)])
    (empty / "config.json").write_text('{"algo": "hicra"}')
    with pytest.raises(ValueError, match=r"empty/metrics\.jsonl: not found"):
        C.compare([str(empty)])
    (empty / "metrics.jsonl").write_text('{"step": 1, "val_pass@1": 0.5}\n')
    with pytest.raises(ValueError, match=r"empty/metrics\.jsonl: no training rows"):
        C.compare([str(empty)])
    (empty / "metrics.jsonl").write_text('{"step": 1, "level": "L1", "pass_rate": 0.5}\n')
    with pytest.raises(ValueError, match=r"empty/metrics\.jsonl: row 1: step and level must be integers"):
        C.compare([str(empty)])
    (empty / "config.json").write_text('{"seed": 1}')
    (empty / "metrics.jsonl").write_text('{"step": 1, "level": 0, "pass_rate": 0.5}\n')
    with pytest.raises(ValueError, match=r"config\.json: no 'algo' .*pass --labels"):
        C.compare([str(empty)])
    with pytest.raises(ValueError, match=r"--labels gives 1 labels for 2 run folders"):
        C.compare(list(runs[:2]), labels=["a"])
    with pytest.raises(SystemExit, match=r"^error: .*nope: not a directory"):
        C.main([runs[0], missing])
    with pytest.raises(SystemExit, match=r"^error: no run folders given"):
        C.main([])


def test_probe_level_counts_by_hand(monkeypatch, default_model_path):
    """Fake samples whose tokens are all planning ("so so so") or none ("\\boxed{N}"): the ratio is then a count."""
    from problems import Problem
    from strategic_grams import PlanningMasker, load_grams
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    masker = PlanningMasker(tokenizer, load_grams(None))
    plan, boxed = (tokenizer.encode(t, add_special_tokens=False) for t in ("so so so", "\\boxed{7}"))
    problems = [Problem("a", "q", "7", 0.0, "words"), Problem("b", "q", "7", 0.0, "words")]
    # problem a: "\boxed{7}" (right), "so so so" (no answer, truncated); problem b: "\boxed{7}" twice
    responses = [boxed, plan, boxed, boxed]
    seen = {}

    def fake_generate(model, prompts, params, engine=None, tokenizer=None, **kw):
        seen.update(prompts=len(prompts), n=params.n, stops=params.stop_strings, T=params.temperature)
        samples = [Sample(i // 2, i % 2, ids, [0.0] * len(ids), "length" if ids is plan else "stop")
                   for i, ids in enumerate(responses)]
        return samples, {"generated_tokens": sum(map(len, responses))}
    monkeypatch.setattr(C, "generate", fake_generate)
    cfg = C.ProbeConfig(probe="words", k=2, temperature=0.7)
    row = C.probe_level(None, tokenizer, masker, problems, cfg)
    assert seen == dict(prompts=2, n=2, stops=["\n\nQuestion"], T=0.7)  # the words template's stop string
    assert row["accuracy"] == 3 / 4 and row["boxed"] == 3 / 4 and row["truncated"] == 1 / 4
    assert row["signal"] == 1 / 2  # a: 1 of 2 correct; b: 2 of 2 (no signal)
    assert row["planning"] == pytest.approx(len(plan) / (len(plan) + 3 * len(boxed)))
    assert row["length"] == pytest.approx((len(plan) + 3 * len(boxed)) / 4)


def test_probe_end_to_end_on_a_tiny_model(tiny_chat_model, capsys):
    rows = C.probe(C.ProbeConfig(probe="words", model=tiny_chat_model, per_level=2, k=2, max_new_tokens=4))
    assert [r["difficulty"] for r in rows] == [0.0, 0.25, 0.5, 0.75]
    assert all(r["problems"] == 2 and 0 <= r["planning"] <= 1 and r["length"] <= 4 for r in rows)
    out = capsys.readouterr().out
    assert out.count("\n| 0.") == 4 and "| difficulty | problems | accuracy |" in out
    with pytest.raises(SystemExit, match="error: --per-level, --k and --max-new-tokens must be >= 1"):
        C.main(["--probe", "words", "--k", "0"])
    with pytest.raises(SystemExit, match="error: give run folders or --probe, not both"):
        C.main(["--probe", "words", "runs/x"])
