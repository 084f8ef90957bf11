"""`monosem train-sae` on activations of a width the project never uses: every architecture trains, writes
its files, and its `.pth` loads strictly into torch_ref in a process that cannot import jax_impl, where
independent torch code recomputes the features. Bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ACTIVATION_ROWS as ROWS
from conftest import ACTIVATION_WIDTH as WIDTH
from jax_impl import saes
from jax_impl.cli import main
from jax_impl.interop import saelens
from jax_impl.jobs.rundir import METRICS_FILE, SAE_FILE
from jax_impl.jobs.rundir import SAE_CONFIG_FILE as CONFIG_FILE

REPO = Path(__file__).resolve().parents[2]
DICT = 48
ARCH_FLAGS = {
    "relu-l1": [], "anthropic": ["--l1-coeff", "1e-3", "--resample-every", "1"], "topk": ["--k", "6"],
    "batchtopk": ["--k", "6"], "matryoshka": ["--k", "6", "--matryoshka-groups", "8,24,48"], "jumprelu": ["--l0-coeff", "1e-3"],
}


# Independent torch code: the inference activation of each architecture from the raw state_dict tensors.
CHECK = r"""
import json, sys
sys.modules["jax_impl"] = None  # importing any of jax_impl now fails: torch_ref must stand alone
sys.modules["jax"] = None
import numpy as np, torch
from monosem_torch_ref.saes import sae_from_state_dict, architecture_of
sd = torch.load(sys.argv[1], weights_only=True)
x = torch.from_numpy(np.load(sys.argv[2]))
name = architecture_of(sd)
sae = sae_from_state_dict(sd)
with torch.no_grad():
    recon, features = sae(x)
w_enc, b_enc, w_dec = sd["encoder.weight"], sd["encoder.bias"], sd["decoder.weight"]
b_dec = sd["decoder.bias"] if name == "relu-l1" else sd["b_dec"]
pre = (x if name == "relu-l1" else x - b_dec) @ w_enc.T + b_enc
if name in ("relu-l1", "anthropic"):
    expected = pre.clamp(min=0)
elif name == "topk":
    kth = pre.topk(int(sd["k"]), dim=1).values[:, -1:]
    expected = torch.where(pre >= kth, pre.clamp(min=0), 0.0)
else:  # batchtopk, matryoshka: one threshold; jumprelu: one per feature
    expected = torch.where(pre > sd["threshold"], pre, 0.0)
print(json.dumps({"name": name, "features": float((features - expected).abs().max()),
                  "recon": float((recon - (expected @ w_dec.T + b_dec)).abs().max())}))
