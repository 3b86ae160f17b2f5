"""train.py end to end: metrics, checkpoints that transformers loads, exact resume, FSDP2 == one process, signals."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import model as M
import train
import update
from conftest import ROOT

EVERY_METRIC = ["reward", "accuracy", "boxed_rate", "response_len", "response_len_max", "truncated_frac",
                "entropy", "clip_frac_low", "clip_frac_high", "approx_kl", "grad_norm", "zero_variance_frac",
                "planning_token_ratio", "semantic_entropy", "planning_entropy", "execution_entropy", "planning_ppl",
                "execution_ppl", "logprob_gap", "rollout_tok_s", "train_tok_s", "level", "skipped_updates",
                "conditional_entropy", "planning_high_entropy_frac", "high_entropy_planning_frac", "truncated_sampled",
                "execution_rel_ppl"]  # planning_rel_ppl too once a response has a planning token
PAPER_METRICS = ["pass_at_8", "probe_L1"]  # with G >= 8; the adaptive curriculum's fresh-rollout checks


def run_train(out_dir, model, *extra):
    args = ["--model", model, "--out-dir", str(out_dir), "--data", "arith", "--preset", "cpu", "--prompts-per-step", "2",
            "--group-size", "4", "--max-new-tokens", "12", "--save-every", "1", "--keep-checkpoints", "3", *extra]
    train.main(args)
    return [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]


def test_end_to_end_tiny_model(tmp_path, tiny_chat_model):
    from transformers import AutoModelForCausalLM
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "2", "--curriculum", "none", "--eval-every", "2",
                     "--no-dynamic-sampling",  # a random model never gets a reward: keep its zero-variance groups
                     "--eval-limit", "2")
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in EVERY_METRIC:
        assert key in steps[-1], key
    assert any("val_pass@1" in r for r in rows)
    latest = os.path.join(tmp_path, "checkpoints", "step_000002")
    assert os.path.isdir(latest) and os.path.exists(os.path.join(tmp_path, "dynamics.png"))
    hf = AutoModelForCausalLM.from_pretrained(os.path.join(latest, "policy"), dtype=torch.float32)
    ours, tok = M.load_model(os.path.join(latest, "policy"))
    assert tok is not None
    ids = torch.arange(5, 25)
    with torch.no_grad():
        assert (hf(ids[None]).logits[0] - ours(ids, torch.arange(20), M.AttnMeta.packed([20], "cpu"))).abs().max() < 1e-4
    rollouts = [json.loads(line) for line in open(os.path.join(tmp_path, "rollouts.jsonl"))]
    assert rollouts and {"prompt", "response", "reward", "correct", "planning_spans"} <= set(rollouts[0])


def test_resume_is_exact(tmp_path, default_model_path):
    """4 steps in one go == 2 steps, stop, resume, 2 more: same weights and same step-4 metrics."""
    common = ["--total-steps", "4", "--curriculum", "none", "--max-new-tokens", "16", "--no-dynamic-sampling"]
    straight = run_train(tmp_path / "a", default_model_path, *common)
    run_train(tmp_path / "b", default_model_path, *common, "--stop-after", "2")
    resumed = run_train(tmp_path / "b", default_model_path, *common, "--resume", "auto")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert straight[-1]["grad_norm"] > 0  # the steps did update the model
    for key in ("reward", "accuracy", "response_len", "clip_frac_high", "approx_kl", "grad_norm", "entropy"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-5, abs=1e-7), key
    a = M.read_state_dict(os.path.join(tmp_path, "a", "checkpoints", "step_000004", "policy"))
    b = M.read_state_dict(os.path.join(tmp_path, "b", "checkpoints", "step_000004", "policy"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_fsdp_two_ranks_match_one_process(tmp_path, tiny_checkpoint):
    folder = tiny_checkpoint("qwen2")
    script = os.path.join(ROOT, "tests", "fsdp_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, script, folder, str(tmp_path / "one.pt")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    fsdp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                           script, folder, str(tmp_path / "two.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert abs(one["loss"] - two["loss"]) < 1e-5 and one["loss"] != 0.0
    initial = M.read_state_dict(folder)
    moved = 0.0
    for name, value in one["state"].items():
        assert (value - two["state"][name]).abs().max().item() < 1e-5, name
        moved = max(moved, (value - initial.get(name, value)).abs().max().item())
    assert moved > 1e-4  # the update did something


def test_sigterm_checkpoint_and_corrupt_latest(tmp_path, tiny_chat_model):
    out = tmp_path / "run"
    base = [sys.executable, os.path.join(ROOT, "train.py"), "--model", tiny_chat_model, "--out-dir", str(out),
            "--data", "arith", "--preset", "cpu", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6",
            "--curriculum", "none", "--save-every", "1", "--keep-checkpoints", "3"]
    proc = subprocess.Popen(base + ["--total-steps", "200"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(train_checkpoints(out)) < 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output[-2000:]
    assert "checkpoint saved" in output
    saved = train_checkpoints(out)
    assert len(saved) >= 2
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(os.path.join(saved[0], "policy"))
    weights = os.path.join(saved[0], "policy", "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 3])  # a crash mid-copy, or a disk problem
    step = json.load(open(os.path.join(saved[1], "trainer_state.json")))["step"]
    resumed = subprocess.run(base + ["--total-steps", "200", "--stop-after", "1", "--resume", "auto"],
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{saved[0]} is not usable" in resumed.stdout and "truncated" in resumed.stdout
    assert f"resumed from {saved[1]} (step {step})" in resumed.stdout


def train_checkpoints(out):
    root = os.path.join(out, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted((os.path.join(root, n) for n in os.listdir(root) if not n.endswith(".tmp")), reverse=True)


def test_shared_prompt_packing_equals_separate_sequences(tiny_checkpoint):
    """A prompt forwarded once for its G responses (shared-prefix mask) gives each response the logprobs,
    entropies and gradients of its own full sequence, checked against plain full-logit forwards."""
    import torch.nn.functional as F
    policy, _ = M.load_model(tiny_checkpoint("qwen3"), tokenizer=False)
    prompt, responses, T = [5, 6, 7, 8, 9], [[10, 11, 12], [13], [14, 15]], 0.8
    logp, ent, mask = update.policy_logprobs(policy, [(prompt, responses), ([20, 21], [[22, 23]])], T, "cpu")
    grads = torch.autograd.grad((logp * mask).sum() + 0.1 * (ent * mask).sum(), list(policy.parameters()))
    ref_logp, ref_ent, ref_loss = [], [], 0.0
    for p, r in [(prompt, r) for r in responses] + [([20, 21], [22, 23])]:
        full = torch.tensor(p + r)
        logits = policy(full, torch.arange(len(full)), M.AttnMeta.packed([len(full)], "cpu"))[len(p) - 1:-1] / T
        all_logp = F.log_softmax(logits, -1)
        lp, en = all_logp[torch.arange(len(r)), torch.tensor(r)], -(all_logp.exp() * all_logp).sum(-1)
        ref_logp.append(lp)
        ref_ent.append(en)
        ref_loss = ref_loss + lp.sum() + 0.1 * en.sum()
    ref_grads = torch.autograd.grad(ref_loss, list(policy.parameters()))
    for b, (lp, en) in enumerate(zip(ref_logp, ref_ent)):
        assert mask[b].sum() == len(lp)
        assert torch.allclose(logp[b, :len(lp)], lp, atol=1e-5) and torch.allclose(ent[b, :len(en)], en, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)


def test_step_with_no_trainable_group_logs_no_means(tmp_path, tiny_chat_model):
    """A random model never earns a reward, so dynamic sampling keeps no group: the step must say so (no reward,
    accuracy or boxed rate averaged over zero responses, which would read as 0.0) and the run goes on."""
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "1", "--curriculum", "none", "--max-sampling-rounds", "0")
    step = [r for r in rows if r.get("step") == 1][-1]
    assert step["zero_variance_frac"] == 1.0 and step["pass_rate"] == 0.0
    for key in ("reward", "accuracy", "boxed_rate", "response_len", "train_tok_s"):
        assert key not in step, key


# ----------------------------------------------------------------------------- nothing lost, nothing silently wrong

TINY_RUN = ["--data", "arith", "--preset", "cpu", "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "12",
            "--curriculum", "none", "--no-dynamic-sampling"]


def main_error(capsys, *argv):
    """train.main's one-line error (SystemExit with a message), and what it printed."""
    with pytest.raises(SystemExit) as e:
        train.main(list(argv))
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    return e.value.code, capsys.readouterr().out


def snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def test_a_new_run_never_writes_into_a_used_run_folder(tmp_path, tiny_chat_model, capsys):
    """Issue repro 1: a second run (other seed, no --resume) into a finished run's folder is refused and changes
    nothing; --overwrite replaces the old run; the final line names this run's checkpoint."""
    run_train(tmp_path, tiny_chat_model, "--total-steps", "3", "--curriculum", "none", "--no-dynamic-sampling")
    before = snapshot(tmp_path)
    message, _ = main_error(capsys, "--model", tiny_chat_model, "--out-dir", str(tmp_path), *TINY_RUN,
                            "--total-steps", "2", "--save-every", "1", "--seed", "7")
    assert "already holds a run (3 rows in metrics.jsonl, 3 checkpoints" in message
    assert "--resume auto" in message and "--overwrite" in message
    assert snapshot(tmp_path) == before
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "2", "--curriculum", "none", "--no-dynamic-sampling",
                     "--seed", "7", "--overwrite")
    assert [r["step"] for r in rows] == [1, 2]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_000001", "step_000002"]
    assert json.load(open(tmp_path / "config.json"))["seed"] == 7
    assert f"checkpoint: {tmp_path / 'checkpoints' / 'step_000002'}" in capsys.readouterr().out


def test_resume_auto_with_every_checkpoint_corrupt_refuses_to_start_over(tmp_path, tiny_chat_model, capsys):
    run_train(tmp_path, tiny_chat_model, "--total-steps", "2", "--curriculum", "none", "--no-dynamic-sampling")
    for name in ("step_000001", "step_000002"):
        weights = tmp_path / "checkpoints" / name / "policy" / "model.safetensors"
        with open(weights, "r+b") as f:
            f.seek(os.path.getsize(weights) // 2)
            f.write(b"\xff" * 1024)
    message, out = main_error(capsys, "--model", tiny_chat_model, "--out-dir", str(tmp_path), *TINY_RUN,
                              "--total-steps", "3", "--save-every", "1", "--keep-checkpoints", "3", "--resume", "auto")
    assert out.count("is not usable: policy/model.safetensors does not match its checksum") == 2
    assert "no usable checkpoint" in message and "holds a run (2 rows in metrics.jsonl" in message
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == 2


def test_keep_checkpoints_one_keeps_the_final_model(tmp_path, tiny_chat_model, capsys):
    """Issue repro 2: --keep-checkpoints 0 is refused; 1 keeps the last checkpoint."""
    message, _ = main_error(capsys, "--model", tiny_chat_model, "--out-dir", str(tmp_path / "k0"), *TINY_RUN,
                            "--total-steps", "1", "--keep-checkpoints", "0")
    assert "--keep-checkpoints 0: must be a whole number >= 1" in message
    run_train(tmp_path / "k1", tiny_chat_model, "--total-steps", "2", "--keep-checkpoints", "1", "--curriculum", "none",
              "--no-dynamic-sampling")
    assert os.listdir(tmp_path / "k1" / "checkpoints") == ["step_000002"]


BAD_FLAGS = [("--lr=-1e-3", "--lr -0.001: must be a number > 0"),
             ("--eps-low=1.5", "--eps-low 1.5: must be in [0, 1)"),
             ("--top-p=0", "--top-p 0.0: must be in (0, 1]"), ("--top-p=1.5", "--top-p 1.5: must be in (0, 1]"),
             ("--temperature=-1", "--temperature -1.0: must be a number > 0"),
             ("--template=nope", "--template 'nope': must be one of auto"),
             ("--agg=nope", "--agg 'nope': must be one of"),
             ("--hicra-tokens=nope", "--hicra-tokens 'nope': must be one of planning"),
             ("--adv-scale=nope", "--adv-scale 'nope': must be one of group"),
             ("--total-steps=0", "--total-steps 0: must be a whole number >= 1"),
             ("--total-steps=-3", "--total-steps -3: must be a whole number >= 1"),
             ("--group-size=1", "--group-size 1: must be >= 2"), ("--ppo-epochs=0", "--ppo-epochs 0: must be >= 1"),
             ("--hicra-alpha=-1", "--hicra-alpha -1.0: must be a number >= 0"),
             ("--curriculum=nope", "--curriculum 'nope': must be one of"), ("--max-new-tokens=0", "--max-new-tokens 0"),
             ("--overlong-buffer=12", "--overlong-buffer 12: must be -1 (a quarter of each level's length), 0 (off) or below"),
             ("--grams=/nope.json", "--grams '/nope.json': must be an existing file"),
             ("--resume=/nope", "--resume '/nope': must be 'auto' or a checkpoint folder"),
             ("--seed=-1", "--seed -1: must be a whole number >= 0"), ("--eval-limit=0", "--eval-limit 0"),
             ("--micro-batch-tokens=0", "--micro-batch-tokens 0"), ("--grad-clip=0", "--grad-clip 0.0"),
             ("--weight-decay=-1", "--weight-decay -1.0"), ("--kl-coef=-1", "--kl-coef -1.0"),
             ("--format-penalty=-1", "--format-penalty -1.0"), ("--hicra-top-q=0", "--hicra-top-q 0.0"),
             ("--max-prompt-tokens=-1", "--max-prompt-tokens -1"), ("--save-every=-1", "--save-every -1"),
             ("--lr=nan", "--lr nan: must be a number > 0"),
             ("--log-to=tensorboard,mlflow", "--log-to: unknown tracker 'mlflow' (choose from tensorboard, wandb)")]


@pytest.mark.parametrize("bad,expected", BAD_FLAGS)
def test_bad_flags_are_named_before_anything_loads(tmp_path, monkeypatch, capsys, bad, expected):
    """Issue list 3: one line naming the flag, before the model loads (load_model would fail first) and with
    nothing created in the run folder."""
    monkeypatch.setattr(M, "load_model", lambda *a, **k: pytest.fail("the model loaded before validation"))
    monkeypatch.setattr(M, "resolve_path", lambda *a, **k: pytest.fail("the model was looked up before validation"))
    message, _ = main_error(capsys, "--out-dir", str(tmp_path / "run"), *TINY_RUN, bad)
    assert expected in message
    assert not os.path.exists(tmp_path / "run")


def test_several_bad_flags_are_named_together(tmp_path, capsys):
    message, _ = main_error(capsys, "--out-dir", str(tmp_path), *TINY_RUN, "--top-p=0", "--lr=0")
    assert "--top-p 0.0: must be in (0, 1]" in message and "--lr 0.0: must be a number > 0" in message


def test_unwritable_out_dir_is_one_line_before_anything_heavy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(M, "load_model", lambda *a, **k: pytest.fail("the model loaded before the out-dir check"))
    (tmp_path / "file").write_text("x")
    message, _ = main_error(capsys, "--out-dir", str(tmp_path / "file" / "run"), *TINY_RUN)
    assert message == f"error: --out-dir {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not a folder"
    message, _ = main_error(capsys, "--out-dir", "/proc/hicra-run", *TINY_RUN)
    assert message.startswith("error: --out-dir /proc/hicra-run: cannot write in /proc")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(readonly)], capture_output=True)
    if mount.returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        message, _ = main_error(capsys, "--out-dir", str(readonly / "run"), *TINY_RUN)
        assert message == f"error: --out-dir {readonly / 'run'}: cannot write in {readonly} (Read-only file system)"
    finally:
        subprocess.run(["umount", str(readonly)])


