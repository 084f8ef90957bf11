"""SAELens's cached activations as a training source: a cache written by the real sae-lens (its
CacheActivationsRunner, run on a tiny HookedTransformer built from a config, so nothing is downloaded; only its model
loader is replaced; -m slow: importing sae-lens and transformer-lens takes ~10 s) reads back as the model's
activations token by token; a folder of the same layout written with `datasets` alone trains with train-sae; a
damaged or foreign `datasets` folder is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jax_impl.cli import main
from jax_impl.data.activation_sets import SAELensCache, open_activations
from jax_impl.errors import UserError

HOOK = "blocks.0.hook_mlp_out"
CONTEXT, D_MODEL, SEQUENCES = 8, 16, 24


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(folder, the model's activations at HOOK for the cached tokens, (SEQUENCES * CONTEXT, D_MODEL) float32)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sae_lens")
    import sae_lens.cache_activations_runner as runner
    from datasets import Dataset
    from sae_lens.config import CacheActivationsRunnerConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=D_MODEL, n_ctx=CONTEXT, d_head=4, n_heads=4,
                                                      d_vocab=50, act_fn="relu", d_mlp=32))
    tokens = np.random.default_rng(0).integers(0, 50, (SEQUENCES, CONTEXT))
    folder = tmp_path_factory.mktemp("saelens") / "cache"
    cfg = CacheActivationsRunnerConfig(
        dataset_path="unused: override_dataset", model_name="tiny", model_batch_size=4, hook_name=HOOK, d_in=D_MODEL,
        training_tokens=SEQUENCES * CONTEXT, context_size=CONTEXT, new_cached_activations_path=str(folder),
        shuffle=False, streaming=False, prepend_bos=False, buffer_size_gb=SEQUENCES * CONTEXT * D_MODEL * 4 / 2 / 1e9)
    loader = runner.load_model
    runner.load_model = lambda *args, **kwargs: model  # the only part replaced: no download
    try:
        runner.CacheActivationsRunner(cfg, override_dataset=Dataset.from_dict({"input_ids": tokens.tolist()})).run()
    finally:
        runner.load_model = loader
    # The tokens the cache holds, in its order, through the same model: what its rows must be.
    cached_tokens = np.asarray(Dataset.load_from_disk(str(folder)).with_format("numpy")[:]["token_ids"])
    with torch.no_grad():
        _, store = model.run_with_cache(torch.from_numpy(cached_tokens.astype(np.int64)), names_filter=HOOK)
    return folder, store[HOOK].numpy().reshape(-1, D_MODEL).astype(np.float32)


@pytest.mark.slow
def test_the_cache_reads_as_the_models_activations_token_by_token(cache):
    folder, expected = cache
    source = open_activations(folder)
    assert isinstance(source, SAELensCache)
    assert (source.hook, source.context_size, source.n_rows, source.width) == (HOOK, CONTEXT, len(expected), D_MODEL)
    assert len(expected) >= 2 * CONTEXT
    np.testing.assert_allclose(source.rows(0, source.n_rows), expected, rtol=1e-5, atol=1e-6)
    exact = source.rows(0, source.n_rows)
    assert np.array_equal(source.rows(3, 3 * CONTEXT + 5), exact[3:3 * CONTEXT + 5])  # across sequences
    idx = np.random.default_rng(0).integers(0, source.n_rows, 60)
    assert np.array_equal(source.take(idx), exact[idx])
    assert source.fingerprint == open_activations(folder).fingerprint


def test_train_sae_trains_on_a_cache_of_that_layout(tmp_path):
    # CacheActivationsRunner's features: the hook's Array2D (context, d_in) and token_ids, one row per sequence.
    datasets = pytest.importorskip("datasets")
    acts = np.random.default_rng(0).standard_normal((SEQUENCES, CONTEXT, D_MODEL)).astype(np.float32)
    folder = _datasets_folder(tmp_path / "cache", {
        HOOK: datasets.Array2D(shape=(CONTEXT, D_MODEL), dtype="float32"),
        "token_ids": datasets.Sequence(datasets.Value(dtype="int32"), length=CONTEXT),
    }, {HOOK: acts, "token_ids": np.zeros((SEQUENCES, CONTEXT), np.int32)})
    assert np.array_equal(open_activations(folder).rows(0, SEQUENCES * CONTEXT), acts.reshape(-1, D_MODEL))
    out = tmp_path / "out"
    assert main(["train-sae", "--activations", str(folder), "--out", str(out), "--dict-size", "32", "--k", "4",
                 "--epochs", "2", "--batch-size", "32", "--chunk-rows", "64", "--shuffle-buffer", "64"]) == 0
    record = json.loads((out / "sae_config.json").read_text())
    assert record["activations"]["file"] == "cache" and record["activations"]["width"] == D_MODEL
    assert record["shuffle_buffer"] == 64
    assert json.loads((out / "metrics.json").read_text())["explained_variance"] > 0


def _datasets_folder(path: Path, features: dict, columns: dict) -> Path:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("case, message", [
    ("two hooks", "2 Array2D columns ('a', 'b'), expected exactly one"),
    ("float64", "column 'a' has dtype float64, expected float32 (or float16"),
    ("no hook", "0 Array2D columns (none)"),
    ("broken info", "dataset_info.json: not a datasets folder's info"),
    ("broken arrow", "not a readable datasets folder"),
])
def test_a_foreign_or_damaged_datasets_folder_is_one_line(case, message, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    acts = np.zeros((3, 2, 4), np.float32).tolist()
    array = datasets.Array2D(shape=(2, 4), dtype="float32")
    if case == "two hooks":
        folder = _datasets_folder(tmp_path / "f", {"a": array, "b": array}, {"a": acts, "b": acts})
    elif case == "float64":
        folder = _datasets_folder(tmp_path / "f", {"a": datasets.Array2D(shape=(2, 4), dtype="float64")}, {"a": acts})
    elif case == "no hook":
        folder = _datasets_folder(tmp_path / "f", {"t": datasets.Value("int32")}, {"t": [1, 2, 3]})
    else:
        folder = _datasets_folder(tmp_path / "f", {"a": array}, {"a": acts})
        if case == "broken info":
            (folder / "dataset_info.json").write_text("{not json")
        else:
            for arrow in folder.glob("*.arrow"):
                arrow.write_bytes(b"garbage")
    with pytest.raises(UserError) as e:
        open_activations(folder)
    assert message in str(e.value) and "\n" not in str(e.value) and str(folder) in str(e.value)
    assert main(["train-sae", "--activations", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "sae.pth").exists()
