"""Training data and its order: loading, prompts, difficulty, HGRPO level schedules, dynamic sampling.

Data: `load_problems("math500,gsm8k_train,mine:/x/y.parquet,arith")` reads .jsonl, .json (a list) and
.parquet files, data/<name>.jsonl benchmarks and the built-in arithmetic levels (fields: *_FIELDS, else
the last \\boxed{} of `solution`). Golds must pass reward.validate_gold; bad rows are skipped, each named
by file, line and id, and a file of mostly bad rows is refused (strict=True: any). Deviation: a trailing
"Please reason step by step, and put your final answer within \\boxed{}." (aime25) is stripped.

Difficulty d in [0, 1] (0 = easiest), first match wins: a `difficulty` field; MATH `level` 1..5 ->
(level - 1) / 4 (arithmetic levels likewise); the source (SOURCE_DIFFICULTY: gsm8k < math < minerva <
amc < olympiad < aime); estimate_difficulty(): 1 - pass rate of k policy samples, cached by problem id.
Problems with no difficulty are used at every level (with a warning).

Schedules (make_schedule, DESIGN.md's HGRPO section) for a step budget T and maximum length M:
  hgrpo1   Q = [0,.35] [.35,.65] [.65,1] [.2,.8] (Q1 < Q2 < Q3, Q4 < Q3); Len = M/2, 3M/4, M, 3M/4
           (Len1 < Len2 < Len3, Len2 <= Len4 < Len3); H = T * (4, 2, 1, 1) / 8.
  hgrpo2   the same with Len4 = Len3 = M.
  adaptive Algorithm 1 on a monotone hierarchy Q = [0,.15] [.15,.35] [.35,.65] [.65,1] (arith 1|2|3|4-5),
           Len = M/2, 2M/3, 5M/6, M: draw p ~ U{Pmin..Pmax}; after p steps at level l move up iff the
           last step's pass rate > pass^l, else draw p again. Deviation: `steps` > 0 caps a level (0: none).
  deepscaler  3 stages on all data, Len = M/3, 2M/3, M (8K -> 16K -> 24K at M = 24K), H = T * (5, 3, 2) / 10.
  none     one level, all data, Len = M, H = T.
Levels also carry eps_low/eps_high (DAPO's 0.2/0.28), G, N, mu and pass^l; a JSON file can set any field:
{"L2": {"steps": 50}, "*": {"group_size": 16}}. Deviation: no length is below min(64, M), so the CPU
demo (M = 32) keeps 32 tokens at level 1, where shorter would cut every answer.

Iteration (Curriculum): epoch e of level l is the permutation of its pool seeded by (seed, l, e), so the
state is a few integers and a resume continues the exact sequence. A step's global batch is the next
n * world_size prompts, rank r taking slice r; end_step gets the pass rate already reduced over ranks, so
all ranks decide alike. Dynamic sampling (collect_groups, DAPO): drop groups whose rewards are all equal,
sample ceil(missing * oversample) more, after max_rounds extra rounds train on what is there, warn once.
Run: python curriculum.py --show hgrpo1 --total-steps 1000 --max-len 8192   (also --data, --overrides)
"""
import argparse
import json
import math
import os
import random
import re
import sys
import warnings
from collections import Counter
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Optional

from cli import add_dataclass_args, dataclass_from_args
from reward import extract_answer, validate_gold

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PROBLEM_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer", "gold", "final_answer", "ground_truth")
ID_FIELDS = ("id", "unique_id", "idx", "problem_id")
DATA_FORMATS = (".jsonl", ".json", ".parquet")
# Prefix of a source name -> difficulty, used when rows carry neither `difficulty` nor `level`.
SOURCE_DIFFICULTY = {"gsm8k": 0.1, "math": 0.5, "minerva": 0.6, "amc": 0.7, "olympiad": 0.8, "aime": 0.9}
COPIED_INSTRUCTION = re.compile(r"\s*Please reason step by step, and put your final answer within \\boxed\{\}\.?\s*$")
# Prompt templates are data-set configuration: a source listed here gets this template under "auto".
SOURCE_TEMPLATES = {"arith": "fewshot"}
FEWSHOT_PREFIX = ("Question: What is 3 + 5?\nAnswer: 3 + 5 = 8. The answer is \\boxed{8}.\n\n"
                  "Question: What is 6 * 2?\nAnswer: 6 * 2 = 12. The answer is \\boxed{12}.\n\n")
