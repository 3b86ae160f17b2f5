"""curriculum.py: schedules, adaptive rule, resume and rank sharding; experience.py's dynamic sampling. Every
expected value is written out by hand or recomputed here independently (steps by arithmetic)."""
import json
import random
import re
import warnings
from types import SimpleNamespace

import pytest

import curriculum as C  # tests/conftest.py puts the repository root on sys.path
import problems as P
from curriculum import Curriculum
from experience import collect_groups, group_correct
from problems import Problem


def write(path, text):
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- schedules
def show_table(capsys, *argv):
    C.main(["--show", *argv])
    lines = capsys.readouterr().out.strip().splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["level", "difficulty"])
    rows = []
    for line in lines[header_at + 1:]:
        m = re.fullmatch(r"\s*(L\d) +\[([\d.]+), ([\d.]+)\] +(\d+) +(\d+) +([\d.]+) +([\d.]+) +(\d+) +(\d+) +(\d+) +(\d+)"
                         r" +([\d.]+) +(\d+) +(\d+) +(\d+)", line)
        assert m, line
        g = m.groups()
        rows.append(dict(name=g[0], lo=float(g[1]), hi=float(g[2]), problems=int(g[3]), max_len=int(g[4]),
                         steps=int(g[9]), mid=(float(g[1]) + float(g[2])) / 2, overlong_buffer=int(g[12]),
                         p_min=int(g[13]), p_max=int(g[14])))
    return rows


@pytest.mark.parametrize("name", ["hgrpo1", "hgrpo2"])
def test_printed_hgrpo_tables_satisfy_the_paper_relations(capsys, name):
    q1, q2, q3, q4 = show_table(capsys, name, "--total-steps", "1000", "--max-len", "8192")
    assert q1["mid"] < q2["mid"] < q3["mid"] and q4["mid"] < q3["mid"]
    assert q1["lo"] <= q2["lo"] <= q3["lo"] and q1["hi"] <= q2["hi"] <= q3["hi"]
    assert q1["max_len"] < q2["max_len"] < q3["max_len"] == 8192
    if name == "hgrpo1":
        assert q2["max_len"] <= q4["max_len"] < q3["max_len"]
    else:
        assert q4["max_len"] == q3["max_len"]
    assert (q1["steps"], q2["steps"], q3["steps"], q4["steps"]) == (500, 250, 125, 125)  # H1 >> H2 >> H3 ~ H4
    assert (q1["problems"], q2["problems"], q3["problems"], q4["problems"]) == (400, 200, 400, 600)  # arith 200/level


def test_small_budgets_every_schedule_and_the_cpu_demo(capsys):
    assert [r["steps"] for r in show_table(capsys, "hgrpo1", "--total-steps", "16", "--max-len", "32")] == [8, 4, 2, 2]
    assert sum(r["steps"] for r in show_table(capsys, "hgrpo2", "--total-steps", "5", "--max-len", "32")) == 5
    assert [r["steps"] for r in show_table(capsys, "hgrpo1", "--total-steps", "4")] == [1, 1, 1, 1]
    demo = show_table(capsys, "adaptive", "--total-steps", "16", "--max-len", "32")
    assert [(r["problems"], r["max_len"]) for r in demo] == [(200, 32), (200, 32), (200, 32), (400, 32)]
    deep = show_table(capsys, "deepscaler", "--total-steps", "100", "--max-len", "24576")
    assert [(r["max_len"], r["steps"], r["problems"]) for r in deep] == [(8192, 50, 1000), (16384, 30, 1000), (24576, 20, 1000)]
    assert [(r["max_len"], r["steps"]) for r in show_table(capsys, "none", "--total-steps", "7")] == [(8192, 7)]
    with pytest.raises(SystemExit, match="schedule 'bogus' unknown"):
        C.main(["--show", "bogus"])
    with pytest.raises(SystemExit, match="total steps 3 is fewer than the 4 levels"):
        C.main(["--show", "hgrpo1", "--total-steps", "3"])


