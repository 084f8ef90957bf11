"""SAELens's on-disk format, checked against the real `sae-lens` package (the `interop` extra).

Ours -> SAELens: every architecture written by jax_impl.interop.saelens loads with `sae_lens.SAE.load_from_disk`, and
SAELens's encode/decode equal ours on every row. SAELens -> ours: folders that SAELens itself saves (each of its
inference architectures, and its training BatchTopK / Matryoshka files) load into ours with equal outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jax_impl import saes
from jax_impl.cli import main
from jax_impl.errors import UserError
from jax_impl.interop import saelens
from jax_impl.training.sae_trainer import SAETrainConfig, fit

WIDTH, DICT = 24, 64
ROWS = np.random.default_rng(0).standard_normal((400, WIDTH)).astype(np.float32)


def _trained(name: str) -> saes.SAE:
    arch = saes.get(name)
    cfg = arch.config()
    if any(f.name == "k" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, k=4)
    sae = saes.create(name, WIDTH, DICT, cfg, key=jax.random.key(1))
    return fit(sae, ROWS, SAETrainConfig(epochs=2, batch_size=64), key=jax.random.key(2), log=lambda line: None).model


def _ours(sae: saes.SAE) -> tuple[np.ndarray, np.ndarray]:
    reconstruction, features = sae(ROWS)
    return np.asarray(features), np.asarray(reconstruction)


def _theirs(model) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        features = model.encode(torch.from_numpy(ROWS))
        return features.numpy(), model.decode(features).numpy()


@pytest.mark.parametrize("name", saes.NAMES)
def test_sae_lens_loads_ours_and_computes_the_same(name, tmp_path, sae_lens):
    sae = _trained(name)
    folder = saelens.save_saelens(sae, tmp_path / name)
    model = sae_lens.SAE.load_from_disk(folder)
    assert model.cfg.architecture() == sae.arch.saelens.architecture
    features, reconstruction = _ours(sae)
    assert (features > 0).any(), "a trained SAE fires"
    theirs_f, theirs_r = _theirs(model)
    np.testing.assert_array_equal(theirs_f > 0, features > 0)  # the same features fire on every row
    np.testing.assert_allclose(theirs_f, features, rtol=0, atol=1e-5)
    np.testing.assert_allclose(theirs_r, reconstruction, rtol=0, atol=1e-5)
    # and it reads back here as exactly the SAE that was saved
    back = saelens.load_saelens(folder, input_dim=None)
    assert back.arch is sae.arch and back.cfg == sae.cfg
    np.testing.assert_array_equal(_ours(back)[0], features)


def _saved_by_sae_lens(sae_lens, architecture: str, folder: Path, **cfg):
    """An SAE SAELens builds and saves itself, with random (non-zero) weights."""
    sae_cls, cfg_cls = sae_lens.registry.get_sae_class(architecture)
    model = sae_cls(cfg_cls(d_in=WIDTH, d_sae=DICT, **cfg))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
        if "threshold" in dict(model.named_parameters()):
            model.threshold.abs_()
    model.save_model(folder)
    return model


@pytest.mark.parametrize(("architecture", "cfg", "ours"), [
    ("standard", {"apply_b_dec_to_input": True}, "anthropic"),
    ("standard", {"apply_b_dec_to_input": False}, "relu-l1"),
    ("topk", {"k": 5}, "topk"),
    ("jumprelu", {}, "jumprelu"),
])
def test_sae_lens_saved_folders_load_into_ours(architecture, cfg, ours, tmp_path, sae_lens):
    model = _saved_by_sae_lens(sae_lens, architecture, tmp_path / "sae", **cfg)
    sae = saelens.load_saelens(tmp_path / "sae", input_dim=WIDTH)
    assert sae.arch.name == ours
    if ours == "topk":
        assert sae.cfg.k == 5
    features, reconstruction = _ours(sae)
    theirs_f, theirs_r = _theirs(model)
    assert (theirs_f > 0).any() and not (theirs_f > 0).all()
    np.testing.assert_array_equal(features > 0, theirs_f > 0)
    np.testing.assert_allclose(features, theirs_f, rtol=0, atol=1e-5)
    np.testing.assert_allclose(reconstruction, theirs_r, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("architecture", "cfg", "ours"), [
    ("batchtopk", {"k": 6}, "batchtopk"),
    ("matryoshka_batchtopk", {"k": 6, "matryoshka_widths": [16, 32, DICT]}, "matryoshka"),
])
def test_sae_lens_training_batchtopk_files_load_into_ours(architecture, cfg, ours, tmp_path, sae_lens):
    """SAELens's trainer saves a BatchTopK with its running `topk_threshold`; its inference form (what
    `save_inference_model` writes) is a JumpReLU with that threshold in every feature: ours must equal it."""
    sae_cls, cfg_cls = sae_lens.registry.get_sae_training_class(architecture)
    model = sae_cls(cfg_cls(d_in=WIDTH, d_sae=DICT, **cfg))
    with torch.no_grad():
        model.topk_threshold.fill_(0.05)
        model.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
    model.save_model(tmp_path / "training")
    model.save_inference_model(tmp_path / "inference")
    sae = saelens.load_saelens(tmp_path / "training", input_dim=WIDTH)
    assert sae.arch.name == ours and sae.cfg.k == 6
    if ours == "matryoshka":
        assert sae.cfg.groups == (16, 32, DICT)
    assert float(sae.buffers()["threshold"]) == pytest.approx(0.05)
    inference = sae_lens.SAE.load_from_disk(tmp_path / "inference")
    features, reconstruction = _ours(sae)
    theirs_f, theirs_r = _theirs(inference)
    assert (theirs_f > 0).any()
    np.testing.assert_allclose(features, theirs_f, rtol=0, atol=1e-5)
    np.testing.assert_allclose(reconstruction, theirs_r, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- bad folders: one line each


def _folder(tmp_path: Path, name: str = "topk") -> Path:
    return saelens.save_saelens(_trained(name), tmp_path / "sae")


def _edit_cfg(folder: Path, **changes) -> None:
    path = folder / saelens.CFG_FILE
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _edit_tensors(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / saelens.WEIGHTS_FILE
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: (f / saelens.CFG_FILE).unlink(), "no cfg.json; expected a SAELens SAE folder"),
    (lambda f: (f / saelens.CFG_FILE).write_text("{oops"), "cfg.json: not readable JSON"),
    (lambda f: _edit_cfg(f, d_sae="many"), "key 'd_sae' is 'many', expected a positive integer"),
    (lambda f: _edit_cfg(f, normalize_activations="layer_norm"), "key 'normalize_activations' is 'layer_norm'; only 'none'"),
    (lambda f: _edit_cfg(f, architecture="gated"), "SAELens architecture 'gated' with apply_b_dec_to_input true is not one we read"),
    (lambda f: _edit_cfg(f, k=0), "config {'k': 0"),
    (lambda f: (f / saelens.WEIGHTS_FILE).write_bytes(b"garbage"), "sae_weights.safetensors: not a readable .safetensors file"),
    (lambda f: _edit_tensors(f, lambda t: t.pop("b_enc")), "missing tensors ['b_enc']"),
    (lambda f: _edit_tensors(f, lambda t: t.update(extra=torch.zeros(2))), "unexpected tensors ['extra']"),
    (lambda f: _edit_tensors(f, lambda t: t.update(W_dec=t["W_dec"].T.contiguous())),
     f"tensor 'W_dec' has shape ({WIDTH}, {DICT}), expected ({DICT}, {WIDTH})"),
    (lambda f: _edit_tensors(f, lambda t: t.update(W_enc=t["W_enc"].to(torch.bfloat16))),
     "tensor 'W_enc' has dtype bfloat16, expected float32"),
    (lambda f: _edit_tensors(f, lambda t: t["b_dec"].fill_(float("nan"))), "tensor 'b_dec' contains NaN"),
])
def test_bad_saelens_folders_get_one_line(tmp_path, damage, message):
    folder = _folder(tmp_path)
    # a plain SAELens topk file (no metadata of ours), so that the cfg's own k is what is read
    cfg = json.loads((folder / saelens.CFG_FILE).read_text())
    del cfg["metadata"]["monosem"]
    (folder / saelens.CFG_FILE).write_text(json.dumps(cfg))
    damage(folder)
    with pytest.raises(UserError) as e:
        saelens.load_saelens(folder, input_dim=None)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_batchtopk_threshold_that_differs_between_features_is_refused(tmp_path):
    folder = saelens.save_saelens(_trained("batchtopk"), tmp_path / "sae")
    _edit_tensors(folder, lambda t: t["threshold"].__setitem__(0, 9.0))
    with pytest.raises(UserError, match="differs between features; the batchtopk architecture has one threshold"):
        saelens.load_saelens(folder, input_dim=None)


def test_width_is_checked(tmp_path):
    with pytest.raises(UserError, match="d_in is 24, expected 512"):
        saelens.load_saelens(_folder(tmp_path))


# --------------------------------------------------------------------------- the run and the CLI


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_writes_a_saelens_folder_that_equals_its_sae(tiny_run):
    from jax_impl.jobs.rundir import SAELENS_DIR, load_run

    run = load_run(tiny_run, log=lambda line: None)
    folder = tiny_run / SAELENS_DIR
    cfg = json.loads((folder / saelens.CFG_FILE).read_text())
    assert cfg["metadata"]["hook_name"] == "layer2" and cfg["d_in"] == 512
    assert str(tiny_run) not in (folder / saelens.CFG_FILE).read_text()  # no absolute paths in artifacts
    back = saelens.load_saelens(folder)
    for name, value in run.sae.params().items():
        np.testing.assert_array_equal(np.asarray(back.params()[name]), np.asarray(value))
    # its feature densities: on the training activations the SAE was trained on
    _, features = run.sae(run.activations)
    share = (np.asarray(features) != 0).mean(axis=0)
    np.testing.assert_allclose(saelens.read_sparsity(folder, run.sae.dict_size), np.log10(share + 1e-10), atol=1e-6)


def test_atlas_probe_report_accept_a_saelens_folder(tiny_run, tmp_path, capsys, sae_lens):
    folder = tmp_path / "theirs"
    _saved_by_sae_lens_for_layer2(sae_lens, folder)
    own = {p: _sha(p) for p in (tiny_run / "feature_atlas.json", tiny_run / "circuit_trace_detailed.xlsx")}

    assert main(["atlas", "--run-dir", str(tiny_run), "--sae", str(folder), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "feature_atlas.json").read_text())
    assert doc["summary"]["features"] == 96  # the SAELens SAE's width, not the run's 512
    assert main(["report", "--run-dir", str(tiny_run), "--sae", str(folder), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "circuit_trace_detailed.xlsx").exists()
    capsys.readouterr()
    assert main(["probe", "--run-dir", str(tiny_run), "--sae", str(folder)]) == 0
    assert "Feature" in capsys.readouterr().out
    assert {p: _sha(p) for p in own} == own  # the run's own atlas and reports are untouched


def _saved_by_sae_lens_for_layer2(sae_lens, folder: Path) -> None:
    sae_cls, cfg_cls = sae_lens.registry.get_sae_class("topk")
    model = sae_cls(cfg_cls(d_in=512, d_sae=96, k=8))
    model.save_model(folder)


def test_writing_commands_need_out_with_sae(tiny_run, tmp_path, capsys):
    folder = saelens.save_saelens(_trained("topk"), tmp_path / "sae")
    assert main(["atlas", "--run-dir", str(tiny_run), "--sae", str(folder)]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    assert main(["atlas", "--run-dir", str(tiny_run), "--sae", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "d_in is 24, expected 512" in err and "\n" not in err
