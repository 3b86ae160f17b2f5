"""Math answer reward: the last \\boxed{} of a response, judged against the gold answer, as an RL reward.

    score = [answer is correct] - format_penalty * [no answer extracted] + overlong(len)
    overlong(len) = 0                                        len <= max_len - buffer          (DAPO soft
                  = -factor * (len - (max_len - buffer)) / buffer   in between                 overlong
                  = -factor                                  len >= max_len                    punishment)

Extraction (here): the content of the last \\boxed{...} / \\fbox{...} (nested braces; `\\boxed 5` without braces).
An empty or unclosed last box is no answer, never an earlier box or the last number. Optional fallbacks
(`fallbacks=True`), used only when there is no box: the last "the answer is X", "Answer: X" or "#### X".

Equivalence, `is_equiv(pred, gold)` (answer_equiv.py): normalisation, answer structure (tuples, intervals,
sets and lists with any separator, matrices, equations and labelled values, relations solved to sets of one
variable), then each atom parsed and evaluated in process by latex_expr.py (exact rationals, else complex
floats, variables at 3 generic points). What that leaves undecided goes to a child process `python reward.py
--serve sympy` under a hard timeout: sympy for atoms the evaluator cannot decide, then math-verify (when
installed; without it, one warning and such pairs are unequal) for forms the fast path does not read. Rules,
tolerances, measurements and deliberate deviations are in those two files' docstrings. This module re-exports
is_equiv, validate_gold, STATS.

Batch scoring (`score_batch(..., workers=N)`) sends chunks to N child processes `python reward.py --serve
score`, started once and reused: fresh interpreters (safe with torch/CUDA loaded in the caller, and
unlike multiprocessing's spawn they do not re-import the caller's __main__); a worker that dies or
stalls is killed and its chunk scored in process. Children die with their parent (Linux PR_SET_PDEATHSIG).

    python reward.py "... so the answer is \\boxed{\\frac12}." "0.5"     # extracted answer and verdict
    python reward.py "\\boxed{(-\\infty, 2]}" "-x \\geq -2"                # answers may start with '-'
    python reward.py --bench --workers 2                                  # checks/s, worst-case latency
"""
import argparse
import atexit
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass

from answer_equiv import (STARTUP_TIMEOUT, STATS, _clean, _equiv, _structure, is_equiv,  # noqa: F401  (re-exported)
                          prepare_child, serve_request, validate_gold)
from cli import add_dataclass_args, dataclass_from_args
from latex_expr import _INT, _parse
from verifier_child import _SYMPY_CHILD, _Child


