"""Training order: HGRPO level schedules over difficulty and response length, HICRA's context rule, iteration.

The problems themselves (loading, difficulty d in [0, 1], prompts) are in problems.py. A level trains on
the problems whose d lies in its closed range; problems with no difficulty are used at every level
(with a warning).

Schedules (make_schedule, the HGRPO paper's hierarchy) for a step budget T and maximum length M:
  hgrpo1   Q = [0,.35] [.35,.65] [.65,1] [.2,.8] (Q1 < Q2 < Q3, Q4 < Q3); Len = M/2, 3M/4, M, 3M/4
           (Len1 < Len2 < Len3, Len2 <= Len4 < Len3); H = T * (4, 2, 1, 1) / 8.
  hgrpo2   the same with Len4 = Len3 = M.
  adaptive Algorithm 1 on a monotone hierarchy Q = [0,.15] [.15,.35] [.35,.65] [.65,1] (arith 1|2|3|4-5),
           Len = M/2, 2M/3, 5M/6, M; see "Algorithm 1" below. Deviation: `steps` > 0 caps a level (0: none).
  deepscaler  3 stages on all data, Len = M/3, 2M/3, M (8K -> 16K -> 24K at M = 24K), H = T * (5, 3, 2) / 10.
  none     one level, all data, Len = M, H = T.
Levels also carry eps_low/eps_high (DAPO's 0.2/0.28), G, N, mu, pass^l, Pmin^l/Pmax^l (2/4) and the soft
overlong buffer K^l of HGRPO's per-level length reward: a quarter of the level's own Len^l (DAPO's
"last quarter of the length budget" at every level). A JSON file can set any field:
{"L2": {"steps": 50, "overlong_buffer": 512}, "*": {"group_size": 16}}. Deviation: no length is below
min(64, M), so the CPU demo (M = 32) keeps 32 tokens at level 1, where shorter would cut every answer.

Algorithm 1 (adaptive; Curriculum.begin_step with an `evaluate(level) -> pass rate` callback). Before each
block the manager draws p ~ U{Pmin^l..Pmax^l}, seeded by (seed, block number), and looks at pass rates
measured on a fresh rollout of the levels concerned (not on the training step's groups): at level c it
goes back down to c - 1 when c - 1's rate is <= pass^(c-1) (the lower level slipped), else commits the
block to c + 1 when c's rate exceeds pass^c, else keeps training c. So at most two probes per block; with
two levels this is "check the lower level; commit the block to the higher one or keep training the lower".
The HGRPO paper's text of Algorithm 1 was not available here: this is our reading of its description
(time commitment, level-wise rollout, pass-rate check); the way down is our reading of "it can go back".
Without a callback (end_step alone) the adaptive schedule is the cheap variant: after the p committed
steps the last training step's pass rate decides, only upwards. Each level keeps its own position in
its problem order, so a level trained again continues where it stopped.

HICRA's context rule (ContextRule; Curriculum.observe_truncation): once, when more than `threshold`
(20%) of all responses sampled in a step were cut by the length limit, every level's maximum length is
multiplied by `factor`, at most `cap` (HICRA: 16K -> 32K), and its overlong buffer with it
(length_budget). Deviation: the paper states one doubling; factor and cap are knobs here.

Iteration (Curriculum): epoch e of level l is the permutation of its pool seeded by (seed, l, e), so the
state is a few integers and a resume continues the exact sequence. A step's global batch is the next
n * world_size prompts, rank r taking slice r; pass rates given to end_step / returned by evaluate are
already reduced over ranks, so all ranks decide alike. Dynamic sampling, which draws from next_prompts, is the
step's data collection (experience.collect_groups).
Run: python curriculum.py --show hgrpo1 --total-steps 1000 --max-len 8192   (also --data, --overrides)
"""
import argparse
import json
import random
import sys
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Optional

