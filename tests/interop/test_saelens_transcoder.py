"""Transcoders in SAELens's on-disk format, checked against the real `sae-lens` package (the `interop` extra).

Ours -> folder -> ours gives back the same state_dict bytes; ours -> folder -> `sae_lens.SAE.load_from_disk` computes
the same prediction and features as our JAX transcoder, for every architecture SAELens has a transcoder of, with and
without the skip connection; a folder SAELens itself saves (each of its four transcoders, random weights) reads here
as a working transcoder with its outputs; a topk transcoder is written in our format only, and says so in one line.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import saes
from jax_impl.errors import UserError
from jax_impl.interop import saelens
from jax_impl.saes.base import numpy_state

D_IN, D_OUT, DICT, K = 20, 12, 64, 4
ROWS = np.random.default_rng(0).standard_normal((200, D_IN)).astype(np.float32)
CONFIGS = {
    "relu-l1": None, "anthropic": None, "jumprelu": saes.jumprelu.Config(init_threshold=0.05),
    "batchtopk": saes.batchtopk.Config(k=K), "matryoshka": saes.matryoshka.Config(groups=(16, 32, DICT), k=K),
}
# Our architecture -> the SAELens transcoder it is written as (without, with the skip connection).
WRITTEN = {
    "relu-l1": ("transcoder", "skip_transcoder"), "anthropic": ("transcoder", "skip_transcoder"),
    "jumprelu": ("jumprelu_transcoder", "jumprelu_skip_transcoder"),
    "batchtopk": ("jumprelu_transcoder", "jumprelu_skip_transcoder"),
    "matryoshka": ("jumprelu_transcoder", "jumprelu_skip_transcoder"),
}
CASES = [(name, skip) for name in WRITTEN for skip in (False, True)]
IDS = [f"{name}-{'skip' if skip else 'plain'}" for name, skip in CASES]


def _transcoder(name: str, skip: bool) -> saes.SAE:
    """A transcoder with every tensor non-trivial (random biases and skip, a positive threshold), so that a
    dropped or transposed tensor shows in the outputs."""
    sae = saes.create(name, D_IN, DICT, CONFIGS[name], key=jax.random.key(1), output_dim=D_OUT, skip=skip)
    keys = jax.random.split(jax.random.key(2), 3)
    sae.p["b_enc"][...] = 0.3 * jax.random.normal(keys[0], (DICT,))
    sae.p["b_dec"][...] = 0.3 * jax.random.normal(keys[1], (D_OUT,))
    if skip:
        sae.p["w_skip"][...] = 0.3 * jax.random.normal(keys[2], (D_IN, D_OUT))
    if "threshold" in sae.b:
        sae.b["threshold"][...] = jnp.asarray(0.1, jnp.float32)
    return sae


def _ours(sae: saes.SAE) -> tuple[np.ndarray, np.ndarray]:
    prediction, features = sae(jnp.asarray(ROWS))
    return np.asarray(prediction), np.asarray(features)


def _theirs(model) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        prediction, features = model.forward_with_activations(torch.from_numpy(ROWS))
    return prediction.numpy(), features.numpy()


def _assert_same_outputs(ours: tuple[np.ndarray, np.ndarray], theirs: tuple[np.ndarray, np.ndarray]) -> None:
    (prediction, features), (their_prediction, their_features) = ours, theirs
    assert (features > 0).any() and not (features > 0).all(), "features fire on some rows, not all"
    np.testing.assert_array_equal(features > 0, their_features > 0)  # the same features fire on every row
    np.testing.assert_allclose(features, their_features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prediction, their_prediction, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "skip"), CASES, ids=IDS)
def test_ours_round_trips_and_sae_lens_computes_the_same(name: str, skip: bool, tmp_path, sae_lens) -> None:
    sae = _transcoder(name, skip)
    folder = saelens.save_saelens(sae, tmp_path / "tc", hook_name="layer1")
    cfg = json.loads((folder / saelens.CFG_FILE).read_text())
    assert cfg["architecture"] == WRITTEN[name][skip] and cfg["d_out"] == D_OUT and cfg["apply_b_dec_to_input"] is False
    # ours -> folder -> ours: exactly the transcoder saved (architecture, config, every tensor's bytes)
    back = saelens.load_saelens(folder, input_dim=D_IN, output_dim=D_OUT)
    assert back.arch is sae.arch and back.cfg == sae.cfg and back.transcoder and back.skip == skip
    before, after = numpy_state(sae), numpy_state(back)
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].tobytes() == value.tobytes() and after[key].dtype == value.dtype, key
    # ours -> folder -> SAELens
    model = sae_lens.SAE.load_from_disk(folder)
    assert model.cfg.architecture() == WRITTEN[name][skip] and model.cfg.d_out == D_OUT
    _assert_same_outputs(_ours(sae), _theirs(model))


def _saved_by_sae_lens(sae_lens, architecture: str, folder) -> torch.nn.Module:
    """A transcoder SAELens builds and saves itself, with random (non-zero) weights and positive thresholds."""
    sae_cls, cfg_cls = sae_lens.registry.get_sae_class(architecture)
    model = sae_cls(cfg_cls(d_in=D_IN, d_sae=DICT, d_out=D_OUT, apply_b_dec_to_input=False))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
            if name == "threshold":
                tensor.abs_()
    model.save_model(folder)
    return model.eval()


@pytest.mark.parametrize(("architecture", "ours"), [
    ("transcoder", "relu-l1"), ("skip_transcoder", "relu-l1"),
    ("jumprelu_transcoder", "jumprelu"), ("jumprelu_skip_transcoder", "jumprelu"),
])
def test_sae_lens_saved_transcoders_load_into_ours(architecture: str, ours: str, tmp_path, sae_lens) -> None:
    model = _saved_by_sae_lens(sae_lens, architecture, tmp_path / "tc")
    sae = saelens.load_saelens(tmp_path / "tc", input_dim=D_IN)
    assert sae.arch.name == ours and sae.transcoder and sae.skip == ("skip" in architecture)
    assert (sae.input_dim, sae.dict_size, sae.output_dim) == (D_IN, DICT, D_OUT)
    if sae.skip:
        np.testing.assert_array_equal(np.asarray(sae.params()["w_skip"]), model.W_skip.detach().numpy().T)
    _assert_same_outputs(_ours(sae), _theirs(model))


def test_topk_transcoder_is_written_in_our_format_only_and_says_so(tmp_path) -> None:
    sae = saes.create("topk", D_IN, DICT, saes.topk.Config(k=K), key=jax.random.key(0), output_dim=D_OUT, skip=True)
    lines: list[str] = []
    assert saelens.save_saelens(sae, tmp_path / "tc", log=lines.append) is None
    assert not (tmp_path / "tc").exists()
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "SAELens has no topk transcoder" in lines[0] and "our state_dict format only" in lines[0]
    assert saelens.saelens_architecture(sae) is None
    with pytest.raises(ValueError, match="SAELens has no form of a topk transcoder"):
        saelens.saelens_state(sae)
    # the SAE of the same architecture still has its SAELens form
    assert saelens.saelens_architecture(saes.create("topk", D_IN, DICT, key=jax.random.key(0))) == "topk"


def test_transcoder_widths_and_bias_setting_are_checked(tmp_path) -> None:
    folder = saelens.save_saelens(_transcoder("jumprelu", True), tmp_path / "tc")
    with pytest.raises(UserError, match=f"d_out is {D_OUT}, expected 7"):
        saelens.load_saelens(folder, input_dim=D_IN, output_dim=7)
    cfg = json.loads((folder / saelens.CFG_FILE).read_text())
    (folder / saelens.CFG_FILE).write_text(json.dumps(cfg | {"apply_b_dec_to_input": True}))
    with pytest.raises(UserError) as e:
        saelens.load_saelens(folder, input_dim=None)
    assert "key 'apply_b_dec_to_input' is true, expected false" in str(e.value) and "\n" not in str(e.value)
    (folder / saelens.CFG_FILE).write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_out"}))
    with pytest.raises(UserError, match="'d_out'"):
        saelens.load_saelens(folder, input_dim=None)
    from safetensors.torch import load_file, save_file

    (folder / saelens.CFG_FILE).write_text(json.dumps(cfg))
    tensors = load_file(folder / saelens.WEIGHTS_FILE)
    save_file(tensors | {"W_skip": tensors["W_skip"].T.contiguous()}, folder / saelens.WEIGHTS_FILE)
    with pytest.raises(UserError, match=f"tensor 'W_skip' has shape \\({D_IN}, {D_OUT}\\), expected \\({D_OUT}, {D_IN}\\)"):
        saelens.load_saelens(folder, input_dim=None)
    save_file({k: v for k, v in tensors.items() if k != "W_skip"}, folder / saelens.WEIGHTS_FILE)
    with pytest.raises(UserError, match=r"missing tensors \['W_skip'\]"):
        saelens.load_saelens(folder, input_dim=None)