def test_resume_checks(tmp_path, tiny_chat_model, capsys):
    """--resume auto needs --out-dir; changed settings are refused by name (--allow-config-change lets them through);
    --total-steps below the checkpoint is an error."""
    message, _ = main_error(capsys, "--model", tiny_chat_model, *TINY_RUN, "--resume", "auto")
    assert message == "error: --resume auto needs --out-dir: the run folder to continue"
    base = ["--model", tiny_chat_model, "--out-dir", str(tmp_path), *TINY_RUN, "--save-every", "1",
            "--keep-checkpoints", "3"]
    train.main(base + ["--total-steps", "2"])
    message, _ = main_error(capsys, *base, "--total-steps", "3", "--resume", "auto", "--algo", "dapo", "--lr", "1e-3",
                            "--group-size", "8", "--seed", "5")
    for changed in ("--algo 'dapo' (checkpoint: 'hicra')", "--lr 0.001 (checkpoint: 2e-05)",
                    "--group-size 8 (checkpoint: 4)", "--seed 5 (checkpoint: 0)"):
        assert changed in message, changed
    assert "--allow-config-change" in message
    message, _ = main_error(capsys, *base, "--total-steps", "1", "--resume", "auto")
    assert "--total-steps 1 is below the step of" in message and "step_000002 (2)" in message
    other = tmp_path / "other"  # a checkpoint of this run resumed into a folder that holds another run
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"step": 1}\n')
    message, _ = main_error(capsys, *base[:3], str(other), *base[4:], "--total-steps", "3", "--resume",
                            str(tmp_path / "checkpoints" / "step_000001"))
    assert f"{other} holds another run (1 rows in metrics.jsonl)" in message
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "3", "--curriculum", "none", "--no-dynamic-sampling",
                     "--resume", "auto", "--lr", "1e-4", "--allow-config-change")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "continuing" in capsys.readouterr().out