def test_overrides_file(tmp_path):
    path = write(tmp_path / "o.json", json.dumps({"L2": {"steps": 7, "difficulty": [0.1, 0.2], "eps_high": 1},
                                                  "*": {"group_size": 4}}))
    levels = C.make_schedule("hgrpo1", 16, 32, 8, 2, overrides=path)
    assert [(lv.group_size, lv.steps) for lv in levels] == [(4, 8), (4, 7), (4, 2), (4, 2)]
    assert levels[1].difficulty == (0.1, 0.2) and levels[1].eps_high == 1
    for table, message in [({"L9": {}}, "'L9' must be one of"),
                           ({"L1": {"stepz": 5}}, "unknown field 'stepz' \\(fields: difficulty, max_len, .*steps"),
                           ({"L1": {"max_len": "8k"}}, "max_len = '8k' is not a int"),
                           ({"L1": {"difficulty": [0.5, 0.2]}}, "level L1 is invalid"),
                           ({"L1": {"difficulty": ["a", 1]}}, "level L1 is invalid")]:
        with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*" + message):
            C.make_schedule("hgrpo1", 16, 32, 8, 2, overrides=write(tmp_path / "x.json", json.dumps(table)))


# ----------------------------------------------------------------------------- adaptive rule
def adaptive(seed=0, p_min=3, p_max=3, overrides=None, per_level=10):
    problems = [p for level in range(1, 6) for p in P.arithmetic_problems(level, per_level, 0)]
    return Curriculum(problems, C.make_schedule("adaptive", 100, 64, 2, 2, overrides), "adaptive", seed,
                      p_min=p_min, p_max=p_max)


def test_adaptive_moves_up_only_after_p_steps_and_only_above_the_threshold():
    cur = adaptive()  # p = 3: decisions at steps 3, 6, 9, ...
    assert [cur.end_step(0.9) for _ in range(3)] == [False, False, True] and cur.level_index == 1
    assert not any(cur.end_step(0.7) for _ in range(30)) and cur.level_index == 1  # equal is not above
    assert [cur.end_step(r) for r in (0.1, 0.9, 0.9)] == [False, False, True]  # steps 31, 32, 33
    assert [cur.end_step(r) for r in (0.9, 0.9, 0.69)] == [False, False, False]  # the last step's rate decides
    assert [cur.end_step(r) for r in (0.0, 0.0, None)] == [False, False, False]  # unknown never moves
    assert [cur.end_step(r) for r in (0.0, 0.0, 0.8)] == [False, False, True] and cur.level_index == 3
    assert not any(cur.end_step(1.0) for _ in range(10)) and cur.level_index == 3 and not cur.finished


def test_adaptive_commitment_is_seeded_and_drawn_from_p_min_to_p_max():
    def first_move(seed):
        cur = adaptive(seed, p_min=2, p_max=6)
        return next(step for step in range(1, 20) if cur.end_step(1.0))
    moves = [first_move(seed) for seed in range(30)]
    assert moves == [first_move(seed) for seed in range(30)]
    assert set(moves) == {2, 3, 4, 5, 6}


def test_adaptive_step_cap(tmp_path):
    cur = adaptive(overrides=write(tmp_path / "cap.json", json.dumps({"L1": {"steps": 5}})))
    assert [cur.end_step(0.0) for _ in range(5)] == [False] * 4 + [True]


def test_fixed_schedule_horizons_and_finished():
    problems = [p for level in range(1, 6) for p in P.arithmetic_problems(level, 10, 0)]
    cur = Curriculum(problems, C.make_schedule("hgrpo1", 16, 32, 8, 2), "hgrpo1", seed=0)
    changes = [step for step in range(1, 17) if cur.end_step(0.0)]
    assert changes == [8, 12, 14] and cur.level_index == 3 and cur.finished


def test_levels_without_problems_and_unknown_difficulty(capsys):
    easy = [Problem(str(i), "p", "1", 0.1, "s") for i in range(3)]
    spread = easy + [Problem("h", "p", "1", 0.9, "s")]
    with pytest.raises(ValueError, match=r"level L2: no problem has a difficulty in \[0.35, 0.65\]"):
        Curriculum(spread, C.make_schedule("hgrpo1", 8, 32, 2, 2), "hgrpo1", seed=0)
    mixed = easy + [Problem("u", "p", "1", None, "s")]
    cur = Curriculum(mixed, C.make_schedule("adaptive", 8, 32, 2, 2), "adaptive", 0)
    assert "1 of 4 problems have no difficulty" in capsys.readouterr().out
    assert cur.pools == [[0, 1, 2, 3], [3], [3], [3]]


