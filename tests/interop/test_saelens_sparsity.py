"""SAELens's `sparsity.safetensors` (feature log10 densities) in the SAELens folders written here.

Checked against the real `sae-lens`: its `SAE.load_from_disk` loads the folder, and its Hugging Face loader
(`SAE.from_pretrained_with_cfg_and_sparsity`, served from the folder on disk instead of the Hub) returns the
densities, which equal log10(share of rows on which the feature fires + 1e-10) counted here with numpy.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jax_impl import saes
from jax_impl.errors import UserError
from jax_impl.interop import bridge, saelens
from jax_impl.training.sae_trainer import SAETrainConfig, fit

WIDTH, DICT = 16, 48
ROWS = np.random.default_rng(5).standard_normal((300, WIDTH)).astype(np.float32)


@pytest.fixture(scope="module")
def sae() -> saes.SAE:
    model = saes.create("relu-l1", WIDTH, DICT, saes.get("relu-l1").config(), key=jax.random.key(3))
    return fit(model, ROWS, SAETrainConfig(epochs=1, batch_size=50), key=jax.random.key(4), log=lambda _: None).model


def _numpy_log_density(sae: saes.SAE) -> np.ndarray:
    _, features = sae(ROWS)
    share = (np.asarray(features) != 0).mean(axis=0)
    return np.log10(share + 1e-10).astype(np.float32)


def _serve_from_disk(monkeypatch, sae_lens, root: Path) -> None:
    """sae-lens's Hub download answered from `root` (a missing file as the Hub's 'entry not found')."""
    from huggingface_hub.utils import EntryNotFoundError

    def download(repo_id: str, filename: str, **_) -> str:
        path = root / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(sae_lens.loading.pretrained_sae_loaders, "hf_hub_download", download)


def test_sae_lens_loads_our_folder_and_its_densities(sae, tmp_path, monkeypatch, sae_lens):
    # streamed in uneven chunks, as a file is read: the same counts as one array
    chunks = [ROWS[:7], ROWS[7:200], ROWS[200:]]
    folder = saelens.save_saelens(sae, tmp_path / "hub" / "mine", activations=iter(chunks))
    expected = _numpy_log_density(sae)
    assert (expected > -10).any() and (expected < 0).any(), "some features fire, not on every row"
    np.testing.assert_allclose(saelens.read_sparsity(folder, DICT), expected, rtol=0, atol=1e-6)

    model = sae_lens.SAE.load_from_disk(folder)
    assert model.cfg.d_sae == DICT
    _serve_from_disk(monkeypatch, sae_lens, tmp_path / "hub")
    loaded, _, sparsity = sae_lens.SAE.from_pretrained_with_cfg_and_sparsity("local/hub", "mine")
    assert sparsity is not None and sparsity.dtype == torch.float32 and tuple(sparsity.shape) == (DICT,)
    np.testing.assert_allclose(sparsity.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(loaded.W_dec.detach().numpy(), np.asarray(sae.params()["w_dec"]))


def test_without_activations_no_densities_are_written_and_a_stale_file_goes(sae, tmp_path, monkeypatch, sae_lens):
    folder = saelens.save_saelens(sae, tmp_path / "hub" / "mine", activations=ROWS)
    assert (folder / saelens.SPARSITY_FILE).is_file()
    saelens.save_saelens(sae, folder)
    assert not (folder / saelens.SPARSITY_FILE).exists()
    assert saelens.read_sparsity(folder) is None
    _serve_from_disk(monkeypatch, sae_lens, tmp_path / "hub")
    assert sae_lens.SAE.from_pretrained_with_cfg_and_sparsity("local/hub", "mine")[2] is None


def test_density_is_given_or_measured_not_both(sae, tmp_path):
    density = saelens.feature_density(sae, ROWS)
    with pytest.raises(ValueError, match="not both"):
        saelens.save_saelens(sae, tmp_path / "a", activations=ROWS, density=density)
    with pytest.raises(ValueError, match="shares"):
        saelens.save_saelens(sae, tmp_path / "b", density=density[:-1])
    saelens.save_saelens(sae, tmp_path / "c", density=density)
    np.testing.assert_array_equal(saelens.read_sparsity(tmp_path / "c"), saelens.log_density(density))


@pytest.mark.parametrize("tensors, message", [
    ({"other": torch.zeros(DICT)}, "no tensor 'sparsity'"),
    ({"sparsity": torch.zeros(DICT - 1)}, rf"shape \({DICT - 1},\), expected \({DICT},\)"),
    ({"sparsity": torch.zeros(DICT, dtype=torch.float64)}, "dtype float64, expected float32"),
    ({"sparsity": torch.full((DICT,), 0.5)}, "values > 0"),
    ({"sparsity": torch.full((DICT,), float("nan"))}, "NaN"),
])
def test_a_damaged_sparsity_file_is_refused_in_one_line(sae, tmp_path, tensors, message):
    folder = saelens.save_saelens(sae, tmp_path / "f", activations=ROWS)
    bridge.write_safetensors(tensors, folder / saelens.SPARSITY_FILE)
    with pytest.raises(UserError, match=message) as caught:
        saelens.load_saelens(folder, input_dim=WIDTH)
    assert str(caught.value).startswith(str(folder / saelens.SPARSITY_FILE)) and "\n" not in str(caught.value)