@dataclass
class RewardConfig:
    fallbacks: bool = False        # also accept "the answer is X" / "Answer: X" / "#### X" when no \boxed{}
    format_penalty: float = 0.0    # score given to a response with no extractable answer is -format_penalty
    overlong_buffer: int = 0       # DAPO soft overlong punishment: last `buffer` tokens before max_len
    overlong_factor: float = 1.0   # ... linear penalty down to -factor at max_len
    timeout: float = 1.0           # hard wall-clock seconds per comparison

    def __post_init__(self):
        for name in ("format_penalty", "overlong_buffer", "overlong_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"RewardConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise ValueError(f"RewardConfig.timeout must be > 0 seconds, got {self.timeout}")


@dataclass
class RewardResult:
    score: float            # the reward
    answer: str | None      # extracted answer, None when the response has none
    correct: bool           # answer equivalent to the gold
    format_ok: bool         # an answer was extracted
    timed_out: bool         # the equivalence check hit its time limit (counted as not correct)


# ----------------------------------------------------------------------------- extraction

_FALLBACK = re.compile(r"(?:the (?:final )?answer is|^\W*(?:final )?answer\W*:|####)[ \t:]*(.+)", re.I | re.M)


def extract_answer(text: str, fallbacks: bool = False) -> str | None:
    """Content of the last \\boxed{}/\\fbox{} (None if empty or unclosed); with fallbacks, the last
    "the answer is X" / "Answer: X" / "#### X" when there is no box."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        matches = list(_FALLBACK.finditer(text)) if fallbacks else []
        if not matches:
            return None
        answer = re.split(r"\.(?:\s|$)", matches[-1].group(1))[0]  # up to the end of the sentence
        return answer.strip().strip("$*").strip() or None
    i = start + (6 if text.startswith("\\boxed", start) else 5)  # len("\\boxed"), len("\\fbox")
    if text[i:i + 1] == " ":  # `\boxed 5`: one space-delimited token
        token = re.match(r" +([^\s$]+)", text[i:])
        return (token.group(1).rstrip(".,") or None) if token else None
    if text[i:i + 1] != "{":
        return None
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2  # \{ and \} are literal braces, not grouping
            continue
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return text[i + 1:j].strip() or None
        j += 1
    return None  # unclosed box (e.g. a truncated response)


# ----------------------------------------------------------------------------- reward

def overlong_penalty(length: int | None, max_len: int | None, cfg: RewardConfig) -> float:
    """DAPO soft overlong punishment (0 when length, max_len or cfg.overlong_buffer is not given)."""
    if not (length and max_len and cfg.overlong_buffer):
        return 0.0
    if cfg.overlong_buffer >= max_len:
        raise ValueError(f"RewardConfig.overlong_buffer ({cfg.overlong_buffer}) must be smaller than max_len ({max_len})")
    start = max_len - cfg.overlong_buffer
    return -cfg.overlong_factor * min(max(length - start, 0), cfg.overlong_buffer) / cfg.overlong_buffer


def math_reward(response: str, gold: str, cfg: RewardConfig = RewardConfig(), response_len: int | None = None,
                max_len: int | None = None, multiple_answers: bool = False) -> RewardResult:
    answer = extract_answer(response, cfg.fallbacks)
    correct, timed_out = _equiv(answer, gold, cfg.timeout, multiple_answers) if answer is not None else (False, False)
    score = float(correct) - (cfg.format_penalty if answer is None else 0.0) + overlong_penalty(response_len, max_len, cfg)
    return RewardResult(score, answer, correct, answer is not None, timed_out)


_SCORE_CHILDREN, _POOL_LOCK = [], threading.Lock()
atexit.register(lambda: [c.kill() for c in _SCORE_CHILDREN])


def score_batch(responses: list[str], golds: list[str], cfg: RewardConfig = RewardConfig(), workers: int = 0,
                response_lens=None, max_len=None, multiple_answers=None) -> list[RewardResult]:
    """math_reward over a batch, in `workers` child processes (0: in this process)."""
    n = len(responses)
    lens, multi = response_lens or [None] * n, multiple_answers or [False] * n
    if not len(golds) == len(lens) == len(multi) == n:
        raise ValueError(f"score_batch: {n} responses but {len(golds)} golds, {len(lens)} response_lens, "
                         f"{len(multi)} multiple_answers")
    items = list(zip(responses, golds, lens, multi))
    if workers <= 0 or n < 2:
        return [math_reward(r, g, cfg, length, max_len, m) for r, g, length, m in items]
    size = -(-n // workers)
    chunks = [items[i:i + size] for i in range(0, n, size)]
    results = []
    with _POOL_LOCK:
        while len(_SCORE_CHILDREN) < workers:
            _SCORE_CHILDREN.append(_Child("score"))
        sent = [child.send({"cfg": asdict(cfg), "max_len": max_len, "items": chunk})
                for child, chunk in zip(_SCORE_CHILDREN, chunks)]
        for child, chunk, ok in zip(_SCORE_CHILDREN, chunks, sent):
            reply = child.receive(len(chunk) * (cfg.timeout + 0.5) + STARTUP_TIMEOUT) if ok else None
            if isinstance(reply, list) and len(reply) == len(chunk):
                remote = [RewardResult(**r) for r in reply]
                STATS["timeouts"] += sum(r.timed_out for r in remote)  # counted in the worker, reported here
                results += remote
            else:  # the worker died, stalled or failed: score its chunk here
                print(f"reward.py: a score worker failed; scoring {len(chunk)} responses in process", file=sys.stderr)
                child.kill()
                results += [math_reward(r, g, cfg, length, max_len, m) for r, g, length, m in chunk]
    return results


def _serve(kind: str):
    """Child process loop: one JSON request per stdin line, one JSON reply per stdout line."""
    try:  # Linux: die with the parent, even inside a C-level computation
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    if kind == "sympy":
        prepare_child()  # sympy and math-verify imported before announcing readiness, so no check pays for it
    sys.stdout.write("ready\n"); sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if kind == "sympy":
                reply = serve_request(request)
            else:
                cfg = RewardConfig(**request["cfg"])
                reply = [asdict(math_reward(r, g, cfg, length, request["max_len"], m)) for r, g, length, m in request["items"]]
        except Exception:
            reply = False
        sys.stdout.write(json.dumps(reply) + "\n"); sys.stdout.flush()


# ----------------------------------------------------------------------------- command line

def _bench_mix(root: str) -> tuple[list[str], list[str], list[bool]]:
    """Responses for the golds of data/math500 and data/gsm8k_test: the reference solution's text
    (boxes removed) then a boxed answer that is the gold, a reformatted gold, or a wrong number; some unboxed."""
    responses, golds, expected = [], [], []
    for name in ("math500", "gsm8k_test"):
        for k, line in enumerate(open(os.path.join(root, "data", f"{name}.jsonl"))):
            row = json.loads(line)
            gold, reasoning = row["answer"], row.get("solution", "")[:1500].replace("\\boxed", "")
            wrong = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), gold, count=1) if re.search(r"\d", gold) else "0"
            spaced = gold.replace("\\frac", "\\dfrac").replace(",", ", ") if _INT.fullmatch(gold) is None else f"{int(gold):,}"
            for answer, ok in [(gold, True), (spaced, True), (f"${gold}$", True), (wrong, False), (f"-{wrong}", False)]:
                responses.append(f"{reasoning}\nThe answer is \\boxed{{{answer}}}.")
                golds.append(gold)
                expected.append(ok)
            responses.append(f"{reasoning}\nThe answer is {gold}.")
            golds.append(gold)
            expected.append(False)
    return responses, golds, expected


def bench(cfg: RewardConfig, workers: int):
    responses, golds, expected = _bench_mix(os.path.dirname(os.path.abspath(__file__)))
    start = time.perf_counter()
    _SYMPY_CHILD.prepare()  # started once per process and kept: not part of any check's time
    print(f"sympy/math-verify child started in {time.perf_counter() - start:.2f} s")
    latencies, results = [], []
    start = time.perf_counter()
    for response, gold in zip(responses, golds):
        t = time.perf_counter()
        results.append(math_reward(response, gold, cfg))
        latencies.append(time.perf_counter() - t)
    single = len(responses) / (time.perf_counter() - start)
    agree = sum(r.correct == e for r, e in zip(results, expected)) / len(expected)
    print(f"realistic mix: {len(responses)} checks (math500 + gsm8k_test golds x 6 responses), "
          f"verdicts as constructed: {agree:.1%}")
    print(f"single process: {single:,.0f} checks/s   latency p50 {sorted(latencies)[len(latencies) // 2] * 1e3:.3f} ms"
          f"  p99 {sorted(latencies)[int(len(latencies) * 0.99)] * 1e3:.3f} ms  worst {max(latencies) * 1e3:.1f} ms")
    worst = max(range(len(latencies)), key=latencies.__getitem__)
    print(f"  worst case: answer {results[worst].answer!r} vs gold {golds[worst]!r}   stats {STATS}")
    _parse.cache_clear(), _clean.cache_clear(), _structure.cache_clear()
    if workers > 0:
        score_batch(responses[:workers * 2], golds[:workers * 2], cfg, workers=workers)  # start the workers
        start = time.perf_counter()
        results = score_batch(responses, golds, cfg, workers=workers)
        rate = len(responses) / (time.perf_counter() - start)
        print(f"{workers} workers: {rate:,.0f} checks/s ({rate / workers:,.0f} per worker; {os.cpu_count()} cores here)")
    adversarial = ["9^{9^{9^{9}}}", "1000000!", "{" * 25000 + "}" * 25000, "\\frac{\\sqrt{", "2^{2^{2^{2^{2^{2}}}}}"]
    for answer in adversarial:
        t = time.perf_counter()
        result = math_reward(f"\\boxed{{{answer}}}", "3", cfg)
        print(f"adversarial {answer[:24]!r:28} -> correct={result.correct} timed_out={result.timed_out} "
              f"in {time.perf_counter() - t:.3f} s")


_NEGATIVE_NUMBER = re.compile(r"-\d+|-\d*\.\d+")  # argparse already reads these as positionals


def _protect_answers(argv: list[str]) -> list[str]:
    """Mark arguments that start with '-' but are answers (`-\\frac{1}{2}`, `-x`), not flags, so that argparse
    takes them as positionals; _unprotect removes the mark."""
    return ["\0" + a if a[:1] == "-" and a[:2] != "--" and a != "-h" and not _NEGATIVE_NUMBER.fullmatch(a) else a
            for a in argv]


def _unprotect(value: str | None) -> str | None:
    return value[1:] if value and value[0] == "\0" else value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("response", nargs="?", help="model response (its last \\boxed{} is the answer)")
    parser.add_argument("gold", nargs="?", help="gold answer")
    parser.add_argument("--multiple-answers", action="store_true", help="gold is a list of answers in any order")
    parser.add_argument("--bench", action="store_true", help="measure checks/s and latency on a realistic mix")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the --bench batch run")
    parser.add_argument("--serve", choices=("sympy", "score"), help=argparse.SUPPRESS)
    add_dataclass_args(parser, RewardConfig)
    args = parser.parse_args(_protect_answers(sys.argv[1:] if argv is None else list(argv)))
    args.response, args.gold = _unprotect(args.response), _unprotect(args.gold)
    if args.serve:
        return _serve(args.serve)
    try:
        cfg = dataclass_from_args(RewardConfig, args)
    except ValueError as e:
        parser.error(str(e))
    if args.bench:
        return bench(cfg, args.workers)
    if args.response is None or args.gold is None:
        parser.error("give a response and a gold answer (or --bench)")
    if (reason := validate_gold(args.gold)) is not None:
        print(f"warning: gold {args.gold!r} {reason}")
    result = math_reward(args.response, args.gold, cfg, multiple_answers=args.multiple_answers)
    print(f"answer: {result.answer}\ncorrect: {result.correct}\nscore: {result.score}\n"
          f"format_ok: {result.format_ok}\ntimed_out: {result.timed_out}")


if __name__ == "__main__":
    main()
