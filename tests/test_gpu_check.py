"""benchmarks/gpu_check.py's CPU rehearsal: the one-command GPU acceptance run works end to end before a GPU runs it."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_rehearsal_on_cpu(tmp_path):
    """Every section runs on tiny shapes and writes its table; no row fails (targets are GPU-only, MISS allowed)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "| section | check | value | target | status |" in done.stdout
    rows = json.load(open(tmp_path / "gpu_check.json"))["rows"]
    sections = {r[0] for r in rows}
    assert {"tests", "ceilings", "sampler", "train", "torchrun"} <= sections, sections
    assert not [r for r in rows if r[4] == "FAIL"]
    torchrun = [r for r in rows if r[0] == "torchrun"]
    assert torchrun and torchrun[0][4] == "ok" and "steps [1, 2, 3]" in torchrun[0][2]