TEMPLATE_STOPS = {"fewshot": ["\n\nQuestion"]}  # the few-shot model would go on to invent the next question
TEMPLATES = ("auto", "chat", "plain", "fewshot")


@dataclass
class Problem:
    id: str                   # unique over the loaded data; error messages and the difficulty cache use it
    problem: str              # the question text, without an instruction suffix
    answer: str               # gold final answer, accepted by reward.validate_gold
    difficulty: float | None  # in [0, 1], 0 = easiest; None = unknown (used at every level)
    source: str               # data source name: file stem, the "name:" of "name:path", or "arith"


# ----------------------------------------------------------------------------- built-in arithmetic
def arithmetic_problems(level: int, n: int, seed: int) -> list[Problem]:
    """n seeded problems of one level: 1 a+b (1 digit), 2 a+b (2 digits), 3 a*b (1 digit),
    4 a-b (2 digits, a >= b), 5 a+b*c / a*b-c / (a+b)*c (1 digit). Answers are exact integers."""
    if level not in range(1, 6):
        raise ValueError(f"arithmetic level {level} does not exist (levels are 1..5)")
    rng, problems = random.Random(seed * 10 + level), []
    for i in range(n):
        a, b, c = (rng.randint(10, 99) if level in (2, 4) else rng.randint(1, 9) for _ in range(3))
        text = {1: f"{a} + {b}", 2: f"{a} + {b}", 3: f"{a} * {b}", 4: f"{max(a, b)} - {min(a, b)}",
                5: rng.choice([f"{a} + {b} * {c}", f"{a} * {b} - {c}", f"({a} + {b}) * {c}"])}[level]
        answer = eval(text)  # safe: our own text of digits, + - * and parentheses
        problems.append(Problem(f"arith-{level}-{i}", f"What is {text}?", str(answer), (level - 1) / 4, "arith"))
    return problems


