"""Artifacts taken to PyTorch: `.pth` state_dicts, TorchScript modules and torch.export programs.

The exported programs are loaded in a separate `python -I` process, in a folder outside the repo,
with the project (and JAX) made unimportable, and must compute what the JAX models compute.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from jax_impl.interop import bridge
from jax_impl.jobs.export import EXPORT_FILES, export_models
from monosem_torch_ref.models import InterpretabilityMLP, SparseAutoencoder
from parity_tests.helpers import assert_close, randomize_batch_stats, task_rows, ulps

# JAX (XLA) vs torch kernels on random weights: summation order only, as in test_forward (64 ulps).
EXPORT_ULPS = 64
BATCH_SIZES = (1, 37)  # the programs were traced with 4 rows; 1 is the size torch.export likes to specialise

# Runs in the clean process: blocks the project and JAX before anything is imported, then loads each
# program with the public loader only and writes its outputs as plain JSON lists.
LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"jax_impl", "monosem_torch_ref", "jax", "flax"}:
                raise ModuleNotFoundError(f"blocked: {name}")

    sys.meta_path.insert(0, Block())
    for name in ("jax_impl", "monosem_torch_ref", "jax"):
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit(f"{name} is importable")

    import torch

    inputs = {k: torch.tensor(v, dtype=torch.float32) for k, v in json.load(open("inputs.json")).items()}
    out = {}
    for kind, load in (("torchscript", torch.jit.load), ("pt2", lambda p: torch.export.load(p).module())):
        for model in ("mlp", "sae"):
            program = load(sys.argv[1 + ["mlp_torchscript", "mlp_pt2", "sae_torchscript", "sae_pt2"].index(f"{model}_{kind}")])
            for batch, x in inputs.items():
                if batch.startswith(model):
                    with torch.no_grad():
                        first, second = program(x)
                    out[f"{batch}/{kind}"] = [first.tolist(), second.tolist()]
    json.dump(out, open("outputs.json", "w"))
    """
)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(12)
    mlp = InterpretabilityMLP()
    randomize_batch_stats(mlp, 12)
    sae = SparseAutoencoder(512, 2048)
    return bridge.mlp_from_state_dict(mlp.state_dict()), bridge.sae_from_state_dict(sae.state_dict())


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict[str, Path]:
    run_dir = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = export_models(*models, run_dir)
    leaked = [str(w.message) for w in caught if "torch.jit" in str(w.message)]
    assert not leaked, f"TorchScript deprecation warnings escaped export: {leaked}"
    return paths


def test_export_writes_exactly_the_four_files(exported):
    export_dir = next(iter(exported.values())).parent
    assert sorted(p.name for p in export_dir.iterdir()) == sorted(Path(p).name for p in EXPORT_FILES.values())


def test_pth_loads_strictly_in_torch(models, tmp_path):
    """`.pth` files written from JAX load with weights_only=True and strict=True and compute the same."""
    mlp, sae = models
    bridge.save_mlp(mlp, tmp_path / "perfect_mlp.pth")
    bridge.save_sae(sae, tmp_path / "sae_model.pth")
    torch_mlp = InterpretabilityMLP()
    torch_mlp.load_state_dict(torch.load(tmp_path / "perfect_mlp.pth", weights_only=True), strict=True)
    torch_sae = SparseAutoencoder()
    torch_sae.load_state_dict(torch.load(tmp_path / "sae_model.pth", weights_only=True), strict=True)
    x, _ = task_rows(64, seed=13)
    with torch.no_grad():
        prediction, layer2 = torch_mlp.eval()(torch.from_numpy(x))
        reconstruction, features = torch_sae(layer2)
    jax_prediction, jax_layer2 = mlp(x)
    jax_reconstruction, jax_features = sae(jax_layer2)
    for name, ours, ref in (
        ("prediction", jax_prediction, prediction), ("layer2", jax_layer2, layer2),
        ("features", jax_features, features), ("reconstruction", jax_reconstruction, reconstruction),
    ):
        assert_close(f".pth in torch: {name}", np.asarray(ours), ref, ulps(ref, EXPORT_ULPS))


def test_exported_programs_run_without_the_project(models, exported, tmp_path):
    mlp, sae = models
    inputs = {}
    for n in BATCH_SIZES:
        inputs[f"mlp{n}"] = task_rows(n, seed=14 + n)[0]
        inputs[f"sae{n}"] = np.asarray(mlp(task_rows(n, seed=20 + n)[0])[1])
    (tmp_path / "inputs.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    args = [str(exported[name]) for name in ("mlp_torchscript", "mlp_pt2", "sae_torchscript", "sae_pt2")]
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOADER, *args], cwd=tmp_path, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads((tmp_path / "outputs.json").read_text())
    assert len(outputs) == 2 * 2 * len(BATCH_SIZES)
    for key, (first, second) in outputs.items():
        batch, kind = key.split("/")
        x = inputs[batch]
        expected = mlp(x) if batch.startswith("mlp") else sae(x)
        names = ("prediction", "layer2") if batch.startswith("mlp") else ("reconstruction", "features")
        for name, ours, theirs in zip(names, expected, (first, second)):
            theirs = np.asarray(theirs, np.float32)
            assert_close(f"{kind} {name} (batch {len(x)})", np.asarray(ours), theirs, ulps(theirs, EXPORT_ULPS))
