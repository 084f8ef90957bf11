"""torch is optional: train-sae and sweep on .npy / .safetensors files and the JAX API run where torch cannot be
imported, and the commands that need it say so in one line.

The fast test runs the package in a process where `import torch` fails as it does where torch is not installed
(ModuleNotFoundError, from a finder placed first on sys.meta_path; nothing is put in sys.modules, which other
libraries inspect). The slow one installs the package with pip into a
fresh virtual environment that has every requirement but torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import REPO

TRAIN = ["--variant", "topk", "--k", "4", "--dict-size", "16", "--epochs", "2", "--batch-size", "32"]

# Runs in the child: torch cannot be imported; everything below must work, and torch must stay unimported.
NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoTorch())
    """
)
SCRIPT = NO_TORCH + textwrap.dedent(
    """
    import json
    from jax_impl.cli import main
    import jax_impl as mm

    out, npy, st = sys.argv[1], sys.argv[2], sys.argv[3]
    train = json.loads(sys.argv[4])
    codes = {
        "npy": main(["train-sae", "--activations", npy, "--out", out + "/npy", *train]),
        "safetensors": main(["train-sae", "--activations", st, "--out", out + "/st", *train]),
        "sweep": main(["sweep", "--activations", npy, "--out", out + "/sweep", "--variant", "topk",
                       "--grid", "k=2,4", "--dict-size", "16", "--epochs", "1", "--batch-size", "32"]),
        "run": main(["run", "--run-dir", out + "/run"]),
    }
    # The JAX API: an SAE read back from the .safetensors file train-sae wrote and from its SAELens folder.
    a = mm.load_sae(out + "/npy/sae.safetensors", input_dim=None)
    b = mm.load_sae(out + "/npy/saelens", input_dim=None)
    x = mm.open_activations(npy).rows(0, 8)
    same = bool((a.encode(x) == b.encode(x)).all())
    print("RESULT " + json.dumps({"codes": codes, "same": same, "torch": "torch" in sys.modules}))
    """
)


def _activations(folder: Path) -> tuple[Path, Path]:
    rows = np.random.default_rng(0).standard_normal((256, 12)).astype(np.float32)
    npy, st = folder / "acts.npy", folder / "acts.safetensors"
    np.save(npy, rows)
    save_file({"activations": rows}, str(st))
    return npy, st


def test_train_sae_sweep_and_the_api_run_without_torch(tmp_path):
    npy, st = _activations(tmp_path)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(npy), str(st), json.dumps(TRAIN)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["codes"] == {"npy": 0, "safetensors": 0, "sweep": 0, "run": 2}, done.stderr[-3000:]
    assert result["same"] and not result["torch"]
    for folder in ("npy", "st"):
        files = {p.name for p in (tmp_path / folder).iterdir()}
        assert {"sae.safetensors", "saelens", "metrics.json", "sae_config.json"} <= files
        assert "sae.pth" not in files  # the torch file needs torch; its tensors are in sae.safetensors
    # One line each: the .pth left out, and `run` (whose seed artifacts are torch files) refused.
    assert "sae.pth not written: PyTorch is not installed" in done.stderr
    assert "monosem: error: monosem run needs PyTorch" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_torch_file_without_torch_is_one_line(tmp_path):
    path = tmp_path / "acts.pt"
    path.write_bytes(b"PK\x03\x04 not really")  # never read: torch is missing before the file is opened
    script = NO_TORCH + ("from jax_impl.cli import main\n"
                         f"sys.exit(main(['train-sae', '--activations', {str(path)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "needs PyTorch" in lines[0], done.stderr


@pytest.mark.slow
def test_pip_install_into_a_venv_without_torch(tmp_path):
    """The installed package (not the checkout): `pip install --no-deps .` beside every requirement but torch."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    requirements = [r for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                    if not r.startswith("torch")]
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *requirements], check=True, timeout=1200)
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True, timeout=600, cwd=tmp_path)
    npy, _ = _activations(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(venv / "bin" / "monosem"), "train-sae", "--activations", str(npy), "--out",
                           str(tmp_path / "out"), *TRAIN], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "sae.safetensors").is_file()
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None, "
                            "u.find_spec('torch_ref') is None, u.find_spec('monosem_torch_ref') is not None)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert probe.stdout.split() == ["True", "True", "True"], probe.stdout + probe.stderr