# ----------------------------------------------------------------------------- loading
def _read_rows(path: str):
    """Yield (location, row or a one-line error) for each row of a .jsonl, .json (a list) or .parquet file."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if path.endswith(".jsonl"):
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"line {lineno}", json.loads(line)
                    except json.JSONDecodeError as e:
                        yield f"line {lineno}", f"bad JSON ({e.msg} at column {e.colno})"
        return
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert it to .jsonl")
        rows = pq.read_table(path).to_pylist()
    elif path.endswith(".json"):
        try:
            rows = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: bad JSON at line {e.lineno}: {e.msg}")
    else:
        raise ValueError(f"{path}: unknown data format (expected .jsonl, .json or .parquet)")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    yield from ((f"item {i}", row) for i, row in enumerate(rows))


def _row_difficulty(row: dict, source: str, row_id: str) -> float | None:
    if (d := row.get("difficulty")) is not None:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1:
            raise ValueError(f"id {row_id}: difficulty {d!r} is not a number in [0, 1]")
        return float(d)
    if row.get("level") is not None:
        match = re.fullmatch(r"(?:Level )?([1-5])", str(row["level"]).strip())
        return (int(match.group(1)) - 1) / 4 if match else None  # MATH has a few "Level ?" rows: unknown
    return next((d for prefix, d in SOURCE_DIFFICULTY.items() if source.lower().startswith(prefix)), None)


def _parse_row(row, source: str, location: str) -> Problem:
    """One row -> Problem, or ValueError with the reason (the caller adds file and line)."""
    if not isinstance(row, dict):
        raise ValueError(row if isinstance(row, str) else f"expected a JSON object, got {type(row).__name__}")
    first = lambda names: next((row[name] for name in names if row.get(name) is not None), None)
    row_id = str(first(ID_FIELDS)) if first(ID_FIELDS) is not None else f"{source}-{location.split()[-1]}"
    problem = first(PROBLEM_FIELDS)
    if isinstance(problem, list):  # chat messages (verl / DeepScaleR parquet): the last user turn
        problem = next((m.get("content") for m in reversed(problem) if isinstance(m, dict) and m.get("role") == "user"),
                       None)
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"id {row_id}: no problem text (fields tried: {', '.join(PROBLEM_FIELDS)})")
    answer = first(ANSWER_FIELDS)
    if answer is None and isinstance(row.get("reward_model"), dict):
        answer = row["reward_model"].get("ground_truth")
    if answer is None and isinstance(row.get("solution"), str):
        answer = extract_answer(row["solution"])
    if answer is None:
        raise ValueError(f"id {row_id}: no answer (tried {', '.join(ANSWER_FIELDS)}, the last \\boxed{{}} of solution)")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(int(answer)) if float(answer).is_integer() else str(answer)
    if not isinstance(answer, str):
        raise ValueError(f"id {row_id}: answer {answer!r} is not text")
    if "####" in answer:  # GSM8K's original format: reasoning, then "#### 1,234"
        answer = answer.split("####")[-1].strip().replace(",", "")
    if (reason := validate_gold(answer)) is not None:
        raise ValueError(f"id {row_id}: unusable gold {answer!r}: {reason}")
    return Problem(row_id, COPIED_INSTRUCTION.sub("", problem.strip()), answer.strip(),
                   _row_difficulty(row, source, row_id), source)


def _resolve(item: str, data_dir: str) -> tuple[str, str]:
    """One spec item -> (source name, path)."""
    name, sep, rest = item.partition(":")
    if sep and re.fullmatch(r"\w[\w.-]*", name) and (os.path.exists(rest) or rest.endswith(DATA_FORMATS)):
        return name, rest
    if os.path.exists(item) or item.endswith(DATA_FORMATS):
        return os.path.splitext(os.path.basename(item))[0], item
    path = os.path.join(data_dir, f"{item}.jsonl")
    if not os.path.isfile(path):
        known = sorted(f[:-6] for f in os.listdir(data_dir) if f.endswith(".jsonl")) if os.path.isdir(data_dir) else []
        raise ValueError(f"data '{item}': not a file, and no {path} (benchmarks: {', '.join(known + ['arith'])})")
    return item, path


def load_problems(spec: str | list[str], data_dir: str = DATA_DIR, arith_per_level: int = 200, seed: int = 0,
                  strict: bool = False, verbose: bool = True) -> list[Problem]:
    """Load and validate every source in `spec` (comma-separated string or list) into one list."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("no training data given (e.g. --data arith, --data math500, --data name:path.jsonl)")
    problems = []
    for item in items:
        loaded, errors = [], []
        if item == "arith":
            loaded = [p for level in range(1, 6) for p in arithmetic_problems(level, arith_per_level, seed)]
        else:
            source, path = _resolve(item, data_dir)
            for location, row in _read_rows(path):
                try:
                    loaded.append(_parse_row(row, source, location))
                except ValueError as e:
                    if strict:
                        raise ValueError(f"{path} {location}: {e}")
                    errors.append(f"{path} {location}: {e}")
            if len(errors) > len(loaded) or not loaded:
                raise ValueError(f"{path}: {len(errors)} of {len(errors) + len(loaded)} rows unusable, refusing the "
                                 f"file; first: {errors[0] if errors else 'the file is empty'}")
        for error in errors[:3]:  # printed even when not verbose: a skipped row changes what is trained or scored
            print(f"curriculum: skipped {error}")
        if verbose:
            print(f"curriculum: {item}: {len(loaded)} problems, {len(errors)} rows skipped, "
                  f"{sum(p.difficulty is not None for p in loaded)} with a difficulty")
        problems += loaded
    repeated = [(i, n) for i, n in Counter(p.id for p in problems).items() if n > 1]
    if repeated:  # ids key the difficulty cache and name problems in errors and logs
        raise ValueError(f"problem ids must be unique over the data given; repeated (id, times): {repeated[:5]}")
    return problems


