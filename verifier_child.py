"""The verifier's slow stages, in a killable child process: sympy and math-verify for the pairs that
answer_equiv.py's in-process fast path leaves undecided.

What it computes (one request at a time, in `python reward.py --serve sympy`):
- mode "value" / "eq" / "ineq" (stage 2, sympy): latex_expr._sympy_equal on two atoms the fast path parsed but
  could not evaluate (float overflow, division by zero, infinities): simplify(pred - gold) == 0 (decimals within
  latex_expr's tolerances), or for equations and inequalities (lhs, rhs pairs) a constant nonzero (positive)
  ratio of lhs - rhs. The trees are built from the same parse as the fast path's: sympy never parses text.
- mode "mv" (stage 3, math-verify 0.9.0 with latex2sympy2_extended): verify(parse(gold), parse(pred)), gold
  first (it is asymmetric), on the answers as written (`$` removed, the gold unboxed). Verdicts are cached by
  (pred, gold) in the parent (the cache is emptied once it holds more than 2^14).
Why a child process: sympy and math-verify are never imported by the trainer, and a computation stuck in C
(a bignum power) cannot be interrupted inside the process that runs it, only killed with it. The parent side
(`_Child`, also used by reward.py for its score workers) speaks one JSON line per request: after a `ready`
line, [pred, gold, mode, seconds] in, a verdict (true/false), "timeout" or "unavailable" out.
Time limits: each comparison has one deadline (is_equiv's timeout, 1 s by default) shared by all of its
requests; waiting for the child to start (up to STARTUP_TIMEOUT, sympy and math-verify imported and warmed
up first) is not counted. In the child, SIGALRM interrupts Python-level work 50 ms before the request's
seconds are up (reply "timeout", the child lives on); a C-level hang is cut by the parent at the deadline:
the child is killed and a replacement started at once. Both count as a timeout: not equal. Before anything
is sent, numbers over MAX_SYMPY_BITS (9^{9^{9^9}}, 1000000!; both stages) and, for math-verify, brackets
nested deeper than MAX_DEPTH are refused (not equal): sympy could hang in C on them, math-verify's parser
recurses. STATS counts calls, timeouts, refusals
and children that could not start (not equal; the next call starts one again).
Without math-verify (the GPU box: torch, transformers, numpy, sympy only): found missing in the parent
(find_spec) or failing to import in the child ("unavailable"), stage 3 is skipped with one warning on
stderr and the pairs it would decide are not equal; stage 2 needs only sympy.
"""
import atexit
import importlib.util
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

from latex_expr import _equation, _log2_bound, _parse, _sympy_equal

MAX_SYMPY_BITS = 1e6     # numbers bigger than this are never built by sympy: judged unequal
MAX_DEPTH = 50           # brackets nested deeper than this are never handed to math-verify (its parser recurses)
STARTUP_TIMEOUT = 60.0   # seconds a child process may take to start (not counted in a comparison)
STATS = {"sympy_calls": 0, "math_verify_calls": 0, "timeouts": 0, "refused": 0, "child_failures": 0}  # counters
_REWARD_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward.py")  # children run its --serve
_OPEN, _CLOSE = "([{\x01", ")]}\x02"  # brackets of answer_equiv's cleaned text (\x01 \x02: \{ \})


# ----------------------------------------------------------------------------- the parent's side

