"""Fault injection, end to end on CPU in subprocesses: kill -9, SIGTERM (one process and 2 ranks under torchrun),
same-size corruption of the newest checkpoint and torn log lines; the run still ends with the weights of an
uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import checkpoint as ckpt
import model as M
from conftest import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train_cmd(model, out_dir, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--model", model, "--out-dir", str(out_dir), "--data",
            "arith", "--preset", "cpu", "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "24",
            "--curriculum", "none", "--no-dynamic-sampling", "--save-every", "1", "--keep-checkpoints", "2", *extra]


def run(cmd, timeout=300):
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


def start(cmd, log):
    return subprocess.Popen(cmd, env=ENV, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the fault could be injected"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def steps_saved(out_dir):
    return [int(os.path.basename(d)[5:]) for d in ckpt.checkpoint_dirs(str(out_dir))]


def weights(folder):
    return M.read_state_dict(os.path.join(folder, "policy"))


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_kill_sigterm_corruption_torn_lines_end_with_the_uninterrupted_weights(tmp_path, tiny_chat_model):
    total = ["--total-steps", "8"]
    run(train_cmd(tiny_chat_model, tmp_path / "straight", *total))
    out = tmp_path / "faulty"

    # kill -9 as soon as step 2 is saved (mid-step 3, or mid-save: a stale .tmp), plus a stale .tmp for sure
    proc = start(train_cmd(tiny_chat_model, out, *total), tmp_path / "1.log")
    wait_for(lambda: 2 in steps_saved(out), proc)
    proc.kill()
    proc.wait()
    os.makedirs(out / "checkpoints" / "step_000099.tmp" / "policy")

    # resume; SIGTERM as soon as one more step is saved
    proc = start(train_cmd(tiny_chat_model, out, *total, "--resume", "auto"), tmp_path / "2.log")
    resumed_at = max(steps_saved(out))
    wait_for(lambda: max(steps_saved(out), default=0) > resumed_at, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    log = open(tmp_path / "2.log").read()
    assert "removed checkpoints/step_000099.tmp: a save that never finished" in log
    assert "stopped by SIGTERM" in log and "checkpoint saved" in log, log[-2000:]

    # same-size corruption of the newest checkpoint, torn last lines in both logs
    newest = ckpt.latest(str(out))
    weights_file = os.path.join(newest, "policy", "model.safetensors")
    with open(weights_file, "r+b") as f:
        f.seek(os.path.getsize(weights_file) // 2)
        f.write(b"\xff" * 4096)
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        with open(out / name, "a") as f:
            f.write('{"step": 99, "half a li')
    log = run(train_cmd(tiny_chat_model, out, *total, "--resume", "auto"))
    assert f"checkpoint {newest} is not usable: policy/model.safetensors does not match its checksum" in log
    assert "resumed from" in log

    straight, faulty = (os.path.join(tmp_path / d, "checkpoints", "step_000008") for d in ("straight", "faulty"))
    assert max_difference(weights(straight), weights(faulty)) < 1e-6
    rows = {d: [json.loads(line) for line in open(tmp_path / d / "metrics.jsonl")] for d in ("straight", "faulty")}
    assert [r["step"] for r in rows["faulty"]] == list(range(1, 9))
    for a, b in zip(rows["straight"], rows["faulty"]):
        for key in ("reward", "response_len", "grad_norm", "entropy", "approx_kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    rollouts = [json.loads(line)["step"] for line in open(out / "rollouts.jsonl")]
    assert rollouts == sorted(rollouts) and len(rollouts) == 8 * 8  # no torn line, no step twice (8 rows a step)


@pytest.fixture(scope="session")
def long_context_model(chat_model_factory):
    """The tiny chat model with a context long enough for endless rollouts."""
    return chat_model_factory(max_position_embeddings=1 << 20)


def endless_second_step(model, out_dir, tmp_path):
    """Step 1 answers in 4 tokens, step 2 may take 13333 (level L2 of deepscaler at 20000): it never ends in time."""
    overrides = tmp_path / "levels.json"
    overrides.write_text('{"L1": {"max_len": 4, "steps": 1}}')
    return ["--model", model, "--out-dir", str(out_dir), "--data", "arith", "--preset", "cpu", "--algo", "grpo",
            "--prompts-per-step", "2", "--group-size", "4", "--max-new-tokens", "20000", "--curriculum", "deepscaler",
            "--schedule-overrides", str(overrides), "--total-steps", "3", "--save-every", "100"]


def stop_mid_rollout(cmd, out_dir, log):
    """Start, wait for step 1's metrics row, SIGTERM 1 s into step 2; -> (seconds until exit, exit code, output)."""
    proc = start(cmd, log)
    metrics = os.path.join(out_dir, "metrics.jsonl")
    wait_for(lambda: os.path.exists(metrics) and open(metrics).read().count("\n") >= 1, proc)
    time.sleep(1.0)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    return time.time() - sent, code, open(log).read()