def estimate_difficulty(problems: list[Problem], pass_rate_fn: Callable[[list[Problem], int], list[float]],
                        k: int, cache_path: str | None = None) -> list[Problem]:
    """difficulty = 1 - pass rate over k samples, pass_rate_fn(problems, k) -> one rate per problem.
    Cached as {"k": k, "difficulty": {id: d}}; only problems missing from it are sampled. Call it on one
    rank (or give each rank its share of problems) and broadcast: it does no communication."""
    saved = json.loads(Path(cache_path).read_text()) if cache_path and os.path.isfile(cache_path) else {}
    cache = saved["difficulty"] if saved.get("k") == k else {}  # a cache made with another k is redone
    missing = [p for p in problems if p.id not in cache]
    if missing:
        rates = list(pass_rate_fn(missing, k))
        if len(rates) != len(missing) or not all(0 <= r <= 1 for r in rates):
            raise ValueError(f"pass_rate_fn gave {len(rates)} rates for {len(missing)} problems (each in [0, 1])")
        cache.update({p.id: 1.0 - float(r) for p, r in zip(missing, rates)})
        if cache_path:  # write then rename: a crash never leaves half a cache
            Path(f"{cache_path}.tmp").write_text(json.dumps({"k": k, "difficulty": cache}))
            os.replace(f"{cache_path}.tmp", cache_path)
    return [replace(p, difficulty=cache[p.id]) for p in problems]


# ----------------------------------------------------------------------------- prompts
@dataclass
class PromptConfig:
    template: str = "auto"  # auto | chat | plain | fewshot; auto: the source's own (arith: fewshot), else chat if any, else plain
    suffix: str = "Let's think step by step and output the final answer within \\boxed{}."  # appended by chat and plain


def _template(problem: Problem, cfg: PromptConfig, tokenizer=None) -> str:
    if cfg.template not in TEMPLATES:
        raise ValueError(f"prompt template '{cfg.template}' unknown (choose from {', '.join(TEMPLATES)})")
    if cfg.template != "auto":
        return cfg.template
    return SOURCE_TEMPLATES.get(problem.source) or ("chat" if getattr(tokenizer, "chat_template", None) else "plain")


def build_prompt(problem: Problem, tokenizer, cfg: PromptConfig) -> str:
    """chat: the tokenizer's template around problem + suffix (no system prompt of ours);
    plain: "{problem} {suffix}\\n"; fewshot: FEWSHOT_PREFIX + "Question: {problem}\\nAnswer:"."""
    template = _template(problem, cfg, tokenizer)
    if template == "fewshot":
        return f"{FEWSHOT_PREFIX}Question: {problem.problem}\nAnswer:"
    text = f"{problem.problem} {cfg.suffix}".strip()
    if template == "plain":
        return text + "\n"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt template 'chat' asked for, but the tokenizer has no chat template (use plain)")
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_strings(cfg: PromptConfig, problems: list[Problem]) -> list[str]:
    """The stop strings the templates of these problems need (sorted, without repeats)."""
    templates = {_template(p, cfg) for p in problems}  # chat and plain need none, so no tokenizer here
    return sorted({s for t in templates for s in TEMPLATE_STOPS.get(t, [])})


# ----------------------------------------------------------------------------- level schedules
@dataclass
class Level:
    name: str                         # L1, L2, ...
    difficulty: tuple[float, float]   # closed range [lo, hi] of Problem.difficulty this level trains on
    max_len: int                      # maximum response length Len^l (tokens)
    eps_low: float                    # lower clip bound: ratio >= 1 - eps_low
    eps_high: float                   # upper clip bound (clip-higher): ratio <= 1 + eps_high
    group_size: int                   # G^l, responses per prompt
    prompts_per_step: int             # N^l, groups per optimizer step (all ranks together)
    steps: int                        # H^l: fixed schedules move up after it; adaptive: cap (0 = none)
    ppo_epochs: int                   # mu^l, passes over each batch
    pass_threshold: float             # adaptive: move up when the pass rate exceeds it


HGRPO_DIFFICULTY = [(0.0, 0.35), (0.35, 0.65), (0.65, 1.0), (0.2, 0.8)]
PRESETS = {  # name -> (difficulty ranges, max_len as fractions of M, step weights; None: no fixed horizon)
    "none": ([(0.0, 1.0)], [1.0], [1]),
    "deepscaler": ([(0.0, 1.0)] * 3, [1 / 3, 2 / 3, 1.0], [5, 3, 2]),
    "hgrpo1": (HGRPO_DIFFICULTY, [1 / 2, 3 / 4, 1.0, 3 / 4], [4, 2, 1, 1]),
    "hgrpo2": (HGRPO_DIFFICULTY, [1 / 2, 3 / 4, 1.0, 1.0], [4, 2, 1, 1]),
    "adaptive": ([(0.0, 0.15), (0.15, 0.35), (0.35, 0.65), (0.65, 1.0)], [1 / 2, 2 / 3, 5 / 6, 1.0], None),
}
SCHEDULES = tuple(PRESETS)