class _Child:
    """A child `python reward.py --serve KIND` answering one JSON line per request line."""

    def __init__(self, kind: str):
        self.kind, self.proc, self.buffer, self.ready = kind, None, b"", False

    def start(self):
        self.proc = subprocess.Popen([sys.executable, _REWARD_PY, "--serve", self.kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.buffer, self.ready = b"", False

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _readline(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                return None  # the child died
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def prepare(self) -> bool:
        """Start the child if needed and wait until it is ready (not counted in any timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        if not self.ready:
            self.ready = self._readline(time.monotonic() + STARTUP_TIMEOUT) == b"ready"
        return self.ready

    def send(self, request) -> bool:
        """Start the child if needed, wait until it is ready, send."""
        try:
            if self.prepare():
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                return True
        except OSError:
            pass
        self.kill()
        return False

    def receive(self, timeout: float):
        """The reply, or None when none came within `timeout` seconds (the child is then killed)."""
        line = self._readline(time.monotonic() + timeout)
        if line is None:
            self.kill()
            return None
        return json.loads(line)


_SYMPY_CHILD, _LOCK = _Child("sympy"), threading.Lock()
atexit.register(_SYMPY_CHILD.kill)
_MATH_VERIFY = {"available": None, "cache": {}}  # whether math_verify can be imported; verdicts by (pred, gold)


def _ask_child(request: list, state: dict):
    """One request to the sympy child within the comparison's deadline (waiting for it to start is not counted).
    None when it could not start or ran out of time (a timeout counts; a child that did not answer is replaced)."""
    with _LOCK:
        waited = time.monotonic()
        ready = _SYMPY_CHILD.prepare()
        state["deadline"] += time.monotonic() - waited
        budget = state["deadline"] - time.monotonic()
        if not ready or not _SYMPY_CHILD.send(request + [budget]):
            STATS["child_failures"] += 1  # it could not start: not equal, and the next call tries again
            return None
        reply = _SYMPY_CHILD.receive(budget)
        if reply is None or reply == "timeout":
            state["timed_out"] = True
            STATS["timeouts"] += 1
            if reply is None:
                _SYMPY_CHILD.start()  # warm up the replacement while the caller goes on
            return None
    return reply


def _remote_sympy(p, g, mode: str, state: dict) -> bool:
    """simplify() in the child for atoms the evaluator cannot decide; numbers too big for sympy are unequal."""
    parsed = [_parse(x) if mode == "value" else _equation(*x) for x in (p, g)]
    if max(_log2_bound(x[0]) for x in parsed) > MAX_SYMPY_BITS:
        STATS["refused"] += 1
        return False
    STATS["sympy_calls"] += 1
    return bool(_ask_child([p, g, mode], state))


def _math_verify_missing(reason: str) -> bool:
    if _MATH_VERIFY["available"] is not False:
        print(f"answer_equiv: math-verify {reason}: answers the built-in rules cannot decide are judged not equal "
              "(pip install math-verify==0.9.0)", file=sys.stderr)
    _MATH_VERIFY["available"] = False
    return False


_PIECES = re.compile(r"\\approx|\\sim|\\leq|\\geq|\\neq|\\in|\\cup|\\pm|\\mid|[<>=,:|\x01\x02]")


def _hostile(text: str) -> bool:
    """Would math-verify be handed a number beyond MAX_SYMPY_BITS (in any piece between relations and
    separators) or brackets nested deeper than MAX_DEPTH? (Its sympy could hang in C: refused, not equal.)"""
    depth = deepest = 0
    for c in text:
        depth += (c in _OPEN) - (c in _CLOSE)
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        return True
    parsed = (_parse(piece.strip()) for piece in _PIECES.split(text) if piece.strip())
    return any(x is not None and _log2_bound(x[0]) > MAX_SYMPY_BITS for x in parsed)


def _remote_math_verify(pred: str, gold: str, cleaned: tuple, state: dict) -> bool:
    """math-verify's verdict on the answers as written (gold first: it is asymmetric), computed in the child;
    cached by (pred, gold). `cleaned`: both answers normalised (what the size and depth guard reads)."""
    key = (pred, gold)
    if key in _MATH_VERIFY["cache"]:
        return _MATH_VERIFY["cache"][key]
    if any(_hostile(x) for x in cleaned):
        STATS["refused"] += 1
        return False
    if _MATH_VERIFY["available"] is None:
        try:
            found = importlib.util.find_spec("math_verify") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return _math_verify_missing("is not installed")
        _MATH_VERIFY["available"] = True
    if not _MATH_VERIFY["available"]:
        return False
    STATS["math_verify_calls"] += 1
    reply = _ask_child(list(key) + ["mv"], state)
    if reply == "unavailable":
        return _math_verify_missing("cannot be imported")
    if reply is None:
        return False
    if len(_MATH_VERIFY["cache"]) > 1 << 14:
        _MATH_VERIFY["cache"].clear()
    _MATH_VERIFY["cache"][key] = bool(reply)
    return bool(reply)


# ----------------------------------------------------------------------------- the child's side

class _Alarm(BaseException):
    """Raised in the child when a request's time is up (a BaseException, so no library swallows it)."""


def _on_alarm(signum, frame):
    raise _Alarm


def prepare_child():
    """In the child, before it announces readiness: import sympy and math-verify, and warm math-verify up."""
    import sympy  # noqa: F401
    try:
        import math_verify
    except ImportError:
        return
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its "timeout disabled" notice: ours is SIGALRM
    _math_verify_equal("x \\leq 3", "(-\\infty, 3]")


def _math_verify_equal(pred: str, gold: str):
    try:
        import math_verify
    except ImportError:
        return "unavailable"
    gold_parsed = math_verify.parse("\\boxed{%s}" % gold, parsing_timeout=None)
    pred_parsed = math_verify.parse("\\boxed{%s}" % pred, parsing_timeout=None)
    return bool(gold_parsed and pred_parsed and math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def serve_request(request: list):
    """The child's answer to [pred, gold, mode, seconds]: a verdict, "timeout" (SIGALRM: Python-level work
    interrupted, the child lives on) or "unavailable" (no math-verify). C-level hangs are the parent's to kill."""
    p, g, mode, budget = request
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(budget - 0.05, 0.01))
    try:
        return _math_verify_equal(p, g) if mode == "mv" else _sympy_equal(p, g, mode)
    except _Alarm:
        return "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

