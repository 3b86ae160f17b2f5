"""error_types.py: verdict parsing, counts by hand, a scripted judge through the real prompt path, and the command
line end to end on a synthetic run folder with a tiny random judge."""
import importlib.util
import json
import math
from types import SimpleNamespace

import pytest

import error_types as ET


def rollout(step, correct, response="so \\boxed{3}", **extra):
    return {"step": step, "id": f"q{step}", "prompt": "PROMPT What is 1 + 2?", "response": response, "gold": "3",
            "correct": correct, **extra}


def write_run(folder, rows, tail=""):
    folder.mkdir(exist_ok=True)
    (folder / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return str(folder)


def test_parse_verdict():
    assert [ET.parse_verdict(t) for t in ("so \\boxed{C}", "\\boxed{(b)}", "\\boxed{D. Calculation}",
                                          "\\boxed{\\text{A}}", "\\boxed{A} then \\boxed{C}")] == ["C", "B", "D", "A", "C"]
    assert [ET.parse_verdict(t) for t in ("C", "\\boxed{Calculation}", "\\boxed{E}", "\\boxed{}", "")] == [None] * 5


def test_counts_by_step_by_hand():
    verdicts = [{"step": 2, "verdict": v} for v in ("C", "C", "A", None)] + [{"step": 1, "verdict": v} for v in
                                                                           ("D", "B", None, None, "B")]
    one, two = ET.count_by_step(verdicts)
    assert one == {"step": 1, "failed": 5, "A": 0, "B": 2, "C": 0, "D": 1, "planning": 0, "other": 3, "unparsed": 2,
                   "planning_frac": 0.0}
    assert two == {"step": 2, "failed": 4, "A": 1, "B": 0, "C": 2, "D": 0, "planning": 2, "other": 1, "unparsed": 1,
                   "planning_frac": 2 / 3}
    assert math.isnan(ET.count_by_step([{"step": 3, "verdict": None}])[0]["planning_frac"])


def test_failed_rows_are_read_and_bad_rows_named(tmp_path, capsys):
    rows = [rollout(1, False), rollout(1, True), rollout(1, False), rollout(2, False), {"step": 2, "correct": False}]
    run = write_run(tmp_path / "run", rows, tail='{"step": 3, "resp')  # a torn last line
    failed = ET.read_failed(f"{run}/rollouts.jsonl")
    assert [(r["step"], r["correct"]) for r in failed] == [(1, False), (1, False), (2, False)]
    err = capsys.readouterr().err
    assert "rollouts.jsonl line 5: needs step, response, correct" in err and "rollouts.jsonl line 6: bad JSON" in err
    assert len(ET.read_failed(f"{run}/rollouts.jsonl", limit_per_step=1)) == 2
    long = ET.judge_text(rollout(1, False, response="x" * 50 + "y" * 50, solution="1 + 2 = 3"), 20)
    assert "x" * 10 + "\n[...]\n" + "y" * 10 in long and "x" * 11 not in long
    assert "Reference solution:\n1 + 2 = 3" in long and "Correct final answer: 3" in long and "PROMPT What" in long


def test_a_scripted_judge_through_the_real_prompt_path(tmp_path, tiny_chat_model, monkeypatch):
    """generate replaced by a judge that answers by the response's text: exact counts, and every prompt seen."""
    import model as M
    verdict_of = {"plan": "I think \\boxed{C}", "calc": "\\boxed{D}", "read": "\\boxed{A}", "junk": "no idea"}
    rows = [rollout(1, False, "plan"), rollout(1, False, "calc"), rollout(1, True, "plan"), rollout(2, False, "junk"),
            rollout(2, False, "plan"), rollout(2, False, "read"), rollout(3, True, "calc")]
    run = write_run(tmp_path / "run", rows)
    _, tokenizer = M.load_model(tiny_chat_model)
    seen = []

    def scripted(model, prompts, params, engine, tokenizer_):
        texts = [tokenizer.decode(p) for p in prompts]
        seen.extend(texts)
        answers = [next(v for k, v in verdict_of.items() if f"(incorrect):\n{k}\n" in t) for t in texts]
        return [SimpleNamespace(token_ids=tokenizer.encode(a, add_special_tokens=False)) for a in answers], {}
    monkeypatch.setattr(ET, "generate", scripted)
    summary = ET.run(run, ET.JudgeConfig(judge=tiny_chat_model, batch=2))
    assert len(seen) == 5 and all(t.startswith("<|im_start|>user\nYou are a mathematics teacher") for t in seen)
    assert [(c["step"], c["planning"], c["other"], c["unparsed"]) for c in summary["steps"]] == [(1, 1, 1, 0),
                                                                                                  (2, 1, 1, 1)]
    saved = [json.loads(line) for line in open(tmp_path / "run" / "error_types.jsonl")]
    assert [v["verdict"] for v in saved] == ["C", "D", None, "C", "A"]
    assert json.load(open(tmp_path / "run" / "error_types.json"))["steps"] == summary["steps"]


def test_cli_end_to_end_with_a_tiny_random_judge(tmp_path, tiny_chat_model, capsys):
    rows = [rollout(s, c, f"response {s} {i}") for s in (1, 2) for i, c in enumerate((False, True, False))]
    run = write_run(tmp_path / "run", rows)
    ET.main([run, "--judge", tiny_chat_model, "--max-new-tokens", "6", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "step 1: 2 failed" in out and "step 2: 2 failed" in out
    counts = json.load(open(tmp_path / "run" / "error_types.json"))["steps"]
    for c in counts:  # a random judge rarely boxes a letter: whatever it says is counted, nothing dropped
        assert c["failed"] == 2 == c["planning"] + c["other"] + c["unparsed"]
    assert len(open(tmp_path / "run" / "error_types.jsonl").readlines()) == 4
    assert (tmp_path / "run" / "error_types.png").exists() == (importlib.util.find_spec("matplotlib") is not None)
    with pytest.raises(SystemExit, match="rollouts.jsonl: not found"):
        ET.main([str(tmp_path / "nothing"), "--judge", tiny_chat_model])
    with pytest.raises(SystemExit, match="no failed rollouts"):
        ET.main([write_run(tmp_path / "solved", [rollout(1, True)]), "--judge", tiny_chat_model])