def test_prompts_per_step_must_split_over_the_ranks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    message, _ = main_error(capsys, "--out-dir", str(tmp_path), *TINY_RUN, "--prompts-per-step", "3")
    assert "--prompts-per-step 3: must be a multiple of the 2 ranks" in message


def test_over_long_problems_are_skipped_by_file_and_line(tmp_path, tiny_chat_model, capsys):
    """Issue repro 5: a 100K-character problem (the tiny model's context is 256 tokens) is skipped with its file
    and line named, and the run goes on at once; a response budget beyond the context is capped."""
    data = tmp_path / "mixed.jsonl"
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    rows.insert(2, {"problem": "What is " + "1 + " * 25_000 + "1?", "answer": "25001"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = time.time()
    rows = run_train(tmp_path / "run", tiny_chat_model, "--total-steps", "1", "--curriculum", "none", "--data",
                     str(data), "--no-dynamic-sampling", "--template", "plain", "--max-new-tokens", "240")
    out = capsys.readouterr().out
    assert time.time() - start < 120 and [r["step"] for r in rows] == [1]
    assert f"problems: skipped {data} line 3 (id mixed-3): its prompt has" in out
    assert "more than the 128 that fit (the model's context of 256 tokens" in out  # budget 240 > 256 / 2: 128 left
    assert "warning: --max-new-tokens 240 + the longest prompt" in out and "exceeds the model's context of 256" in out
    capped = json.load(open(tmp_path / "run" / "config.json"))["max_new_tokens"]
    assert capped < 240 and rows[0]["max_len"] == capped


def test_every_prompt_too_long_is_an_error(tmp_path, tiny_chat_model, capsys):
    message, out = main_error(capsys, "--model", tiny_chat_model, "--out-dir", str(tmp_path), *TINY_RUN,
                              "--max-prompt-tokens", "5", "--total-steps", "1")
    assert "every prompt is longer than 5 tokens (--max-prompt-tokens 5)" in message
    assert "problems: ... and" in out and not os.path.exists(tmp_path / "metrics.jsonl")


def test_torn_lines_are_repaired_and_redone_rows_trimmed_on_resume(tmp_path, tiny_chat_model):
    common = ["--total-steps", "3", "--curriculum", "none", "--no-dynamic-sampling"]
    run_train(tmp_path, tiny_chat_model, *common, "--stop-after", "2")
    shutil.rmtree(tmp_path / "checkpoints" / "step_000002")  # resume from step 1: step 2's rows must go
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 3, "torn')
    rows = run_train(tmp_path, tiny_chat_model, *common, "--resume", "auto")
    assert [r["step"] for r in rows] == [1, 2, 3]
    rollouts = [json.loads(line) for line in open(tmp_path / "rollouts.jsonl")]
    assert [r["step"] for r in rollouts] == sorted(r["step"] for r in rollouts)
    assert len(rollouts) == 3 * 8  # per step: the first group (4) and the failures of the other (4 more)


def test_a_signal_during_a_save_stops_right_after_it(tmp_path, tiny_chat_model, monkeypatch, capsys):
    saves, real_save = [], train.ckpt.save

    def save_then_signal(*args, **kwargs):
        saves.append(args[1])
        folder = real_save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the save is in progress (the handler only sets a flag)
        return folder
    monkeypatch.setattr(train.ckpt, "save", save_then_signal)
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "5", "--curriculum", "none", "--no-dynamic-sampling",
                     "--save-every", "2")
    assert saves == [2] and [r["step"] for r in rows] == [1, 2]
    assert "stopped by SIGTERM after step 2; checkpoint saved" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # train.main put the handlers back


def test_an_empty_response_never_beats_a_wrong_boxed_one(tmp_path):
    """The default reward: no answer scores -1, a wrong boxed answer at worst -1 (the full overlong penalty)."""
    import experience
    from curriculum import make_schedule
    from reward import math_reward
    for algo in ("grpo", "dapo", "hicra"):
        cfg = train.resolve(train.TrainConfig(algo=algo, preset="cpu", out_dir=str(tmp_path)))
        for level in make_schedule(cfg.curriculum, cfg.total_steps, cfg.max_new_tokens, 8, 4):
            reward_cfg = experience.reward_config(cfg, level, level.max_len)  # each level's own overlong buffer
            empty = math_reward("", "7", reward_cfg, response_len=1, max_len=level.max_len)
            for length in range(1, level.max_len + 1):
                wrong = math_reward("\\boxed{8}", "7", reward_cfg, response_len=length, max_len=level.max_len)
                assert empty.score <= wrong.score, (algo, level.name, length)


def test_reward_traps_warn_once_each():
    seen = {}
    row = dict(step=1, response_len=20.0, empty_frac=0.0, length_penalty=0.0, accuracy=0.3)
    assert train.reward_traps(row, seen) == []
    collapsed = dict(step=5, response_len=3.0, empty_frac=0.6, length_penalty=-0.5, accuracy=0.2)
    warnings_ = train.reward_traps(collapsed, seen)
    assert len(warnings_) == 3
    assert "60% of the responses are empty" in warnings_[0]
    assert "fell to 3.0 tokens (20.0 at step 1)" in warnings_[1]
    assert "length penalty (mean -0.50) outweighs the correctness reward (mean 0.20)" in warnings_[2]
    assert train.reward_traps(dict(collapsed, step=6), seen) == []  # once per run


def test_the_preset_choice_is_said(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train, "dist_init", lambda **kw: (_ for _ in ()).throw(SystemExit("stop here")))
    with pytest.raises(SystemExit):
        train.main(["--out-dir", str(tmp_path), "--data", "arith"])
    assert "preset gpu: CUDA is available (--preset cpu: the CPU demo's values)" in capsys.readouterr().out


@pytest.mark.parametrize("options", [["--loss", "gspo"], ["--loss", "cispo"], ["--loss", "sapo"],
                                     ["--top-entropy-q", "0.2"], ["--cov-mode", "clip", "--clip-cov-frac", "0.2"],
                                     ["--cov-mode", "kl"], ["--recompute-old-logprobs", "--mismatch-correction", "tis"],
                                     ["--recompute-old-logprobs", "--mismatch-correction", "mis", "--mismatch-level",
                                      "sequence"]], ids=lambda o: "_".join(o).replace("--", ""))
def test_every_loss_variant_trains(tmp_path, tiny_chat_model, options):
    """Each issue-19 option runs two steps of train.py (tiny model: the wiring; loss.py's tests check the math)."""
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "2", "--curriculum", "none", "--entropy-coef", "0.01",
                     "--no-dynamic-sampling", "--max-new-tokens", "8", *options)
    steps = [r for r in rows if "grad_norm" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["grad_norm"]) for r in steps)
    if "--top-entropy-q" in options:
        assert all("entropy_threshold" in r for r in steps)
    if "--mismatch-correction" in options:
        assert all("mismatch_abs_mean" in r and "mismatch_weight_mean" in r for r in steps)