from cli import add_dataclass_args, dataclass_from_args
from problems import Problem, load_problems


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
    pass_threshold: float             # adaptive: pass^l, the rate a level must exceed to move above it
    overlong_buffer: int = -1         # K^l: soft overlong penalty over the last K^l tokens (-1: max_len // 4)
    p_min: int = 2                    # adaptive: shortest block (steps) committed to this level
    p_max: int = 4                    # adaptive: longest block


HGRPO_DIFFICULTY = [(0.0, 0.35), (0.35, 0.65), (0.65, 1.0), (0.2, 0.8)]
PRESETS = {  # name -> (difficulty ranges, max_len as fractions of M, step weights; None: no fixed horizon)
    "none": ([(0.0, 1.0)], [1.0], [1]),
    "deepscaler": ([(0.0, 1.0)] * 3, [1 / 3, 2 / 3, 1.0], [5, 3, 2]),
    "hgrpo1": (HGRPO_DIFFICULTY, [1 / 2, 3 / 4, 1.0, 3 / 4], [4, 2, 1, 1]),
    "hgrpo2": (HGRPO_DIFFICULTY, [1 / 2, 3 / 4, 1.0, 1.0], [4, 2, 1, 1]),
    "adaptive": ([(0.0, 0.15), (0.15, 0.35), (0.35, 0.65), (0.65, 1.0)], [1 / 2, 2 / 3, 5 / 6, 1.0], None),
}
SCHEDULES = tuple(PRESETS)


def _horizons(name: str, total_steps: int, weights: list[int] | None, levels: int) -> list[int]:
    """H^l >= 1, proportional to the weights, summing to total_steps (largest remainders first); adaptive: 0."""
    if not weights:
        return [0] * levels
    if total_steps < len(weights):
        raise ValueError(f"total steps {total_steps} is fewer than the {len(weights)} levels of '{name}'")
    ideal = [total_steps * w / sum(weights) for w in weights]
    steps = [max(1, int(x)) for x in ideal]
    for i in sorted(range(len(ideal)), key=lambda i: int(ideal[i]) - ideal[i])[:max(0, total_steps - sum(steps))]:
        steps[i] += 1
    while sum(steps) > total_steps:  # the >= 1 floor overshot a tiny budget
        steps[steps.index(max(steps))] -= 1
    return steps


