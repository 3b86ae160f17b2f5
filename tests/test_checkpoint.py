"""checkpoint.py and the run files: content checksums, fallback past every kind of damage, rotation, disk full,
file modes, the dcp warning, signals, and the repair of append-only files (plot.repair_jsonl / read_metrics)."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import warnings
import zlib

import pytest
import torch

import checkpoint as ckpt
import model as M
from plot import read_metrics, repair_jsonl
from conftest import ROOT


@pytest.fixture
def trained(tiny_checkpoint):
    """A tiny policy after one AdamW step (so the optimizer has state) and a function that saves it."""
    policy, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    policy(torch.arange(6), torch.arange(6), M.AttnMeta.packed([6], "cpu")).sum().backward()
    optimizer.step()

    def save(out_dir, step, keep=3, run_id="run-a", state=None):
        return ckpt.save(str(out_dir), step, state or policy.state_dict(), policy.hf_config, None, policy, optimizer,
                         dict(curriculum={"level": step}, config={}), False, True, keep=keep, run_id=run_id)
    return policy, optimizer, save


def overwrite_middle(path, byte=b"\xff", count=4096):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(byte * min(count, size - size // 2))
    assert os.path.getsize(path) == size  # same size: a size check alone would not notice


def test_checksums_are_crc32_per_chunk_and_catch_same_size_corruption(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHUNK_BYTES", 1000)
    data = os.urandom(2500)
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    got = ckpt.digests(str(tmp_path), ["a.bin", "empty"])
    assert got["a.bin"] == {"bytes": 2500, "crc32": [f"{zlib.crc32(data[i:i + 1000]):08x}" for i in (0, 1000, 2000)]}
    assert got["empty"] == {"bytes": 0, "crc32": ["00000000"]}
    json.dump({"step": 1, "chunk_bytes": 1000, "files": got}, open(tmp_path / "complete.json", "w"))
    assert ckpt.verify(str(tmp_path)) is None
    overwrite_middle(tmp_path / "a.bin", count=10)  # bytes 1250..1260: the second chunk
    assert ckpt.verify(str(tmp_path)) == "a.bin does not match its checksum (bytes 1000..2000 changed: corrupt)"


def test_older_checkpoints_with_sizes_only_still_verify(tmp_path):
    (tmp_path / "x").write_bytes(b"12345")
    json.dump({"x": 5}, open(tmp_path / "complete.json", "w"))
    assert ckpt.verify(str(tmp_path)) is None
    (tmp_path / "x").write_bytes(b"123")
    assert "x has 3 bytes, expected 5" in ckpt.verify(str(tmp_path))


DAMAGE = {
    "same-size 0xFF over the weights": lambda d: overwrite_middle(os.path.join(d, "policy", "model.safetensors")),
    "garbled trainer_state.json": lambda d: overwrite_middle(os.path.join(d, "trainer_state.json"), b"#", 3),
    "zeroed rng file": lambda d: overwrite_middle(os.path.join(d, "rng_0.pt"), b"\0", 10**6),
    "corrupt safetensors header": lambda d: overwrite_middle(os.path.join(d, "policy", "model.safetensors"), b"{", 1),
    "truncated optimizer shard": lambda d: open(os.path.join(d, "optim", "__0_0.distcp"), "r+b").truncate(100),
    "missing complete.json": lambda d: os.remove(os.path.join(d, "complete.json")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_any_damage_falls_back_to_the_previous_checkpoint(tmp_path, trained, capsys, damage):
    policy, optimizer, save = trained
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    DAMAGE[damage](newest)
    found = ckpt.find("auto", str(tmp_path), is_dist=False)
    out = capsys.readouterr().out
    assert found.folder.endswith("step_000001") and found.state["step"] == 1
    assert f"checkpoint {newest} is not usable: " in out and "trying the previous one" in out
    assert os.path.isdir(newest + ".unusable") and not os.path.exists(newest)  # kept, never resumed or rotated
    assert ckpt.checkpoint_dirs(str(tmp_path)) == [found.folder]


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path, trained, capsys):
    """Weights saved NaN (valid checksums: the damage happened before the save) are not resumed from."""
    policy, optimizer, save = trained
    save(tmp_path, 1)
    nan_state = {k: v.clone() for k, v in policy.state_dict().items()}
    nan_state["norm.weight"][0] = float("nan")
    with pytest.raises(ValueError, match="not finite.*norm.weight"):  # save refuses to write them ...
        save(tmp_path, 2, state=nan_state)
    assert not os.path.exists(tmp_path / "checkpoints" / "step_000002.tmp")
    # ... and find refuses them if they got written anyway (here: behind the save's back, checksums updated)
    folder = str(tmp_path / "checkpoints" / "step_000002")
    shutil.copytree(tmp_path / "checkpoints" / "step_000001", folder)
    weights = M.read_state_dict(os.path.join(folder, "policy"))
    weights["norm.weight"][1] = float("inf")
    M.save_hf(weights, policy.hf_config, os.path.join(folder, "policy"))
    manifest = json.load(open(os.path.join(folder, "complete.json")))
    manifest["files"].update(ckpt.digests(folder, ["policy/model.safetensors"]))
    json.dump(manifest, open(os.path.join(folder, "complete.json"), "w"))
    assert ckpt.verify(folder) is None
    found = ckpt.find("auto", str(tmp_path), is_dist=False)
    assert found.folder.endswith("step_000001")
    assert "policy weights are not finite (norm.weight has NaN/inf)" in capsys.readouterr().out


def test_explicit_resume_of_a_damaged_checkpoint_is_an_error(tmp_path, trained):
    folder = trained[2](tmp_path, 1)
    DAMAGE["garbled trainer_state.json"](folder)
    with pytest.raises(ValueError, match="--resume .*step_000001: checkpoint is not usable: trainer_state.json"):
        ckpt.find(folder, str(tmp_path), is_dist=False)
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        ckpt.find(str(tmp_path / "nope"), str(tmp_path), is_dist=False)


def test_restore_brings_back_weights_and_optimizer(tmp_path, trained, tiny_checkpoint):
    policy, optimizer, save = trained
    save(tmp_path, 1)
    fresh, _ = M.load_model(tiny_checkpoint("llama"), tokenizer=False)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    ckpt.restore(ckpt.find("auto", str(tmp_path), is_dist=False), fresh, fresh_opt, is_dist=False)
    for (name, a), b in zip(policy.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
        assert torch.equal(optimizer.state[a]["exp_avg_sq"], fresh_opt.state[b]["exp_avg_sq"]), name


def test_rotation_keeps_this_runs_newest_and_never_another_runs(tmp_path, trained):
    save = trained[2]
    other = save(tmp_path, 9, run_id="run-b")  # another run's checkpoint, newer by step
    for step in (1, 2, 3):
        save(tmp_path, step, keep=2)
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["step_000002", "step_000003", "step_000009"]
    save(tmp_path, 4, keep=1)  # keep 1: the checkpoint just written is the one kept
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_000004", os.path.basename(other)]


def test_files_are_group_readable_and_no_distributed_warning(tmp_path, trained):
    old = os.umask(0o022)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folder = trained[2](tmp_path, 1)
            ckpt.restore(ckpt.find("auto", str(tmp_path), is_dist=False), trained[0], trained[1], is_dist=False)
    finally:
        os.umask(old)
    assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)]
    modes = {os.path.relpath(os.path.join(d, f), folder): stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode)
             for d, _, files in os.walk(folder) for f in files}
    assert modes["policy/model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_stale_tmp_folders_are_removed(tmp_path):
    os.makedirs(tmp_path / "checkpoints" / "step_000003.tmp" / "policy")
    os.makedirs(tmp_path / "checkpoints" / "step_000002")
    assert ckpt.remove_stale(str(tmp_path)) == ["step_000003.tmp"]
    assert os.listdir(tmp_path / "checkpoints") == ["step_000002"]


def test_disk_full_during_save_says_so_and_leaves_nothing(tmp_path, trained, monkeypatch):
    """torch.save reports a full disk as 'unexpected pos'; the free space tells. Simulated here; the real thing
    is the next test."""
    def full_disk_save(obj, path, *a, **k):
        open(path, "wb").write(b"x" * 10)
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: unexpected pos 704 vs 598")
    monkeypatch.setattr(ckpt.torch, "save", full_disk_save)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    with pytest.raises(ValueError, match=r"disk full while writing checkpoint .*step_000001\.tmp"):
        trained[2](tmp_path, 1)
    assert os.listdir(tmp_path / "checkpoints") == []


def test_disk_full_on_a_real_small_filesystem(tmp_path, trained):
    full_size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(trained[2](tmp_path / "ok", 1))
                    for f in files)
    mount = tmp_path / "small"
    mount.mkdir()
    size = f"size={full_size // 2 // 1024}k"  # room for half of the checkpoint
    if subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(ValueError, match=r"disk full while writing checkpoint .*step_000001\.tmp") as e:
            trained[2](mount, 1)
        assert "MiB free" in str(e.value)
        assert os.listdir(mount / "checkpoints") == []
    finally:
        subprocess.run(["umount", str(mount)])


def test_repair_jsonl_drops_a_torn_line_and_rows_past_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "x": "é"} for s in (1, 2, 3)] + [{"step": 2, "val_pass@1": 0.5}]
    path.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)
                     + '{"step": 4, "x": "é'.encode()[:-1])  # torn inside a 2-byte character
    assert repair_jsonl(str(path), 2) == (1, 1)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [rows[0], rows[1], rows[3]]
    assert repair_jsonl(str(path), 2) == (0, 0) and repair_jsonl(str(tmp_path / "none.jsonl"), 2) == (0, 0)


def test_read_metrics_skips_a_torn_last_line_only(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert read_metrics(str(tmp_path)) == [{"step": 1}, {"step": 2}]
    assert "skipped a torn last line" in capsys.readouterr().out
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: not JSON"):
        read_metrics(str(tmp_path))


STOP_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import checkpoint as ckpt
before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
with ckpt.StopSignal() as stop:
    os.kill(os.getpid(), signal.{first})
    time.sleep(0.2)
    print("flag", stop(), stop.name, flush=True)
    if {twice}:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("still running", flush=True)
print("handler restored", signal.getsignal(signal.SIGINT) is before, flush=True)
"""


@pytest.mark.parametrize("first", ["SIGTERM", "SIGINT"])
def test_first_signal_sets_the_flag_a_second_exits_at_once(first):
    once = subprocess.run([sys.executable, "-c", STOP_SCRIPT.format(root=ROOT, first=first, twice=False)],
                          capture_output=True, text=True, timeout=60)
    assert once.returncode == 0 and f"flag True {first}" in once.stdout and "handler restored True" in once.stdout
    twice = subprocess.run([sys.executable, "-c", STOP_SCRIPT.format(root=ROOT, first=first, twice=True)],
                           capture_output=True, text=True, timeout=60)
    # at once: not after the 5 s sleep the second signal interrupted ("still running")
    assert twice.returncode == 128 + signal.SIGINT and "still running" not in twice.stdout
    assert "SIGINT again: exiting now" in twice.stderr
