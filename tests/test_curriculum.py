"""curriculum.py: schedules, adaptive rule, dynamic sampling, resume and rank sharding. Every expected value
is written out by hand or recomputed here independently (steps by arithmetic)."""
import json
import re
import warnings
from types import SimpleNamespace

import pytest

import curriculum as C  # tests/conftest.py puts the repository root on sys.path
import problems as P
from curriculum import Curriculum
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
        m = re.fullmatch(r"\s*(L\d) +\[([\d.]+), ([\d.]+)\] +(\d+) +(\d+) +([\d.]+) +([\d.]+) +(\d+) +(\d+) +(\d+) +(\d+) +([\d.]+)", line)
        assert m, line
        g = m.groups()
        rows.append(dict(name=g[0], lo=float(g[1]), hi=float(g[2]), problems=int(g[3]), max_len=int(g[4]),
                         steps=int(g[9]), mid=(float(g[1]) + float(g[2])) / 2))
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
    for table, message in [({"L9": {}}, "'L9' must be one of"), ({"L1": {"colour": 1}}, "colour = 1 is not a value"),
                           ({"L1": {"max_len": "8k"}}, "max_len = '8k' is not a value"),
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
    with pytest.raises(ValueError, match=r"level L2: no problem has a difficulty in \[0.35, 0.65\]"):
        Curriculum(easy, C.make_schedule("hgrpo1", 8, 32, 2, 2), "hgrpo1", seed=0)
    mixed = easy + [Problem("u", "p", "1", None, "s")]
    cur = Curriculum(mixed, C.make_schedule("adaptive", 8, 32, 2, 2), "adaptive", 0)
    assert "1 of 4 problems have no difficulty" in capsys.readouterr().out
    assert cur.pools == [[0, 1, 2, 3], [3], [3], [3]]


# ----------------------------------------------------------------------------- dynamic sampling
class Scripted:
    """Prompt i's group: rewards all 0 (i % 3 == 0), all 1 (i % 3 == 1) or mixed (i % 3 == 2)."""

    def __init__(self, script=lambda i: [[0, 0], [1, 1], [0, 1]][i % 3], as_dict=False):
        self.next_id, self.asked, self.script, self.as_dict = 0, [], script, as_dict

    def next_prompts(self, n):
        self.asked.append(n)
        self.next_id += n
        return list(range(self.next_id - n, self.next_id))

    def sample_and_score(self, prompts):
        return [{"id": i, "rewards": self.script(i)} if self.as_dict else SimpleNamespace(id=i, rewards=self.script(i))
                for i in prompts]


def test_dynamic_sampling_keeps_only_mixed_groups_and_counts():
    s = Scripted()
    groups, stats = C.collect_groups(s.next_prompts, s.sample_and_score, n_groups=4, max_rounds=10)
    assert [g.id for g in groups] == [2, 5, 8, 11]
    assert s.asked == [4, 3, 2, 1, 1, 1]  # by hand: each round asks for the groups still missing
    assert stats == {"rounds": 6, "sampled": 12, "kept": 4, "dropped": 8, "dropped_fraction": 8 / 12,
                     "mean_reward": 12 / 24}


def test_dynamic_sampling_stops_at_the_cap_and_warns_once():
    s = Scripted(lambda i: [1.0, 1.0, 1.0], as_dict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(2):
            groups, stats = C.collect_groups(s.next_prompts, s.sample_and_score, 4, max_rounds=2, oversample=1.5)
    assert groups == [] and stats["rounds"] == 3 and stats["sampled"] == 4 + 6 + 6 and stats["dropped_fraction"] == 1
    assert s.asked == [4, 6, 6] * 2
    assert len([w for w in caught if "dynamic sampling" in str(w.message)]) == 1


def test_dynamic_sampling_truncates_and_follows_the_slowest_rank():
    s = Scripted(lambda i: [0, 1])
    reports = iter([0, 0])  # the other rank: nothing kept before round 1, nor after it
    groups, stats = C.collect_groups(s.next_prompts, s.sample_and_score, 3, 5,
                                     min_over_ranks=lambda k: min(k, next(reports, k)))
    assert [g.id for g in groups] == [0, 1, 2] and s.asked == [3, 3] and stats["kept"] == 3 and stats["sampled"] == 6


# ----------------------------------------------------------------------------- state and ranks
def run(cur, steps, pass_rates, log):
    for _ in range(steps):
        step = cur.state["step_in_level"], cur.level_index, cur.state["epoch"]
        log.append([p.id for p in cur.next_prompts(3)] + [p.id for p in cur.next_prompts(1)])  # a re-sample round
        log.append(cur.end_step(pass_rates(len(log))))
        log.append(step)


@pytest.mark.parametrize("schedule", ["hgrpo1", "adaptive"])
def test_resume_continues_the_exact_sequence_across_epoch_and_level_boundaries(schedule):
    problems = [p for level in range(1, 6) for p in P.arithmetic_problems(level, 5, 0)]

    def fresh():
        levels = C.make_schedule(schedule, 12, 64, 2, 4)
        return Curriculum(problems, levels, schedule, seed=5, p_min=1, p_max=2, verbose=False)
    rates = lambda n: 0.9 if n % 4 else 0.1
    reference = []
    run(fresh(), 12, rates, reference)
    assert any(epoch > 0 for _, _, epoch in reference[2::3])  # pools of 5-15 problems wrap their epochs
    assert sum(reference[1::3]) >= 2  # and the level changes
    for cut in range(13):
        log, cur = [], fresh()
        run(cur, cut, rates, log)
        saved = json.loads(json.dumps(cur.state_dict()))
        resumed = fresh()
        resumed.load_state_dict(saved)
        run(resumed, 12 - cut, rates, log)
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
