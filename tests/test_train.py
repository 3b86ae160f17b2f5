"""train.py end to end: metrics, checkpoints that transformers loads, exact resume, FSDP2 == one process, signals."""
import json
import os
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
                "execution_ppl", "logprob_gap", "rollout_tok_s", "train_tok_s", "level", "skipped_updates"]


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


def test_rollout_out_of_memory_retries_with_half_the_slots(monkeypatch, capsys):
    """A CUDA OOM in the sampler halves max_num_seqs and retries (and says so); at one slot it gives up."""
    tried = []

    def fake_generate(model, prompts, params, engine, tokenizer):
        tried.append(engine.max_num_seqs)
        if engine.max_num_seqs > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return "samples", "stats"

    monkeypatch.setattr(train, "generate", fake_generate)
    cfg = train.TrainConfig(max_num_seqs=64)
    assert train.sample_with_retry(None, [[1]], None, cfg, None) == ("samples", "stats")
    assert tried == [64, 32, 16, 8] and cfg.max_num_seqs == 8
    assert "retrying with --max-num-seqs 8" in capsys.readouterr().err

    monkeypatch.setattr(train, "generate", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("simulated")))
    cfg = train.TrainConfig(max_num_seqs=2)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train.sample_with_retry(None, [[1]], None, cfg, None)
    assert cfg.max_num_seqs == 1


def test_step_with_no_trainable_group_logs_no_means(tmp_path, tiny_chat_model):
    """A random model never earns a reward, so dynamic sampling keeps no group: the step must say so (no reward,
    accuracy or boxed rate averaged over zero responses, which would read as 0.0) and the run goes on."""
    rows = run_train(tmp_path, tiny_chat_model, "--total-steps", "1", "--curriculum", "none", "--max-sampling-rounds", "0")
    step = [r for r in rows if r.get("step") == 1][-1]
    assert step["zero_variance_frac"] == 1.0 and step["pass_rate"] == 0.0
    for key in ("reward", "accuracy", "boxed_rate", "response_len", "train_tok_s"):
        assert key not in step, key