def make_schedule(name: str, total_steps: int, max_len: int, group_size: int, prompts_per_step: int,
                  overrides: str | None = None, ppo_epochs: int = 1, eps_low: float = 0.2, eps_high: float = 0.28,
                  pass_threshold: float = 0.7, min_len: int = 64, p_min: int | None = None,
                  p_max: int | None = None) -> list[Level]:
    """The preset's levels for this budget (module docstring), p_min / p_max (the command line) on every
    level, then the overrides file's values; a buffer left at -1 becomes a quarter of the level's max_len.
    No preset length is below min(min_len, max_len): a tiny budget must still fit an answer at level 1."""
    if name not in PRESETS:
        raise ValueError(f"schedule '{name}' unknown (choose from {', '.join(SCHEDULES)})")
    ranges, fractions, weights = PRESETS[name]
    steps = _horizons(name, total_steps, weights, len(ranges))
    blocks = {k: v for k, v in (("p_min", p_min), ("p_max", p_max)) if v is not None}
    levels = [Level(f"L{i + 1}", ranges[i], max(min(min_len, max_len), round(fractions[i] * max_len)), eps_low,
                    eps_high, group_size, prompts_per_step, steps[i], ppo_epochs, pass_threshold, **blocks)
              for i in range(len(ranges))]
    levels = _apply_overrides(levels, overrides) if overrides else levels
    levels = [replace(lv, overlong_buffer=lv.max_len // 4) if lv.overlong_buffer == -1 else lv for lv in levels]
    for lv in levels:
        lo, hi = lv.difficulty if len(lv.difficulty) == 2 else (None, None)
        if not (all(type(x) in (int, float) for x in (lo, hi)) and 0 <= lo <= hi <= 1
                and min(lv.max_len, lv.group_size, lv.prompts_per_step, lv.ppo_epochs, lv.p_min) >= 1
                and lv.steps >= (0 if name == "adaptive" else 1) and min(lv.eps_low, lv.eps_high) >= 0
                and 0 <= lv.overlong_buffer < lv.max_len and lv.p_min <= lv.p_max):
            raise ValueError(f"{overrides or 'make_schedule'}: level {lv.name} is invalid: {lv} (need 0 <= lo <= hi "
                             "<= 1; max_len, group_size, prompts_per_step, ppo_epochs >= 1; steps >= 1, adaptive >= 0; "
                             "0 <= overlong_buffer < max_len; 1 <= p_min <= p_max)")
    return levels


def _apply_overrides(levels: list[Level], path: str) -> list[Level]:
    """{"<level name>" or "*": {field: value}} from a JSON file, each value type-checked against the preset."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the schedule overrides: {e}")
    names, settable = [lv.name for lv in levels], [f.name for f in fields(Level) if f.name != "name"]
    for key, values in (table.items() if isinstance(table, dict) else [("(top level)", None)]):
        if key not in names + ["*"] or not isinstance(values, dict):
            raise ValueError(f"{path}: '{key}' must be one of {names} or '*', mapping to {{field: value}}")
        for field, value in values.items():
            if field not in settable:
                raise ValueError(f"{path}: level '{key}': unknown field '{field}' (fields: {', '.join(settable)})")
            preset = getattr(levels[0], field)
            value = tuple(value) if isinstance(value, list) else value  # difficulty's elements: make_schedule
            if not (type(value) is type(preset) or type(preset) is float and type(value) is int):
                raise ValueError(f"{path}: level '{key}': {field} = {value!r} is not a {type(preset).__name__} "
                                 f"like {preset!r}")
            levels = [replace(lv, **{field: value}) if key in ("*", lv.name) else lv for lv in levels]
    return levels


def _pool(problems: list[Problem], level: Level) -> list[int]:
    lo, hi = level.difficulty
    return [i for i, p in enumerate(problems) if p.difficulty is None or lo <= p.difficulty <= hi]


def _empty_level_message(problems: list[Problem], level: Level, schedule: str) -> str:
    known = sorted({p.difficulty for p in problems if p.difficulty is not None})
    if len(known) == 1:  # one data set whose rows carry no difficulty: its source gives them all one value
        sources = ", ".join(sorted({p.source for p in problems}))
        return (f"level {level.name} of '{schedule}' trains on difficulty {list(level.difficulty)}, but all "
                f"{len(problems)} problems ({sources}) have difficulty {known[0]}: use --curriculum none or "
                "deepscaler (no difficulty levels), add data of other difficulties (e.g. --data gsm8k_train,math500), "
                "or give the rows a difficulty/level field")
    return (f"level {level.name}: no problem has a difficulty in {list(level.difficulty)} (loaded: {known}); "
            "change its range (--schedule-overrides) or add data")


# ----------------------------------------------------------------------------- HICRA's context rule
@dataclass
class ContextRule:
    factor: float = 2.0     # multiply every level's maximum response length by this, once (HICRA: 16K -> 32K)
    cap: int = 32768        # never above this many tokens
    threshold: float = 0.2  # when more than this fraction of a step's sampled responses hit the length limit

    def __post_init__(self):
        if not (self.factor > 1 and self.cap >= 1 and 0 <= self.threshold < 1):
            raise ValueError(f"ContextRule needs factor > 1, cap >= 1 and 0 <= threshold < 1, got {self}")


def context_should_raise(truncated: int, sampled: int, threshold: float) -> bool:
    """HICRA's trigger: the fraction of all sampled responses cut by the length limit exceeds the threshold."""
    return sampled > 0 and truncated / sampled > threshold


def raised_length(max_len: int, overlong_buffer: int, rule: ContextRule) -> tuple[int, int]:
    """(max_len, buffer) after the raise: max_len * factor capped (never lowered), the buffer scaled alike."""
    new = max(max_len, min(rule.cap, round(max_len * rule.factor)))
    return new, overlong_buffer * new // max_len


def overlong_buffer_for(level: Level, requested: int, max_len: int | None = None) -> int:
    """The soft overlong buffer a step at `level` uses: requested -1 -> the level's own K^l (scaled to max_len
    when the context rule raised it), 0 -> off, N > 0 -> N tokens (must be below the level's length)."""
    max_len = max_len or level.max_len
    if requested == -1:
        return level.overlong_buffer * max_len // level.max_len
    if requested < 0 or requested >= max_len:
        raise ValueError(f"--overlong-buffer {requested} must be -1 (a quarter of each level's length), 0 (off) "
                         f"or below level {level.name}'s max length {max_len}")
    return requested
# ----------------------------------------------------------------------------- iteration
class Curriculum:
    """Which prompts each rank trains on at each step, and when to change level (module docstring)."""

    def __init__(self, problems: list[Problem], levels: list[Level], schedule: str, seed: int, rank: int = 0,
                 world_size: int = 1, p_min: int | None = None, p_max: int | None = None, verbose: bool = True,
                 context: ContextRule | None = None):
        levels = [replace(lv, p_min=p_min or lv.p_min, p_max=p_max or lv.p_max) for lv in levels]
        if schedule not in SCHEDULES or not levels or not 0 <= rank < world_size or not all(
                1 <= lv.p_min <= lv.p_max for lv in levels):
            raise ValueError(f"Curriculum: bad schedule '{schedule}', {len(levels)} levels, rank {rank} of {world_size}"
                             f" or p_min / p_max {[(lv.p_min, lv.p_max) for lv in levels]} (schedules: "
                             f"{', '.join(SCHEDULES)}; need 1 <= p_min <= p_max)")
        self.problems, self.schedule, self.seed, self.context = problems, schedule, seed, context
        self.levels = levels
        self.rank, self.world_size = rank, world_size
        self.pools = [_pool(problems, lv) for lv in levels]
        for lv, pool in zip(levels, self.pools):
            if not pool:
                raise ValueError(_empty_level_message(problems, lv, schedule))
        unknown = sum(p.difficulty is None for p in problems)
        if verbose and unknown and any(lv.difficulty != (0.0, 1.0) for lv in levels):
            print(f"curriculum: {unknown} of {len(problems)} problems have no difficulty: they are used at every "
                  "level (give them a difficulty/level field, a SOURCE_DIFFICULTY prefix, or estimate_difficulty)")
        L = len(levels)
        self.state = dict(level=0, step_in_level=0, decisions=0, decide_at=0, block_left=0, blocks=0, steps=0,
                          level_steps=[0] * L, epochs=[0] * L, positions=[0] * L, context_raised=0, context_raised_at=0)
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

    def length_budget(self) -> tuple[int, int]:
        """(max response length, soft overlong buffer K^l) of the current level, after the context rule."""
        lv = self.level
        if self.context is None or not self.state["context_raised"]:
            return lv.max_len, lv.overlong_buffer
        return raised_length(lv.max_len, lv.overlong_buffer, self.context)

    def _commitment(self) -> int:
        # cheap variant: p depends only on (seed, level, decision number), so a resume needs no RNG state
        rng = random.Random(f"{self.seed}-{self.level_index}-{self.state['decisions']}")
        return rng.randint(self.level.p_min, self.level.p_max)

    def _order(self, level: int, epoch: int) -> list[int]:
        return random.Random(f"{self.seed}-{level}-{epoch}").sample(self.pools[level], len(self.pools[level]))

    def next_prompts(self, n: int) -> list[Problem]:
        """This rank's n prompts: slice `rank` of the next n * world_size prompts of the current level."""
        s, level, batch = self.state, self.level_index, []
        pool = self.pools[level]
        while len(batch) < n * self.world_size:
            position = s["positions"][level]
            take = self._order(level, s["epochs"][level])[position:position + n * self.world_size - len(batch)]
            batch += take
            s["positions"][level] += len(take)
            if s["positions"][level] == len(pool):
                s["epochs"][level], s["positions"][level] = s["epochs"][level] + 1, 0
        return [self.problems[i] for i in batch[self.rank * n:(self.rank + 1) * n]]

    def probe_prompts(self, level: int, n: int) -> list[Problem]:
        """This rank's n of the n * world_size prompts of a fresh-rollout check of `level` before block
        number state["blocks"] (seeded by both; the training order is untouched)."""
        pool = self.pools[level]
        order = random.Random(f"{self.seed}-probe-{self.state['blocks']}-{level}").sample(pool, len(pool))
        picked = [order[i % len(order)] for i in range(n * self.world_size)]
        return [self.problems[i] for i in picked[self.rank * n:(self.rank + 1) * n]]

    def _enter(self, level: int) -> None:
        self.state.update(level=level, step_in_level=0, decisions=0)
        self.state["decide_at"] = self._commitment()

    def begin_step(self, evaluate: Callable[[int], float | None] | None = None) -> bool:
        """Algorithm 1 before a step (adaptive schedule, at a block boundary, with evaluate(level) -> the level's
        pass rate on a fresh rollout, reduced over ranks; None = unknown): choose the block's level and length.
        Returns True when the level changed. Other schedules, mid-block or without evaluate: does nothing."""
        s = self.state
        if self.schedule != "adaptive" or evaluate is None or s["block_left"] > 0:
            return False
        c, top, target = s["level"], len(self.levels) - 1, s["level"]
        below = evaluate(c - 1) if c > 0 and not self._capped(c - 1) else None
        if below is not None and below <= self.levels[c - 1].pass_threshold:
            target = c - 1  # the lower level slipped: train it again
        elif c < top and (rate := evaluate(c)) is not None and rate > self.levels[c].pass_threshold:
            target = c + 1  # the level is mastered: commit the block to the higher one
        rng, chosen = random.Random(f"{self.seed}-block-{s['blocks']}"), self.levels[target]
        s["blocks"], s["block_left"] = s["blocks"] + 1, rng.randint(chosen.p_min, chosen.p_max)
        if target != c:
            self._enter(target)
        return target != c

    def _capped(self, level: int) -> bool:
        """Adaptive: the level's `steps` cap (over all its visits) is spent; it is left and never trained again."""
        return 0 < self.levels[level].steps <= self.state["level_steps"][level]

    def end_step(self, pass_rate: float | None = None) -> bool:
        """Count one optimizer step at this level; pass_rate is the step's, already reduced over ranks (None:
        unknown). Fixed schedules move up after H^l steps; adaptive ones after a capped level's `steps`, or
        (the cheap variant, when begin_step never decided) after the p committed steps if pass_rate > pass^l.
        Returns True when the level changed."""
        s, last = self.state, self.level_index == len(self.levels) - 1
        s["step_in_level"], s["steps"] = s["step_in_level"] + 1, s["steps"] + 1
        s["level_steps"][self.level_index] += 1
        if self.schedule != "adaptive":
            move = not last and s["step_in_level"] >= self.level.steps
        else:
            move = not last and self._capped(self.level_index)
            if s["blocks"]:  # Algorithm 1 through begin_step: the block runs down; a cap ends it early
                s["block_left"] = 0 if move else max(0, s["block_left"] - 1)
            elif s["step_in_level"] >= s["decide_at"]:  # cheap variant: decide after the p committed steps
                move = move or (not last and pass_rate is not None and pass_rate > self.level.pass_threshold)
                s["decisions"] += 1
                s["decide_at"] = s["step_in_level"] + self._commitment()
        if move:
            self._enter(self.level_index + 1)
        return move

    def observe_truncation(self, truncated: int, sampled: int) -> bool:
        """HICRA's context rule after a step (counts over every response sampled, all ranks): raise the length
        once when truncated / sampled > threshold. Returns True when it raised (call it after end_step)."""
        s = self.state
        if self.context is None or s["context_raised"] or not context_should_raise(truncated, sampled,
                                                                                   self.context.threshold):
            return False
        s.update(context_raised=1, context_raised_at=s["steps"])
        return True

    def state_dict(self) -> dict:
        return {**json.loads(json.dumps(self.state)), "schedule": self.schedule, "seed": self.seed,
                "levels": [lv.name for lv in self.levels], "pool_sizes": [len(p) for p in self.pools]}

    def load_state_dict(self, d: dict) -> None:
        if d.get("seed") != self.seed:
            raise ValueError(f"curriculum state is from another run: seed was {d.get('seed')}, now {self.seed} "
                             f"(resume with --seed {d.get('seed')}, or start a new run in another --out-dir)")
        for key, now in self.state_dict().items():
            if key not in self.state and d.get(key) != now:
                raise ValueError(f"curriculum state is from another run: {key} was {d.get(key)}, now {now} "
                                 "(resume with the same data, schedule and seed)")
        d, L = dict(d), len(self.levels)
        if "epochs" not in d:  # a checkpoint from before per-level positions: only its current level had moved
            d["epochs"], d["positions"], d["level_steps"] = [0] * L, [0] * L, [0] * L
            d["epochs"][d["level"]], d["positions"][d["level"]] = d.get("epoch", 0), d.get("position", 0)
            d["level_steps"][d["level"]] = d["step_in_level"]
        fresh = {"block_left": 0, "blocks": 0, "steps": 0, "context_raised": 0, "context_raised_at": 0}
        self.state = {key: [int(x) for x in d[key]] if isinstance(now, list) else int(d.get(key, fresh.get(key)))
                      for key, now in self.state.items()}


def make_curriculum(problems: list[Problem], schedule: str, total_steps: int, max_len: int, group_size: int,
                    prompts_per_step: int, seed: int, rank: int = 0, world_size: int = 1, overrides: str | None = None,
                    p_min: int | None = None, p_max: int | None = None, context: ContextRule | None = None,
                    verbose: bool = True) -> Curriculum:
    """make_schedule + Curriculum in one call whose every input error is a one-line ValueError."""
    levels = make_schedule(schedule, total_steps, max_len, group_size, prompts_per_step, overrides,
                           p_min=p_min, p_max=p_max)
    try:
        return Curriculum(problems, levels, schedule, seed, rank, world_size, verbose=verbose, context=context)
    except ValueError as e:
        raise ValueError(f"{e} (levels as set by {overrides})" if overrides else str(e)) from None


# ----------------------------------------------------------------------------- command line
@dataclass
class ShowConfig:
    show: str = "hgrpo1"          # schedule to print: none | deepscaler | hgrpo1 | hgrpo2 | adaptive
    total_steps: int = 1000       # optimizer steps of the whole run (T)
    max_len: int = 8192           # maximum response length M (tokens)
    group_size: int = 8           # responses per prompt (G)
    prompts_per_step: int = 32    # groups per optimizer step, all ranks together (N)
    overrides: Optional[str] = None  # JSON file of level fields, e.g. {"L2": {"steps": 50}, "*": {"group_size": 16}}
    p_min: Optional[int] = None   # adaptive: shortest block on every level (default: the preset's 2)
    p_max: Optional[int] = None   # adaptive: longest block on every level (default: the preset's 4)
    data: str = "arith"           # data to count per level: files, name:path, data/ benchmark names, arith


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print a level schedule and how many problems each level gets.")
    add_dataclass_args(parser, ShowConfig)
    cfg = dataclass_from_args(ShowConfig, parser.parse_args(argv))
    try:
        levels = make_schedule(cfg.show, cfg.total_steps, cfg.max_len, cfg.group_size, cfg.prompts_per_step,
                               cfg.overrides, p_min=cfg.p_min, p_max=cfg.p_max)
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