def make_schedule(name: str, total_steps: int, max_len: int, group_size: int, prompts_per_step: int,
                  overrides: str | None = None, ppo_epochs: int = 1, eps_low: float = 0.2, eps_high: float = 0.28,
                  pass_threshold: float = 0.7, min_len: int = 64) -> list[Level]:
    """The preset's levels for this budget (module docstring), then the overrides file's values.
    No preset length is below min(min_len, max_len): a tiny budget must still fit an answer at level 1."""
    if name not in PRESETS:
        raise ValueError(f"schedule '{name}' unknown (choose from {', '.join(SCHEDULES)})")
    ranges, fractions, weights = PRESETS[name]
    steps = [0] * len(ranges)  # adaptive: no fixed horizon
    if weights:  # H^l >= 1, proportional to the weights, summing to total_steps (largest remainders first)
        if total_steps < len(weights):
            raise ValueError(f"total steps {total_steps} is fewer than the {len(weights)} levels of '{name}'")
        ideal = [total_steps * w / sum(weights) for w in weights]
        steps = [max(1, int(x)) for x in ideal]
        for i in sorted(range(len(ideal)), key=lambda i: int(ideal[i]) - ideal[i])[:max(0, total_steps - sum(steps))]:
            steps[i] += 1
        while sum(steps) > total_steps:  # the >= 1 floor overshot a tiny budget
            steps[steps.index(max(steps))] -= 1
    levels = [Level(f"L{i + 1}", ranges[i], max(min(min_len, max_len), round(fractions[i] * max_len)), eps_low,
                    eps_high, group_size, prompts_per_step, steps[i], ppo_epochs, pass_threshold)
              for i in range(len(ranges))]
    levels = _apply_overrides(levels, overrides) if overrides else levels
    for lv in levels:
        lo, hi = lv.difficulty if len(lv.difficulty) == 2 else (None, None)
        if not (all(type(x) in (int, float) for x in (lo, hi)) and 0 <= lo <= hi <= 1
                and min(lv.max_len, lv.group_size, lv.prompts_per_step, lv.ppo_epochs) >= 1
                and lv.steps >= (0 if name == "adaptive" else 1) and min(lv.eps_low, lv.eps_high) >= 0):
            raise ValueError(f"{overrides or 'make_schedule'}: level {lv.name} is invalid: {lv} (need 0 <= lo <= hi "
                             "<= 1; max_len, group_size, prompts_per_step, ppo_epochs >= 1; steps >= 1, adaptive >= 0)")
    return levels