def test_two_step_run_logs_the_papers_metrics(tmp_path, tiny_chat_model):
    """A 2-step run with G = 8 on the adaptive curriculum logs every metric the HICRA / HGRPO figures use, over every
    response sampled, Algorithm 1's probe of level 1, and validation at the papers' protocol (disjoint problems)."""
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "2", "--group-size", "8", "--curriculum", "adaptive",
                     "--no-dynamic-sampling", "--eval-every", "2", "--eval-limit", "2", "--adaptive-p-min", "1",
                     "--adaptive-p-max", "1", "--max-new-tokens", "64")
    steps = [r for r in rows if "grad_norm" in r]
    for key in EVERY_METRIC + PAPER_METRICS:
        assert key in steps[-1], key
    val = [r for r in rows if "val_pass@1" in r]
    assert val and {"val_pass@k", "val_maj@k", "val_response_length"} <= set(val[0])


def test_context_rule_raises_the_length_once_and_resumes_raised(tmp_path, tiny_chat_model):
    """HICRA's rule: more than the threshold of a step's responses cut -> every length x factor, once; the raise is
    in the checkpoint, so a resumed run keeps the longer budget."""
    common = ["--curriculum", "none", "--no-dynamic-sampling", "--max-new-tokens", "8", "--context-factor", "2",
              "--context-threshold", "0.5"]  # a random tiny model never stops: every response is cut
    run_train(tmp_path, tiny_chat_model, "--total-steps", "2", *common)
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "3", "--resume", "auto", *common)
    assert [r["max_len"] for r in rows] == [8, 16, 16]
    assert [r.get("context_raised", False) for r in rows] == [True, False, False]
