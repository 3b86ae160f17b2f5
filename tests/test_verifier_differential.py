"""is_equiv against math-verify 0.9.0 on pairs generated per answer class (random numbers, orders and separators;
equivalent rewritings and perturbed ones), and against the construction's own label where math-verify is known
to differ (listed per class with the reason)."""
import random

import pytest

from answer_equiv import is_equiv

_GE = ["\\geq", "\\ge", ">=", "\\geqslant"]
_LE = ["\\leq", "\\le", "<=", "\\leqslant"]
_FLIP = {">": "<", "<": ">"}


def _relation(rng):
    """v op c against the same relation spelled, swapped or negated differently, or a perturbed one."""
    v, c, strict = rng.choice("xyt"), rng.randint(-20, 20), rng.random() < 0.5
    up = rng.random() < 0.5  # v > c (or >=) versus v < c
    spell = lambda greater: (">" if greater else "<") if strict else rng.choice(_GE if greater else _LE)
    gold = f"{v} {spell(up)} {c}"
    kind = rng.randrange(5)
    if kind == 0:
        pred = f"{v} {spell(up)} {c}"
    elif kind == 1:
        pred = f"{c} {spell(not up)} {v}"
    elif kind == 2:
        pred = f"-{v} {spell(not up)} {-c}"
    elif kind == 3:
        pred = f"{v} {spell(up)} {c + rng.choice([-1, 1])}"
    else:
        pred = f"{v} {spell(not up)} {c}"
    return gold, pred, kind < 3


def _interval(rng):
    """A chain a < v <= b (or one side) as gold, its interval (the right or a wrong one) as pred."""
    a = rng.randint(-9, 5)
    b = a + rng.randint(1, 9)
    lo, hi = rng.choice([("<", "("), ("\\leq", "[")]), rng.choice([("<", ")"), ("\\leq", "]")])
    if rng.random() < 0.3:
        gold, interval = "x %s %d" % (">" if lo[0] == "<" else "\\geq", a), f"{lo[1]}{a}, \\infty)"
    else:
        gold, interval = f"{a} {lo[0]} x {hi[0]} {b}", f"{lo[1]}{a}, {b}{hi[1]}"
    if rng.random() < 0.5:
        return gold, rng.choice(["", "x \\in "]) + interval, True
    wrong = interval.replace(str(a), str(a - 1), 1) if rng.random() < 0.5 else (
        ("[" if interval[0] == "(" else "(") + interval[1:])
    return gold, wrong, False


def _labelled(rng):
    """A labelled gold (`(a,b)=(p,q)`, `|AB| = n`, `S_1:S_2 = p:q`) against the bare value or a wrong one."""
    p, q = rng.randint(1, 30), rng.randint(31, 60)
    gold, value, wrong = rng.choice([(f"(a,b)=({p},{q})", f"({p},{q})", f"({q},{p})"),
                                     (f"|AB| = {p}", f"{p}", f"{p + 1}"),
                                     (f"S_1:S_2 = {p}:{q}", f"{p}:{q}", f"{q}:{p}"),
                                     (f"m+n = {q}", f"{q}", f"{p}")])
    right = rng.random() < 0.6
    pred = value if right else wrong
    return (gold, pred, right) if rng.random() < 0.7 else (pred, gold, right)  # both directions


def _unordered(rng):
    """k tuples (or numbers) in one order and separator against another order and separator, maybe one changed."""
    size = rng.choice([1, 2, 3])
    items = {tuple(rng.randint(-9, 9) for _ in range(size)) for _ in range(rng.randint(2, 5))}
    show = lambda t: str(t[0]) if size == 1 else "(" + ",".join(map(str, t)) + ")"
    gold_items, pred_items = [show(t) for t in items], [show(t) for t in items]
    rng.shuffle(pred_items)
    right = rng.random() < 0.6
    if not right:
        pred_items[0] = pred_items[0].replace(pred_items[0].strip("()").split(",")[0], "10", 1)
    sep = rng.choice([", ", "; ", " \\text{ and } ", ",\\ "] if size == 1 else [", ", "; ", " \\text{ and } "])
    pred = sep.join(pred_items)
    if rng.random() < 0.3:
        pred = "\\{" + pred + "\\}"
    return ", ".join(gold_items), pred, right