def _apply_overrides(levels: list[Level], path: str) -> list[Level]:
    """{"<level name>" or "*": {field: value}} from a JSON file, each value type-checked against the preset."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the schedule overrides: {e}")
    names = [lv.name for lv in levels]
    for key, values in (table.items() if isinstance(table, dict) else [("(top level)", None)]):
        if key not in names + ["*"] or not isinstance(values, dict):
            raise ValueError(f"{path}: '{key}' must be one of {names} or '*', mapping to {{field: value}}")
        for field, value in values.items():
            preset = getattr(levels[0], field, None) if field != "name" else None
            value = tuple(value) if isinstance(value, list) else value  # difficulty's elements: make_schedule
            if preset is None or not (type(value) is type(preset) or type(preset) is float and type(value) is int):
                raise ValueError(f"{path}: level '{key}': {field} = {value!r} is not a value like {preset!r}")
            levels = [replace(lv, **{field: value}) if key in ("*", lv.name) else lv for lv in levels]
    return levels


def _pool(problems: list[Problem], level: Level) -> list[int]:
    lo, hi = level.difficulty
    return [i for i, p in enumerate(problems) if p.difficulty is None or lo <= p.difficulty <= hi]


# ----------------------------------------------------------------------------- iteration
class Curriculum:
    """Which prompts each rank trains on at each step, and when to change level (module docstring)."""

    def __init__(self, problems: list[Problem], levels: list[Level], schedule: str, seed: int, rank: int = 0,
                 world_size: int = 1, p_min: int = 2, p_max: int = 4, verbose: bool = True):
        if schedule not in SCHEDULES or not levels or not 0 <= rank < world_size or not 1 <= p_min <= p_max:
            raise ValueError(f"Curriculum: bad schedule '{schedule}', {len(levels)} levels, rank {rank} of {world_size}"
                             f" or p_min {p_min} / p_max {p_max} (schedules: {', '.join(SCHEDULES)})")
        self.problems, self.levels, self.schedule, self.seed = problems, levels, schedule, seed
        self.rank, self.world_size, self.p_min, self.p_max = rank, world_size, p_min, p_max
        self.pools = [_pool(problems, lv) for lv in levels]
        for lv, pool in zip(levels, self.pools):
            if not pool:
                raise ValueError(f"level {lv.name}: no problem has a difficulty in {list(lv.difficulty)} (loaded: "
                                 f"{sorted({p.difficulty for p in problems})}); change its range or add data")
        unknown = sum(p.difficulty is None for p in problems)
        if verbose and unknown and any(lv.difficulty != (0.0, 1.0) for lv in levels):
            print(f"curriculum: {unknown} of {len(problems)} problems have no difficulty: they are used at every "
                  "level (give them a difficulty/level field, a SOURCE_DIFFICULTY prefix, or estimate_difficulty)")
        self.state = dict(level=0, step_in_level=0, epoch=0, position=0, decisions=0)
        self.state["decide_at"] = self._commitment()

    @property
    def level_index(self) -> int:
        return self.state["level"]

    @property
    def level(self) -> Level:
        return self.levels[self.level_index]

    @property
    def finished(self) -> bool:
        """Fixed schedules: the last level's horizon is spent (later calls keep serving the last level)."""
        last = self.level_index == len(self.levels) - 1
        return self.schedule != "adaptive" and last and self.state["step_in_level"] >= self.level.steps

    def _commitment(self) -> int:
        # p depends only on (seed, level, decision number), so a resume needs no RNG state.
        rng = random.Random(f"{self.seed}-{self.level_index}-{self.state['decisions']}")
        return rng.randint(self.p_min, self.p_max)

    def next_prompts(self, n: int) -> list[Problem]:
        """This rank's n prompts: slice `rank` of the next n * world_size prompts of the current level."""
        pool, s, batch = self.pools[self.level_index], self.state, []
        while len(batch) < n * self.world_size:
            order = random.Random(f"{self.seed}-{s['level']}-{s['epoch']}").sample(pool, len(pool))
            take = order[s["position"]:s["position"] + n * self.world_size - len(batch)]
            batch += take
            s["position"] += len(take)
            if s["position"] == len(pool):
                s["epoch"], s["position"] = s["epoch"] + 1, 0
        return [self.problems[i] for i in batch[self.rank * n:(self.rank + 1) * n]]

    def end_step(self, pass_rate: float | None) -> bool:
        """Count one optimizer step at this level; pass_rate is the step's, already reduced over ranks
        (None: unknown, never moves an adaptive level up). Returns True when the level changed."""
        s, last = self.state, self.level_index == len(self.levels) - 1
        s["step_in_level"] += 1
        if self.schedule != "adaptive":
            move = not last and s["step_in_level"] >= self.level.steps
        else:
            move = not last and 0 < self.level.steps <= s["step_in_level"]
            if s["step_in_level"] >= s["decide_at"]:  # Algorithm 1: decide after the p committed steps
                move = move or (not last and pass_rate is not None and pass_rate > self.level.pass_threshold)
                s["decisions"] += 1
                s["decide_at"] = s["step_in_level"] + self._commitment()
        if move:
            s.update(level=s["level"] + 1, step_in_level=0, epoch=0, position=0, decisions=0)
            s["decide_at"] = self._commitment()
        return move

    def state_dict(self) -> dict:
        return {**self.state, "schedule": self.schedule, "seed": self.seed, "levels": [lv.name for lv in self.levels],
                "pool_sizes": [len(p) for p in self.pools]}

    def load_state_dict(self, d: dict) -> None:
        for key, now in self.state_dict().items():
            if d.get(key) != now and key not in self.state:
                raise ValueError(f"curriculum state is from another run: {key} was {d.get(key)}, now {now} "
                                 "(resume with the same data, schedule and seed)")
        self.state = {key: int(d[key]) for key in self.state}


