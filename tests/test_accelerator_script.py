"""scripts/accelerator_check.sh as far as a machine without a GPU allows: every step of its quick mode runs
(`--allow-cpu`), each step's exit status and seconds land in the summary, and the summary says which device
ran. Slow (about two minutes): `pytest -m slow tests/test_accelerator_script.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_refuses_an_unknown_argument():
    done = subprocess.run(["bash", str(REPO / "scripts/accelerator_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown argument --fast" in done.stderr


def test_refuses_to_call_a_cpu_a_gpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), JAX_PLATFORMS="cpu")
    done = subprocess.run(["bash", str(REPO / "scripts/accelerator_check.sh"), "--quick"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and "JAX sees no GPU (backend cpu)" in done.stdout + done.stderr


@pytest.mark.slow
def test_quick_dry_run_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), JAX_PLATFORMS="cpu")
    done = subprocess.run(["bash", str(REPO / "scripts/accelerator_check.sh"), "--quick", "--allow-cpu"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "accelerator_summary.json").read_text())
    assert summary["versions"]["jax_backend"] == "cpu" and summary["versions"]["torch_cuda"] is False
    assert {"parity", "run_gpu", "run_cpu", "bench_saes"} <= set(summary["steps"])
    assert all(step["exit"] == 0 for step in summary["steps"].values())
    assert set(summary["sae_epoch_torch_over_jax"]) >= {"topk", "batchtopk", "matryoshka", "jumprelu"}
    assert "== summary" in done.stdout