"""


@pytest.mark.parametrize("variant", list(ARCH_FLAGS))
def test_every_architecture_trains_and_loads_in_torch_alone(variant, activations, tmp_path):
    out = tmp_path / "out"
    argv = ["train-sae", "--activations", str(activations), "--out", str(out), "--variant", variant,
            "--dict-size", str(DICT), "--epochs", "3", "--batch-size", "100", *ARCH_FLAGS[variant]]
    assert main(argv) == 0
    metrics = json.loads((out / METRICS_FILE).read_text())
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["architecture"] == variant and config["input_dim"] == WIDTH and config["dict_size"] == DICT
    assert 0.0 < metrics["explained_variance"] <= 1.0 and 0 < metrics["l0"] <= DICT
    if variant in ("topk",):
        assert metrics["l0"] <= 6
    check = subprocess.run([sys.executable, "-c", CHECK, str(out / SAE_FILE), str(activations)],
                           cwd=REPO, capture_output=True, text=True, check=True)
    result = json.loads(check.stdout)
    assert result["name"] == variant
    assert result["features"] <= 1e-4 and result["recon"] <= 1e-4, result


def test_streamed_chunks_train_the_same_architecture(activations, tmp_path):
    """A file several times the chunk trains chunk by chunk (each chunk one compiled program)."""
    out = tmp_path / "out"
    assert main(["train-sae", "--activations", str(activations), "--out", str(out), "--variant", "batchtopk",
                 "--dict-size", str(DICT), "--epochs", "3", "--batch-size", "100", "--k", "6", "--chunk-rows", "300"]) == 0
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["rows"] == ROWS and metrics["explained_variance"] > 0.2
    # the SAELens folder's feature densities, counted chunk by chunk, are those of every row at once
    sae = saelens.load_saelens(out / "saelens", input_dim=WIDTH)
    _, features = sae(np.load(activations))
    share = (np.asarray(features) != 0).mean(axis=0)
    assert 0 < share.max() < 1
    np.testing.assert_allclose(saelens.read_sparsity(out / "saelens", DICT), np.log10(share + 1e-10), atol=1e-6)


def _write_pickle_bomb(path: Path) -> Path:
    class Bomb:
        def __reduce__(self):
            return (Path.touch, (path.with_suffix(".exploded"),))

    torch.save(Bomb(), path)
    return path


BAD_INPUTS = {
    "missing": (lambda d: d / "nope.npy", "file not found"),
    "rank": (lambda d: _save(d / "a.npy", np.zeros((4, 3, 2), np.float32)), "2-D"),
    "empty": (lambda d: _save(d / "a.npy", np.zeros((0, 5), np.float32)), "0 rows"),
    "nan": (lambda d: _save(d / "a.npy", np.full((400, 5), np.nan, np.float32)), "NaN"),
    "int": (lambda d: _save(d / "a.npy", np.zeros((400, 5), np.int32)), "float32"),
    "float64": (lambda d: _save(d / "a.npy", np.zeros((400, 5))), "float64"),
    "pickle": (lambda d: _write_pickle_bomb(d / "a.pt"), "refused"),
    "two tensors": (lambda d: _save_st(d / "a.safetensors", {"a": np.zeros((4, 5), np.float32),
                                                            "b": np.zeros((4, 5), np.float32)}), "holds 2 tensors"),
}


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _save_st(path: Path, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_activation_files_are_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    make, fragment = BAD_INPUTS[case]
    path = make(tmp_path)
    out = tmp_path / "out"
    code = main(["train-sae", "--activations", str(path), "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err and fragment.lower() in err.lower(), err
    assert not out.exists()
    assert not path.with_suffix(".exploded").exists()


def test_flags_of_another_architecture_are_refused(activations, tmp_path, capsys):
    code = main(["train-sae", "--activations", str(activations), "--out", str(tmp_path / "o"), "--variant", "jumprelu", "--k", "4"])
    assert code == 2 and "--k does not apply to --variant jumprelu" in capsys.readouterr().err


def test_registry_names_every_architecture_once():
    assert set(saes.NAMES) == {"relu-l1", "topk", "anthropic", "batchtopk", "matryoshka", "jumprelu"}
    keys = [frozenset(a.config_keys()) for a in saes.REGISTRY.values()]
    assert len(set(keys)) == len(keys)


def test_default_matryoshka_groups_are_saved_resolved(tmp_path):
    import jax

    from jax_impl.interop import bridge
    from monosem_torch_ref.saes import sae_from_state_dict

    sae = saes.create("matryoshka", WIDTH, 64, key=jax.random.key(0))
    assert sae.cfg.groups == (8, 16, 32, 64)
    bridge.save_sae(sae, tmp_path / "m.pth")
    assert sae_from_state_dict(torch.load(tmp_path / "m.pth", weights_only=True)).group_ends.tolist() == [8, 16, 32, 64]
    assert bridge.load_sae(tmp_path / "m.pth", input_dim=WIDTH).cfg == sae.cfg


@pytest.mark.parametrize("variant", list(ARCH_FLAGS))
def test_same_seed_same_bytes(variant, activations, tmp_path):
    argv = ["--activations", str(activations), "--variant", variant, "--dict-size", str(DICT), "--epochs", "2",
            "--batch-size", "100", *ARCH_FLAGS[variant]]
    for name in ("a", "b"):
        assert main(["train-sae", *argv, "--out", str(tmp_path / name)]) == 0
    files = [SAE_FILE, "sae.safetensors", "saelens/sae_weights.safetensors", "saelens/cfg.json",
             "saelens/sparsity.safetensors", CONFIG_FILE]
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    metrics = [json.loads((tmp_path / n / METRICS_FILE).read_text()) for n in ("a", "b")]
    assert [{k: v for k, v in m.items() if k != "train_seconds"} for m in metrics] == [
        {k: v for k, v in metrics[0].items() if k != "train_seconds"}] * 2


def test_a_second_writer_into_the_same_out_folder_is_refused(activations, tmp_path, capsys):
    from jax_impl.files.locks import LOCK_FILE, folder_lock

    out = tmp_path / "out"
    argv = ["train-sae", "--activations", str(activations), "--out", str(out), "--epochs", "1", "--batch-size", "100"]
    with folder_lock(out, flag="--out", what="output folder"):  # another open file: flock refuses it as another process
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "is using this output folder" in err, err
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written
    assert main(argv) == 0 and (out / SAE_FILE).exists()  # released: the next one trains