# ----------------------------------------------------------------------------- dynamic sampling
def collect_groups(next_prompts: Callable[[int], list], sample_and_score: Callable[[list], list], n_groups: int,
                   max_rounds: int, oversample: float = 1.0,
                   min_over_ranks: Callable[[int], int] | None = None) -> tuple[list, dict]:
    """Keep groups (`.rewards` or {"rewards": ...}) whose rewards are not all equal until n_groups, in at
    most 1 + max_rounds rounds. Distributed runs pass min_over_ranks (all_reduce MIN) so all ranks run the
    same rounds with the same prompt counts, keeping their curricula in lockstep. mean_reward in the
    stats covers every sampled group, dropped ones included (the unbiased pass rate for end_step)."""
    min_over_ranks = min_over_ranks or (lambda x: x)
    kept, sampled, rounds = [], [], 0
    while (missing := n_groups - min_over_ranks(len(kept))) > 0:
        if rounds > max_rounds:
            warnings.warn("dynamic sampling: batch not full after max_rounds extra rounds (too many groups with "
                          "equal rewards); training on the groups collected. Raise max_rounds or oversample, or "
                          "change the data's difficulty.", RuntimeWarning, stacklevel=2)
            break
        prompts = next_prompts(math.ceil(missing * (oversample if rounds else 1.0)))
        groups = sample_and_score(prompts)
        if len(groups) != len(prompts):
            raise ValueError(f"sample_and_score returned {len(groups)} groups for {len(prompts)} prompts")
        rewards = [list(g["rewards"] if isinstance(g, dict) else g.rewards) for g in groups]
        kept += [g for g, r in zip(groups, rewards) if len(set(r)) > 1]
        sampled, rounds = sampled + rewards, rounds + 1
    dropped = sum(len(set(r)) <= 1 for r in sampled)
    flat = [x for r in sampled for x in r]
    return kept[:n_groups], {"rounds": rounds, "sampled": len(sampled), "kept": min(len(kept), n_groups),
                             "dropped": dropped, "dropped_fraction": dropped / max(len(sampled), 1),
                             "mean_reward": sum(flat) / max(len(flat), 1)}


# ----------------------------------------------------------------------------- command line
@dataclass
class ShowConfig:
    show: str = "hgrpo1"          # schedule to print: none | deepscaler | hgrpo1 | hgrpo2 | adaptive
    total_steps: int = 1000       # optimizer steps of the whole run (T)
    max_len: int = 8192           # maximum response length M (tokens)
    group_size: int = 8           # responses per prompt (G)
    prompts_per_step: int = 32    # groups per optimizer step, all ranks together (N)
    overrides: Optional[str] = None  # JSON file of level fields, e.g. {"L2": {"steps": 50}, "*": {"group_size": 16}}
    data: str = "arith"           # data to count per level: files, name:path, data/ benchmark names, arith


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print a level schedule and how many problems each level gets.")
    add_dataclass_args(parser, ShowConfig)
    cfg = dataclass_from_args(ShowConfig, parser.parse_args(argv))
    try:
        levels = make_schedule(cfg.show, cfg.total_steps, cfg.max_len, cfg.group_size, cfg.prompts_per_step,
                               cfg.overrides)
        problems = load_problems(cfg.data)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"schedule {cfg.show}: {len(levels)} levels, " + ("horizons by Algorithm 1" if cfg.show == "adaptive"
          else f"{sum(lv.steps for lv in levels)} steps"))
    rows = [["level", "difficulty", "problems"] + [f.name for f in fields(Level)][2:]]
    for lv in levels:
        lo, hi = lv.difficulty
        count = str(len(_pool(problems, lv)))
        rows.append([lv.name, f"[{lo:.2f}, {hi:.2f}]", count] + [str(v) for v in astuple(lv)[2:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows))


if __name__ == "__main__":
    main()