# ----------------------------------------------------------------------------- dynamic sampling
class Scripted:
    """Prompt i's group: rewards all 0 (i % 3 == 0), all 1 (i % 3 == 1) or mixed (i % 3 == 2); a response is
    correct iff its reward is 1 unless `correct` says otherwise."""

    def __init__(self, script=lambda i: [[0, 0], [1, 1], [0, 1]][i % 3], as_dict=False, correct=None):
        self.next_id, self.asked, self.script, self.as_dict = 0, [], script, as_dict
        self.correct = correct or (lambda i: [r == 1 for r in self.script(i)])

    def next_prompts(self, n):
        self.asked.append(n)
        self.next_id += n
        return list(range(self.next_id - n, self.next_id))

    def sample_and_score(self, prompts):
        return [{"id": i, "rewards": self.script(i), "correct": self.correct(i)} if self.as_dict else
                SimpleNamespace(id=i, rewards=self.script(i), correct=self.correct(i)) for i in prompts]


def test_dynamic_sampling_keeps_only_mixed_groups_and_counts():
    s = Scripted()
    groups, stats = collect_groups(s.next_prompts, s.sample_and_score, n_groups=4, max_rounds=10)
    assert [g.id for g in groups] == [2, 5, 8, 11]
    assert s.asked == [4, 3, 2, 1, 1, 1]  # by hand: each round asks for the groups still missing
    assert stats == {"rounds": 6, "sampled": 12, "kept": 4, "dropped": 8, "all_correct": 4, "none_correct": 4,
                     "dropped_fraction": 8 / 12, "mean_reward": 12 / 24, "pass_rate": 12 / 24}


