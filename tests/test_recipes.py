"""recipes.py: the moved presets keep their values, the papers' recipes say what the papers say (values written
out here from the papers' text), every recipe names TrainConfig fields and has its notes, the eval protocol."""
import dataclasses

import pytest

import recipes as R

# TrainConfig fields the recipes set that train.py does not define yet (the wiring adds them)
PENDING_FIELDS = {"context_factor", "context_cap", "context_threshold"}


def test_train_resolves_through_the_recipes(tmp_path):
    """train.resolve fills what the command line leaves unset from the recipe, then the hardware preset: the
    recipes' temperature / entropy / advantage fields are not shadowed by TrainConfig defaults."""
    import train
    hgrpo = train.resolve(train.TrainConfig(algo="hgrpo", preset="cpu", out_dir=str(tmp_path)))
    assert (hgrpo.temperature, hgrpo.group_size, hgrpo.adv_scale, hgrpo.entropy_coef) == (0.6, 16, "group", 0.0)
    entropy = train.resolve(train.TrainConfig(algo="entropy-reg", preset="cpu", out_dir=str(tmp_path)))
    assert entropy.entropy_coef == 0.001 and entropy.adv_scale == "none" and entropy.temperature == 1.0
    assert train.resolve(train.TrainConfig(algo="hgrpo", preset="cpu", temperature=0.9, out_dir="x")).temperature == 0.9
    gpu, cpu = (train.resolve(train.TrainConfig(preset=p, out_dir=str(tmp_path))) for p in ("gpu", "cpu"))
    assert gpu.activation_checkpointing and not cpu.activation_checkpointing  # 32K-token micro-batches need it
    assert (cpu.lr, cpu.group_size, cpu.max_new_tokens, cpu.data) == (2e-5, 8, 32, "arith")


def test_the_papers_recipes():
    baseline = R.ALGORITHMS["grpo-clip-higher"]  # HICRA's baseline: clip-higher, A = R - mean(R), no DAPO extras
    assert (baseline["eps_low"], baseline["eps_high"], baseline["adv_scale"]) == (0.2, 0.28, "none")
    assert not baseline["dynamic_sampling"] and baseline["overlong_buffer"] == 0 and baseline["hicra_alpha"] == 0
    hicra = R.ALGORITHMS["hicra-paper"]
    assert {k: v for k, v in hicra.items() if baseline.get(k) != v} == dict(
        hicra_alpha=0.2, context_factor=2.0, context_cap=32768, context_threshold=0.2)  # 16K -> 32K at 20%
    assert {k: v for k, v in R.ALGORITHMS["hicra-llama"].items() if hicra.get(k) != v} == {"dynamic_sampling": True}
    entropy = R.ALGORITHMS["entropy-reg"]
    assert {k: v for k, v in entropy.items() if baseline.get(k) != v} == {"entropy_coef": 0.001}
    hgrpo = R.ALGORITHMS["hgrpo"]  # GRPO+ = DAPO, temperature 0.6, 16 samples, per-level length reward
    assert {k: hgrpo[k] for k in ("temperature", "group_size", "overlong_buffer", "dynamic_sampling", "agg")} == dict(
        temperature=0.6, group_size=16, overlong_buffer=-1, dynamic_sampling=True, agg="token-mean")
    assert "eps_low" not in hgrpo  # the level's clip-higher bounds


def test_every_recipe_names_train_config_fields_and_has_notes():
    train = pytest.importorskip("train")
    fields = {f.name for f in dataclasses.fields(train.TrainConfig)} | PENDING_FIELDS
    for name, values in {**R.ALGORITHMS, **R.PRESETS}.items():
        assert set(values) <= fields, (name, set(values) - fields)
    assert set(R.NOTES) == set(R.ALGORITHMS) and all(len(note) > 40 for note in R.NOTES.values())


def test_eval_protocol_and_the_command_line(capsys):
    assert [R.paper_k(b) for b in ("aime24", "aime25", "amc23", "math500", "minerva", "gsm8k")] == [32, 32, 4, 16, 16, 16]
    assert (R.EVAL_PROTOCOL["temperature"], R.EVAL_PROTOCOL["top_p"]) == (0.6, 1.0)
    R.main(["hicra-llama"])
    out = capsys.readouterr().out
    assert out.startswith("hicra-llama: agg=token-mean") and "Llama-3.1" in out
    R.main([])
    printed = capsys.readouterr().out
    assert all(printed.count(f"\n{name}: ") + printed.startswith(f"{name}: ") == 1 for name in R.ALGORITHMS)
    with pytest.raises(SystemExit, match="recipe 'nope' unknown"):
        R.main(["nope"])


def test_word_problems_get_the_cpu_presets_64_tokens_unless_given():
    train = pytest.importorskip("train")
    resolved = {data: train.resolve(train.TrainConfig(data=data, preset="cpu")).max_new_tokens
                for data in ("words", "words3", "arith", "arith2", "words,arith", "math500")}
    assert resolved == {"words": 64, "words3": 64, "arith": 32, "arith2": 32, "words,arith": 32, "math500": 32}
    assert train.resolve(train.TrainConfig(data="words", preset="cpu", max_new_tokens=48)).max_new_tokens == 48
    assert train.resolve(train.TrainConfig(data="words", preset="gpu")).max_new_tokens == 8192
    assert train.resolve(train.TrainConfig(preset="cpu")).max_new_tokens == 32  # the default data is arith