def test_sigterm_mid_rollout_abandons_the_step_and_saves_the_last_completed_one(tmp_path, long_context_model):
    train_py = [sys.executable, os.path.join(ROOT, "train.py")]
    cmd = train_py + endless_second_step(long_context_model, tmp_path / "run", tmp_path)
    seconds, code, log = stop_mid_rollout(cmd, tmp_path / "run", tmp_path / "run.log")
    assert code == 0, log[-3000:]
    assert seconds < 25, f"took {seconds:.1f} s to stop"
    assert "stopped by SIGTERM during step 2's rollout (abandoned); checkpoint saved:" in log
    assert steps_saved(tmp_path / "run") == [1] and open(tmp_path / "run" / "metrics.jsonl").read().count("\n") == 1
    # what was saved is exactly what a run stopped after step 1 saves: weights, curriculum position, RNG
    run(train_py + endless_second_step(long_context_model, tmp_path / "ref", tmp_path) + ["--stop-after", "1"])
    saved, ref = (os.path.join(tmp_path, d, "checkpoints", "step_000001") for d in ("run", "ref"))
    assert max_difference(weights(saved), weights(ref)) == 0.0
    state = [json.load(open(os.path.join(d, "trainer_state.json"))) for d in (saved, ref)]
    assert state[0]["curriculum"] == state[1]["curriculum"]
    rng = [ckpt._read_rng(os.path.join(d, "rng_0.pt")) for d in (saved, ref)]
    assert (rng[0]["torch"] == rng[1]["torch"]).all() and rng[0]["python"] == rng[1]["python"]
    assert (rng[0]["numpy"][1] == rng[1]["numpy"][1]).all() and rng[0]["numpy"][2:] == rng[1]["numpy"][2:]


def test_sigterm_under_torchrun_stops_every_rank_within_the_grace_period(tmp_path, long_context_model):
    """Issue repro 4: torchrun forwards SIGTERM and kills its workers 30 s later; both ranks abandon step 2
    mid-rollout, agree, save step 1 and exit well before that."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           os.path.join(ROOT, "train.py")] + endless_second_step(long_context_model, tmp_path / "run", tmp_path)
    seconds, code, log = stop_mid_rollout(cmd, tmp_path / "run", tmp_path / "run.log")
    assert seconds < 25, f"took {seconds:.1f} s to stop:\n{log[-3000:]}"
    assert "forcefully exiting" not in log  # torchrun did not have to SIGKILL a worker
    assert "stopped by SIGTERM during step 2's rollout (abandoned); checkpoint saved:" in log, log[-3000:]
    folder = os.path.join(tmp_path, "run", "checkpoints", "step_000001")
    assert ckpt.verify(folder) is None
    assert {"rng_0.pt", "rng_1.pt"} <= set(os.listdir(folder))  # both ranks took part in the save