def test_dynamic_sampling_stops_at_the_cap_and_warns_once():
    s = Scripted(lambda i: [1.0, 1.0, 1.0], as_dict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(2):
            groups, stats = collect_groups(s.next_prompts, s.sample_and_score, 4, max_rounds=2, oversample=1.5)
    assert groups == [] and stats["rounds"] == 3 and stats["sampled"] == 4 + 6 + 6 and stats["dropped_fraction"] == 1
    assert s.asked == [4, 6, 6] * 2
    assert len([w for w in caught if "dynamic sampling" in str(w.message)]) == 1


def test_dynamic_sampling_truncates_and_follows_the_slowest_rank():
    s = Scripted(lambda i: [0, 1])
    reports = iter([0, 0])  # the other rank: nothing kept before round 1, nor after it
    groups, stats = collect_groups(s.next_prompts, s.sample_and_score, 3, 5,
                                   min_over_ranks=lambda k: min(k, next(reports, k)))
    assert [g.id for g in groups] == [0, 1, 2] and s.asked == [3, 3] and stats["kept"] == 3 and stats["sampled"] == 6


# ----------------------------------------------------------------------------- state and ranks
def run(cur, steps, pass_rates, log, probe=False):
    for _ in range(steps):
        if probe:  # Algorithm 1: fresh-rollout rates that depend on the block number and the level only
            log.append(cur.begin_step(lambda level: (0.9, 0.5, 0.75, 0.8)[(cur.state["blocks"] + level) % 4]))
        step = cur.state["step_in_level"], cur.level_index, cur.state["epochs"][cur.level_index]
        log.append([p.id for p in cur.next_prompts(3)] + [p.id for p in cur.next_prompts(1)])  # a re-sample round
        log.append(cur.end_step(pass_rates(len(log))))
        log.append(step)


@pytest.mark.parametrize("schedule, probe", [("hgrpo1", False), ("adaptive", False), ("adaptive", True)])
def test_resume_continues_the_exact_sequence_across_epoch_and_level_boundaries(schedule, probe):
    problems = [p for level in range(1, 6) for p in P.arithmetic_problems(level, 5, 0)]

    def fresh():
        levels = C.make_schedule(schedule, 12, 64, 2, 4)
        return Curriculum(problems, levels, schedule, seed=5, p_min=1, p_max=2, verbose=False)
    rates = lambda n: 0.9 if n % 4 else 0.1
    reference, steps = [], 16
    run(fresh(), steps, rates, reference, probe)
    entries = 4 if probe else 3
    assert any(epoch > 0 for _, _, epoch in reference[entries - 1::entries])  # pools of 5-15 problems wrap epochs
    levels = [level for _, level, _ in reference[entries - 1::entries]]
    assert len(set(levels)) >= 2  # and the level changes
    if probe:
        assert any(b < a for a, b in zip(levels, levels[1:]))  # down as well as up
    for cut in range(steps + 1):
        log, cur = [], fresh()
        run(cur, cut, rates, log, probe)
        saved = json.loads(json.dumps(cur.state_dict()))
        resumed = fresh()
        resumed.load_state_dict(saved)
        run(resumed, steps - cut, rates, log, probe)
        assert log == reference, cut
    other = Curriculum(problems, C.make_schedule(schedule, 12, 64, 2, 4), schedule, seed=6, verbose=False)
    with pytest.raises(ValueError, match="seed was 5, now 6"):
        other.load_state_dict(saved)


def test_two_ranks_see_disjoint_prompts_whose_union_is_the_single_process_batch():
    problems = [p for level in range(1, 6) for p in P.arithmetic_problems(level, 12, 0)]
    levels = C.make_schedule("hgrpo1", 12, 64, 2, 6)
    single, ranks = Curriculum(problems, levels, "hgrpo1", 1), [Curriculum(problems, levels, "hgrpo1", 1, r, 2)
                                                               for r in range(2)]
    for step in range(12):
        both = [c.next_prompts(3) for c in ranks]
        assert not {p.id for p in both[0]} & {p.id for p in both[1]}
        assert both[0] + both[1] == single.next_prompts(6)
        assert {c.end_step(0.5) for c in ranks} == {single.end_step(0.5)}
    assert single.level_index == 3


# ----------------------------------------------------------------------------- dynamic sampling on correctness
def test_dynamic_sampling_keeps_groups_by_correctness_not_by_reward_spread():
    # all correct, differing only by the overlong penalty: the papers drop it (reward spread would keep it)
    rewards = {0: [1, 1, 1, 0.99], 1: [1, 0.99, 0, 0], 2: [0, 0, -0.5, 0], 3: [0.5, 0.5, 0.5, 0.5]}
    correct = {0: [True] * 4, 1: [True, True, False, False], 2: [False] * 4, 3: [True, False, False, False]}
    s = Scripted(lambda i: rewards[i % 4], correct=lambda i: correct[i % 4])
    groups, _ = collect_groups(s.next_prompts, s.sample_and_score, 2, max_rounds=5)
    assert [g.id for g in groups] == [1, 3]  # equal rewards but one correct answer (3) is kept too
    s, sampled = Scripted(lambda i: rewards[i % 4], correct=lambda i: correct[i % 4]), []
    groups, stats = collect_groups(s.next_prompts, s.sample_and_score, 2, max_rounds=5, sampled_groups=sampled)
    assert [g.id for g in sampled] == [0, 1, 2, 3] and s.asked == [2, 1, 1]  # 1 kept, then 0, then 1
    assert stats["all_correct"] == 1 and stats["none_correct"] == 1 and stats["pass_rate"] == (4 + 2 + 0 + 1) / 16
    results = [SimpleNamespace(correct=c) for c in (True, True)]  # train.py's groups: correctness from results
    assert group_correct({"results": results, "rewards": [1, 0.99]}) == [True, True]
    with pytest.raises(ValueError, match="needs `correct`"):
        group_correct({"rewards": [1, 0]})


# ----------------------------------------------------------------------------- per-level overlong buffer
def test_each_level_has_its_own_overlong_buffer(tmp_path, capsys):
    deep = C.make_schedule("deepscaler", 100, 24576, 8, 4)
    assert [(lv.max_len, lv.overlong_buffer) for lv in deep] == [(8192, 2048), (16384, 4096), (24576, 6144)]
    assert [r["overlong_buffer"] for r in show_table(capsys, "deepscaler", "--max-len", "24576")] == [2048, 4096, 6144]
    tiny = C.make_schedule("hgrpo1", 16, 32, 8, 2)  # every level clamped to 32 tokens: a quarter of 32, never M/4
    assert [lv.overlong_buffer for lv in tiny] == [8] * 4
    # a level shorter than a quarter of M: today's global buffer (M // 4 = 256) exceeds it
    short = C.make_schedule("none", 4, 1024, 8, 2, overrides=write(tmp_path / "s.json", json.dumps(
        {"L1": {"max_len": 200}})))
    assert short[0].overlong_buffer == 50 and C.overlong_buffer_for(short[0], -1) == 50
    assert C.overlong_buffer_for(short[0], 0) == 0 and C.overlong_buffer_for(short[0], 30) == 30
    with pytest.raises(ValueError, match="--overlong-buffer 256 .* level L1's max length 200"):
        C.overlong_buffer_for(short[0], 256)
    own = C.make_schedule("hgrpo1", 16, 1000, 8, 2, overrides=write(tmp_path / "o.json", json.dumps(
        {"L2": {"overlong_buffer": 100}})))
    assert [lv.overlong_buffer for lv in own] == [125, 100, 250, 187]  # 500 // 4, set, 1000 // 4, 750 // 4
    with pytest.raises(ValueError, match="level L1 is invalid.*0 <= overlong_buffer < max_len"):
        C.make_schedule("none", 4, 64, 8, 2, overrides=write(tmp_path / "b.json", json.dumps(
            {"L1": {"overlong_buffer": 64}})))


# ----------------------------------------------------------------------------- Algorithm 1 with fresh-rollout checks
class Probe:
    """evaluate(level) from a script of rates per (block number, level); records every call."""

    def __init__(self, cur, rates):
        self.cur, self.rates, self.calls = cur, rates, []

    def __call__(self, level):
        self.calls.append((self.cur.state["blocks"], level))
        return self.rates(self.cur.state["blocks"], level)


def drive(cur, evaluate, steps):
    """Run `steps` steps; -> the level trained at each step."""
    trained = []
    for _ in range(steps):
        cur.begin_step(evaluate)
        trained.append(cur.level_index)
        cur.next_prompts(1)
        cur.end_step(0.0)  # the training step's rate plays no part once begin_step decides
    return trained


def test_algorithm_1_commits_blocks_up_keeps_the_lower_level_and_goes_back(tmp_path):
    blocks = write(tmp_path / "p.json", json.dumps({"L1": {"p_min": 2, "p_max": 2}, "L2": {"p_min": 3, "p_max": 3},
                                                    "L3": {"p_min": 1, "p_max": 1}}))
    cur = adaptive(overrides=blocks, p_min=None, p_max=None)
    # block 0: L1 at 0.5 -> keep L1; block 1: L1 at 0.9 -> L2; block 2: L1 at 0.8 (still fine), L2 at 0.2 -> keep
    # L2; block 3: L1 at 0.6 (slipped) -> back to L1; block 4: L1 at 0.75 -> L2 again
    script = {(0, 0): 0.5, (1, 0): 0.9, (2, 0): 0.8, (2, 1): 0.2, (3, 0): 0.6, (4, 0): 0.75, (5, 0): 0.9,
              (5, 1): 0.71}
    probe = Probe(cur, lambda block, level: script.get((block, level)))
    assert drive(cur, probe, 2 + 3 + 3 + 2 + 3 + 1) == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 2]
    assert probe.calls == [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0), (4, 0), (5, 0), (5, 1)]
    assert cur.state["blocks"] == 6 and cur.level_index == 2


