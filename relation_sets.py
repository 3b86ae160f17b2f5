"""Relations in one variable as sets: `x > 3`, `-3 \\le t \\le 8`, `2 \\le |w| \\le 5/2`, `x \\neq 3`,
`x < 1 \\text{ or } x > 2`, `\\{x \\mid x > 3\\}` and intervals `(a, b]` / unions of them, each read as a union
of intervals so that answer_equiv.py can compare them as sets.

An interval is (lo, lo_closed, hi, hi_closed) with lo / hi parsed constants (latex_expr trees) or None
(infinite, always open); a set is a tuple of intervals. A relation solves exactly when its middle is linear,
m = a*v + b, or |a*v + b| (a, b rational, read by latex_expr._linear at generic points):
    c1 op1 m op2 c2   ->  m in (c1, c2) with each end closed when its op is \\leq
    m op c / c op m   ->  m in (-inf, c) / (c, inf);  m \\neq c  ->  (-inf, c) u (c, inf)
    l op r            ->  l - r op 0 (both sides non-constant)
    {v : a*v + b in I} = (I - b) / a, ends swapped when a < 0
    {L : |L| in I}     = (-hi, hi) when every L has |L| >= lo (lo < 0, or lo = 0 closed), else (-hi, -lo) u (lo, hi)
(answer_equiv's structure has already flipped > and \\geq to < and \\leq; a chain with \\neq or with mixed
directions has no set here.) Ends are exact trees compared with latex_expr._values_equal. _Undecided is raised
when an end's sign cannot be decided and for a |.| range that is empty, {0} or unbounded on both sides. Sets are
equal when their intervals match one to one (never merged: (-\\infty, 1] \\cup (1, \\infty) is not
(-\\infty, \\infty)) and the variable names agree where both sides name one.
"""
from fractions import Fraction

from latex_expr import _Undecided, _equation, _evaluate, _linear, _parse, _real, _values_equal

_ZERO = (("n", Fraction(0)), False, frozenset())


def _sign(end) -> int:
    value = _real(_evaluate(end[0], {}))
    return (value > 0) - (value < 0)


def _solve(interval, a: Fraction, b: Fraction):
    """{v : a*v + b in interval}."""
    lo, lo_closed, hi, hi_closed = interval
    at = lambda end: None if end is None else (("/", ("+", end[0], ("n", -b)), ("n", a)), end[1], frozenset())
    return (at(lo), lo_closed, at(hi), hi_closed) if a > 0 else (at(hi), hi_closed, at(lo), lo_closed)


def _abs_preimage(interval) -> list:
    """{L : |L| in interval} as one or two intervals (raises _Undecided when an end has no sign)."""
    lo, lo_closed, hi, hi_closed = interval
    neg = lambda end: None if end is None else (("neg", end[0]), end[1], frozenset())
    if hi is not None and _sign(hi) <= 0 or hi is None and lo is None:
        raise _Undecided  # empty or everything: not an answer form worth a rule
    if lo is None or _sign(lo) < 0 or _sign(lo) == 0 and lo_closed:
        return [(neg(hi), hi_closed, hi, hi_closed)]
    return [(neg(hi), hi_closed, neg(lo), lo_closed), (lo, lo_closed, hi, hi_closed)]


def _relation_set(rel: tuple):
    """(name, set) of a one-variable relation `m op c`, `c op m`, `c1 op m op c2`, `m \\neq c`, `l op r`, else None."""
    ops, sides = rel[1], rel[2]
    parsed = [_parse(x) for x in sides]
    if None in parsed or len(sides) not in (2, 3) or len(sides) == 3 and "\\neq" in ops:
        return None
    if any(op not in ("<", "\\leq", "\\neq") for op in ops) or len(sides) == 3 and (parsed[0][2] or parsed[2][2]):
        return None
    closed = [op == "\\leq" for op in ops]
    if len(sides) == 3:
        middle, ranges = parsed[1], [(parsed[0], closed[0], parsed[2], closed[1])]
    elif parsed[0][2] and parsed[1][2]:
        middle, bound, at_right = _equation(*sides), _ZERO, True  # l op r: l - r op 0
    else:
        at_right = not parsed[1][2]
        middle, bound = (parsed[0], parsed[1]) if at_right else (parsed[1], parsed[0])
    if len(sides) == 2:
        below, above = (None, False, bound, closed[0]), (bound, closed[0], None, False)
        ranges = [below, above] if ops[0] == "\\neq" else [below if at_right else above]
    if middle[0][0] == "abs":
        ranges, middle = [piece for r in ranges for piece in _abs_preimage(r)], (middle[0][1], middle[1], middle[2])
    if (line := _linear(middle)) is None:
        return None
    name, a, b = line
    return name, tuple(_solve(r, a, b) for r in ranges)


def _seq_interval(s: tuple):
    """An interval `(a, b]` with constant ends, else None."""
    if s[0] != "seq" or len(s[2]) != 2 or any(x[0] != "atom" for x in s[2]) or s[1] not in ("()", "(]", "[)", "[]"):
        return None
    ends = []
    for x, closed in ((s[2][0][1], s[1][0] == "["), (s[2][1][1], s[1][1] == "]")):
        if x.lstrip("+-") == "\\infty":
            ends += [None, False]
        elif (parsed := _parse(x)) is None or parsed[2]:
            return None
        else:
            ends += [parsed, closed]
    return tuple(ends)


def _solution_set(s: tuple):
    """(name or None, set) of a relation, a set-builder, an interval or a union of intervals; else None."""
    if s[0] == "rel":
        return _relation_set(s)
    if s[0] == "setb":
        found = _relation_set(s[2])
        return found if found and found[0] == s[1] else None
    if _relations(s):  # `x < 1 \\text{ or } x > 2`: the union
        found = [_relation_set(x) for x in s[1]]
        if None in found or len({name for name, _ in found}) > 1:
            return None
        return found[0][0], tuple(interval for _, intervals in found for interval in intervals)
    intervals = [_seq_interval(x) for x in (s[1] if s[0] == "union" else [s])]
    return None if None in intervals else (None, tuple(intervals))


def _relations(s: tuple) -> bool:
    """A relation, a set-builder or a list of relations (read as their union)."""
    return s[0] in ("rel", "setb") or s[0] == "list" and all(x[0] == "rel" for x in s[1])


def _intervals_equal(p, g) -> bool:
    if (p[0] is None) != (g[0] is None) or (p[2] is None) != (g[2] is None) or (p[1], p[3]) != (g[1], g[3]):
        return False
    return all(_values_equal(a, b, False, False) for a, b in ((p[0], g[0]), (p[2], g[2])) if a)



def _sets_equal(p: tuple, g: tuple) -> bool | None:
    """Equal as sets (intervals matched one to one); None when either has no exact set or they name different
    variables. Raises _Undecided when an end cannot be decided."""
    ps, gs = _solution_set(p), _solution_set(g)
    if not (ps and gs and (ps[0] is None or gs[0] is None or ps[0] == gs[0])):
        return None
    free = list(ps[1])
    for interval in gs[1]:
        match = next((k for k, x in enumerate(free) if _intervals_equal(x, interval)), None)
        if match is None:
            return False
        free.pop(match)
    return not free
