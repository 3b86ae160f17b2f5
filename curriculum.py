"""Training order: HGRPO level schedules over difficulty and response length, iteration, dynamic sampling.

The problems themselves (loading, difficulty d in [0, 1], prompts) are in problems.py. A level trains on
the problems whose d lies in its closed range; problems with no difficulty are used at every level
(with a warning).

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
import random
import sys
import warnings
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