def test_algorithm_1_unknown_rates_never_move_and_the_cap_still_holds(tmp_path):
    cur = adaptive(p_min=2, p_max=2)
    assert drive(cur, lambda level: None, 6) == [0] * 6
    capped = adaptive(overrides=write(tmp_path / "cap.json", json.dumps({"L1": {"steps": 3}})), p_min=5, p_max=5)
    # the cap ends the block; L1 failing its check cannot bring the run back to a level whose cap is spent
    probe = Probe(capped, lambda block, level: 0.0)
    assert drive(capped, probe, 5) == [0, 0, 0, 1, 1] and probe.calls == [(0, 0), (1, 1)]


def test_algorithm_1_block_lengths_are_seeded_per_block_and_drawn_from_the_levels_range():
    def lengths(seed):
        cur = adaptive(seed, p_min=2, p_max=6)
        drive(cur, lambda level: 0.0, 60)
        return cur.state["blocks"]
    assert [lengths(s) for s in range(20)] == [lengths(s) for s in range(20)]
    cur = adaptive(3, p_min=2, p_max=6)
    starts = [step for step in range(80) if (cur.begin_step(lambda level: 0.0) or True) and cur.state["block_left"]
              and not cur.end_step() and cur.state["block_left"] == 0]
    gaps = {b - a for a, b in zip([-1] + starts, starts)}
    assert gaps == {2, 3, 4, 5, 6}


def test_probe_prompts_are_fresh_seeded_and_leave_the_training_order_alone():
    cur, twin = adaptive(per_level=10), adaptive(per_level=10)
    probe = [p.id for p in cur.probe_prompts(1, 4)]
    assert probe == [p.id for p in twin.probe_prompts(1, 4)] and all(i.startswith("arith-2-") for i in probe)
    assert [p.id for p in cur.next_prompts(3)] == [p.id for p in twin.next_prompts(3)]  # untouched by the probe
    assert len(cur.probe_prompts(0, 25)) == 25  # a pool of 10 repeats to fill the probe
    ranks = [Curriculum(cur.problems, cur.levels, "adaptive", 0, r, 2, verbose=False) for r in range(2)]
    assert [p.id for r in ranks for p in r.probe_prompts(2, 3)] == [p.id for p in cur.probe_prompts(2, 6)]