def _presentation(rng):
    """A boxed / $-wrapped gold, a \\textnormal unit, array vs bmatrix, a rational exponent."""
    p, q = rng.randint(1, 9), rng.randint(2, 9)
    cells = [rng.randint(-5, 5) for _ in range(4)]
    array = "\\left[\\begin{array}{cc}%d&%d\\\\%d&%d\\end{array}\\right]" % tuple(cells)
    right = rng.random() < 0.6
    swapped = cells[::-1] if cells != cells[::-1] else [c + 1 for c in cells]
    forms = [(f"\\boxed{{\\frac{{{p}}}{{{q}}}}}", f"{p}/{q}", f"{q}/{p}" if p != q else f"{p + 1}/{q}"),
             (f"${p * q}$", f"{p * q}", f"{p * q + 1}"),
             (f"{p} \\textnormal{{ km}}", f"{p}", f"{p + 1}"),
             (array, "\\begin{bmatrix}%d&%d\\\\%d&%d\\end{bmatrix}" % tuple(cells),
              "\\begin{bmatrix}%d&%d\\\\%d&%d\\end{bmatrix}" % tuple(swapped)),
             (f"(x+{p})^{{{p}/{q}}}" if p % q else f"(x+{p})^{{{p}/{q + 1}}}",
              f"\\sqrt[{q}]{{x+{p}}}^{{{p}}}" if p % q else f"\\sqrt[{q + 1}]{{x+{p}}}^{{{p}}}",
              f"(x+{p})^{{{q}/{p}}}" if p != q else f"(x+{p})^{{2}}")]
    gold, value, wrong = rng.choice(forms)
    return gold, value if right else wrong, right


def _guard(rng):
    """k\\sqrt{m} against decimals of 2-7 places (equal only at 6+ places); n against `a,bbb` and `a, bbb`."""
    if rng.random() < 0.5:
        k, m = rng.randint(1, 9), rng.choice([2, 3, 5, 6, 7, 10, 11])
        places = rng.randint(2, 7)
        value = k * m ** 0.5
        return f"{k}\\sqrt{{{m}}}", f"{value:.{places}f}", places >= 6
    n = rng.randint(1000, 999999)
    head, tail = divmod(n, 1000)
    spaced = rng.random() < 0.5
    return str(n), f"{head},{' ' if spaced else ''}{tail:03d}", not spaced


GENERATORS = {"relation": _relation, "interval": _interval, "labelled": _labelled, "unordered": _unordered,
              "presentation": _presentation, "guard": _guard}
# Where math-verify 0.9.0 departs from the construction's label (we side with the label), measured on these seeds:
MATH_VERIFY_DIFFERS = {
    "relation": "with the variable t it rejects swapped sides (`t < 8` vs `8 > t`; x and y are fine): 5 of 40",
}


def _pairs(name: str, count: int = 40, seed: int = 16):
    rng = random.Random(f"{name}-{seed}")
    return [GENERATORS[name](rng) for _ in range(count)]


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generated_pairs_match_the_construction(name):
    """Our verdict equals the label the generator built the pair with (equivalent rewriting or perturbation)."""
    wrong = [(g, p, label) for g, p, label in _pairs(name) if is_equiv(p, g) is not label]
    assert wrong == []


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_differential_against_math_verify(name, capsys):
    """Agreement with math-verify on the generated pairs of each class (printed): complete, except where
    MATH_VERIFY_DIFFERS says why, and then the construction's label agrees with us, not with math-verify."""
    math_verify = pytest.importorskip("math_verify")
    pairs = _pairs(name)
    theirs = [math_verify.verify(math_verify.parse("\\boxed{%s}" % g), math_verify.parse("\\boxed{%s}" % p))
              for g, p, _ in pairs]
    ours = [is_equiv(p, g) for g, p, _ in pairs]
    agree = sum(a == b for a, b in zip(ours, theirs)) / len(pairs)
    with capsys.disabled():
        print(f"\n{name}: agreement with math-verify {agree:.1%} of {len(pairs)}; math-verify vs the construction "
              f"{sum(t == label for t, (_, _, label) in zip(theirs, pairs)) / len(pairs):.1%}")
    differ = [(g, p) for (g, p, label), a, b in zip(pairs, ours, theirs) if a != b]
    assert all(a == label for (_, _, label), a, b in zip(pairs, ours, theirs) if a != b)  # we side with the label
    assert agree >= (0.85 if name in MATH_VERIFY_DIFFERS else 1.0), differ
