"""Olympiad-style answer forms (issue 16): a labelled set written from the rules (tests/verifier_forms.jsonl:
relations, intervals vs relations and set-builder, labelled answers, unordered collections with any separator,
presentation, false-positive guards), judged with and without math-verify; the verifier without math-verify."""
import json
import os
import subprocess
import sys
import time

import pytest

import answer_equiv
import verifier_child
from answer_equiv import is_equiv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMS = [json.loads(line) for line in open(os.path.join(ROOT, "tests", "verifier_forms.jsonl"))]
UNDISPUTED = [row for row in FORMS if not row["disputed"]]
MATH_VERIFY_ONLY = ("x \\approx 11", "11")  # (pred, gold) only math-verify reads (the fast path: undecided)


def test_the_labelled_set_covers_every_class_both_ways():
    assert len(FORMS) >= 250
    for name in ("relation", "interval", "labelled", "unordered", "presentation", "guard", "plain"):
        rows = [r for r in UNDISPUTED if r["class"] == name]
        assert len(rows) >= 20 and 0.25 < sum(r["label"] for r in rows) / len(rows) < 0.85, name
    pairs = {(r["gold"], r["pred"]) for r in UNDISPUTED}
    swapped = sum((r["pred"], r["gold"]) in pairs for r in UNDISPUTED)
    assert swapped >= 20  # both directions of the same pair


@pytest.mark.parametrize("row", UNDISPUTED, ids=lambda r: f"{r['class']}:{r['gold']}|{r['pred']}")
def test_labelled_form(row):
    pytest.importorskip("math_verify")
    start = time.monotonic()
    assert is_equiv(row["pred"], row["gold"]) is row["label"]
    assert time.monotonic() - start < 3.0


def test_agreement_and_slowest_case(capsys):
    """The numbers of the report: agreement on the undisputed rows and the slowest check."""
    pytest.importorskip("math_verify")
    verifier_child._SYMPY_CHILD.prepare()  # started once per process: not part of a check's time
    verdicts, slowest = [], (0.0, None)
    for row in FORMS:
        start = time.monotonic()
        verdict = is_equiv(row["pred"], row["gold"])
        slowest = max(slowest, (time.monotonic() - start, (row["gold"], row["pred"])))
        if not row["disputed"]:
            verdicts.append(verdict is row["label"])
    with capsys.disabled():
        print(f"\nlabelled forms: {sum(verdicts)}/{len(verdicts)} undisputed agree; "
              f"slowest {slowest[0]:.3f} s {slowest[1]}")
    assert sum(verdicts) / len(verdicts) >= 0.97 and slowest[0] < 3.0


def test_own_path_without_math_verify(monkeypatch, capsys):
    """No math-verify: the fast path alone, exactly the listed rows wrong, one warning, never an error."""
    monkeypatch.setitem(verifier_child._MATH_VERIFY, "available", None)
    monkeypatch.setitem(verifier_child._MATH_VERIFY, "cache", {})
    monkeypatch.setattr(verifier_child.importlib.util, "find_spec", lambda name: None)
    wrong = {(r["gold"], r["pred"]) for r in UNDISPUTED if is_equiv(r["pred"], r["gold"]) is not r["label"]}
    assert wrong == set()
    assert is_equiv(*MATH_VERIFY_ONLY) is False
    warnings = [line for line in capsys.readouterr().err.splitlines() if "math-verify" in line]
    assert len(warnings) == 1 and "not installed" in warnings[0]


_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
{block}
from answer_equiv import is_equiv
print(is_equiv("(3, \\\\infty)", "x > 3"), is_equiv("x \\\\approx 11", "11"), is_equiv("4", "3"), is_equiv("3", "3"))
"""


@pytest.mark.parametrize("block,reason", [("sys.modules['math_verify'] = None", "is not installed"),
                                          ("", "cannot be imported")])
def test_a_machine_without_math_verify(tmp_path, block, reason):
    """A broken or absent math-verify (the GPU box has only torch/transformers/numpy/sympy): in the parent
    (find_spec fails) or only in the sympy child (import fails there): own verdicts, one warning, no traceback."""
    shadow = tmp_path / "math_verify"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('math_verify blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=ROOT, block=block)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["True", "False", "False", "True"], out.stderr
    assert "Traceback" not in out.stderr
    warnings = [line for line in out.stderr.splitlines() if "math-verify" in line]
    assert len(warnings) == 1 and reason in warnings[0]


def test_math_verify_decides_what_the_fast_path_cannot():
    pytest.importorskip("math_verify")
    assert is_equiv(*MATH_VERIFY_ONLY) is True and is_equiv("x \\approx 12", "11") is False


def test_math_verify_runs_under_the_childs_alarm():
    """In the child a request past its seconds is interrupted by SIGALRM ("timeout"), the process lives on."""
    pytest.importorskip("math_verify")
    assert answer_equiv.serve_request(["(3, \\infty)", "x > 3", "mv", 5.0]) is True
    slow = ["\\frac{(x+1)^{30}(x-2)^{30}}{(x^2-x-2)^{29}}", "\\frac{(x+1)^{31}(x-2)^{30}}{(x^2-x-2)^{30}}", "mv", 0.06]
    start = time.monotonic()
    assert answer_equiv.serve_request(slow) == "timeout"  # about 2 s of simplify() when given the time
    assert time.monotonic() - start < 0.5
    assert answer_equiv.serve_request(["\\{1, 2\\}", "2, 1", "mv", 5.0]) is True


HOSTILE = ["9^{9^{9^{9}}}", "x > 9^{9^{9^{9}}}", "x \\approx (10^{400})!", "\\binom{10^{9}}{5} \\text{ or } 2",
           "{" * 400 + "}" * 400, "\\frac{\\frac{\\frac{", "\\left( \\right] \\begin{pmatrix}",
           "t \\mid t > 10^{10^{10}}"]


@pytest.mark.parametrize("gold", ["x > 3", "x \\approx 3", "(a,b)=(1,2)", "\\{x \\mid x > 0\\}", "1, 2 \\text{ or } 3"])
def test_hostile_answers_to_forms_math_verify_reads(gold):
    """Forms that reach math-verify keep the time limit; huge numbers and deep nesting never reach its sympy
    (refused: no timeout, no child killed)."""
    verifier_child._SYMPY_CHILD.prepare()
    timeouts = answer_equiv.STATS["timeouts"]
    for answer in HOSTILE:
        start = time.monotonic()
        assert is_equiv(answer, gold, timeout=1.0) is False
        assert time.monotonic() - start < 0.5, answer
    assert answer_equiv.STATS["timeouts"] == timeouts