# ----------------------------------------------------------------------------- HICRA's context rule
def test_context_rule_raises_once_above_the_threshold_and_survives_a_resume():
    assert not C.context_should_raise(20, 100, 0.2) and C.context_should_raise(21, 100, 0.2)
    assert not C.context_should_raise(0, 0, 0.2)
    assert C.raised_length(16384, 4096, C.ContextRule(2.0, 32768)) == (32768, 8192)  # HICRA's 16K -> 32K
    assert C.raised_length(8192, 2048, C.ContextRule(2.0, 12000)) == (12000, 3000)  # the cap
    assert C.raised_length(40000, 100, C.ContextRule(2.0, 32768)) == (40000, 100)  # never lowered
    problems = [p for level in range(1, 6) for p in P.arithmetic_problems(level, 4, 0)]
    cur = Curriculum(problems, C.make_schedule("deepscaler", 10, 3000, 2, 2), "deepscaler", 0,
                     context=C.ContextRule(factor=2.0, cap=5000), verbose=False)
    assert cur.length_budget() == (1000, 250)
    cur.end_step()
    assert not cur.observe_truncation(2, 10) and cur.length_budget() == (1000, 250)  # 20% is not above 20%
    cur.end_step()
    assert cur.observe_truncation(3, 10) and cur.length_budget() == (2000, 500)
    assert not cur.observe_truncation(10, 10) and cur.state["context_raised_at"] == 2  # once
    saved = json.loads(json.dumps(cur.state_dict()))
    resumed = Curriculum(problems, C.make_schedule("deepscaler", 10, 3000, 2, 2), "deepscaler", 0,
                         context=C.ContextRule(factor=2.0, cap=5000), verbose=False)
    resumed.load_state_dict(saved)
    assert resumed.length_budget() == (2000, 500)
    for _ in range(3):
        resumed.end_step()
    assert resumed.level_index == 1 and resumed.length_budget() == (4000, 1000)  # L2 (2000) doubled
    for _ in range(3):
        resumed.end_step()
    assert resumed.length_budget() == (5000, 1250)  # L3: 3000 * 2 capped at 5000
    assert C.overlong_buffer_for(resumed.level, -1, 5000) == 1250
    with pytest.raises(ValueError, match="factor > 1"):
        C.ContextRule(factor=1.0)


# ----------------------------------------------------------------------------- one-line errors
def test_curriculum_errors_say_what_to_do(tmp_path):
    gsm8k = P.load_problems("gsm8k_train", verbose=False)
    with pytest.raises(ValueError, match=r"all 7473 problems \(gsm8k_train\) have difficulty 0.1: use --curriculum "
                                         r"none or deepscaler"):
        C.make_curriculum(gsm8k, "adaptive", 10, 64, 2, 2, seed=0)
    problems = [p for level in range(1, 6) for p in P.arithmetic_problems(level, 4, 0)]
    path = write(tmp_path / "o.json", json.dumps({"L2": {"difficulty": [0.3, 0.4]}}))
    with pytest.raises(ValueError, match=r"level L2: no problem has a difficulty in \[0.3, 0.4\].*levels as set by "
                                         + re.escape(path)):
        C.make_curriculum(problems, "hgrpo1", 10, 64, 2, 2, seed=0, overrides=path)
    cur = C.make_curriculum(problems, "hgrpo1", 10, 64, 2, 2, seed=5, verbose=False)
    other = C.make_curriculum(problems, "hgrpo1", 10, 64, 2, 2, seed=6, verbose=False)
    with pytest.raises(ValueError, match="seed was 5, now 6 \\(resume with --seed 5"):
        other.load_state_dict(cur.state_dict())


def test_a_checkpoint_from_before_per_level_positions_resumes():
    cur = adaptive()
    old = {"level": 1, "step_in_level": 2, "epoch": 1, "position": 3, "decisions": 0, "decide_at": 3,
           "schedule": "adaptive", "seed": 0, "levels": ["L1", "L2", "L3", "L4"], "pool_sizes": [10, 10, 10, 20]}
    cur.load_state_dict(old)
    assert cur.state["epochs"] == [0, 1, 0, 0] and cur.state["positions"] == [0, 3, 0, 0] and cur.state["blocks"] == 0
    assert cur.state["level_steps"] == [0, 2, 0, 0]
    order = random.Random("0-1-1").sample(cur.pools[1], 10)
    assert [p.id for p in cur.next_prompts(2)] == [cur.problems[i].id for i in order[3:5]]
