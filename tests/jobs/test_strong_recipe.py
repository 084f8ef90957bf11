"""`--recipe strong`: online-data MLP training, the topk/anthropic SAEs, their config and pipeline wiring."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jax_impl import saes
from jax_impl.cli import _config_from_args, build_parser
from jax_impl.errors import UserError
from jax_impl.interop import bridge
from jax_impl.jobs.run_config import RunConfig, strong_recipe
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.saes.anthropic import resample_dead
from jax_impl.saes.base import TrainContext
from jax_impl.task.pointer import TaskShape, generate_splits
from jax_impl.training import sae_trainer
from jax_impl.training.mlp_trainer import MLPConfig, evaluation_mse
from jax_impl.training.online import fit_mlp_online
from jax_impl.training.sae_trainer import SAETrainConfig


def _config(*argv: str) -> RunConfig:
    return _config_from_args(build_parser().parse_args(["run", *argv]))


# --------------------------------------------------------------------------- config and CLI


def test_seed_recipe_stays_the_default():
    assert _config() == RunConfig()
    assert RunConfig().mlp.data == "split" and RunConfig().sae.variant == "relu-l1"


def test_recipe_strong_sets_defaults_that_flags_override():
    assert _config("--recipe", "strong") == strong_recipe()
    config = _config("--recipe", "strong", "--sae-k", "3", "--mlp-epochs", "2")
    assert config.recipe == "strong" and config.sae.architecture.k == 3 and config.mlp.epochs == 2
    assert config.mlp.data == "online" and config.sae.variant == "topk"
    assert _config("--sae-variant", "anthropic").sae.variant == "anthropic"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--sae-variant", "gated"), "--sae-variant must be one of relu-l1, topk, anthropic"),
        (("--mlp-data", "stream"), "--mlp-data must be one of split, online"),
        (("--sae-variant", "topk", "--sae-k", "600", "--dict-size", "512"),
         r"--sae-variant topk: k must be in 1\.\.512 \(the dictionary size\), got 600"),
    ],
)
def test_bad_choices_are_named(argv, fragment):
    with pytest.raises(UserError, match=fragment):
        _config(*argv)


def test_architecture_fields_live_in_the_architecture_config():
    from jax_impl import saes

    assert RunConfig().sae.architecture == saes.relu_l1.Config()
    config = _config("--sae-variant", "matryoshka", "--matryoshka-groups", "64,256,2048", "--sae-k", "16")
    assert config.sae.architecture == saes.matryoshka.Config(groups=(64, 256, 2048), k=16)
    assert _config("--sae-variant", "jumprelu", "--sae-l0-coeff", "0.01").sae.architecture.l0_coeff == 0.01
    # the strong recipe's topk settings do not leak into another variant: it starts from its own defaults
    assert _config("--recipe", "strong", "--sae-variant", "anthropic").sae.architecture == saes.anthropic.Config()
    with pytest.raises(UserError, match=r"--sae-k does not apply to --sae-variant relu-l1 \(its flags: --l1-coeff\)"):
        _config("--sae-k", "8")
    with pytest.raises(UserError, match="--l1-coeff does not apply to --sae-variant topk"):
        _config("--recipe", "strong", "--l1-coeff", "1e-3")


def test_configs_round_trip_through_the_manifest_and_old_flat_manifests_read():
    import json

    from jax_impl import saes

    for config in (RunConfig(), strong_recipe(), _config("--sae-variant", "matryoshka", "--matryoshka-groups", "8,2048")):
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    flat = RunConfig().to_dict()  # as manifests were written before the architectures had configs of their own
    del flat["sae"]["architecture"]
    flat["sae"] |= {"variant": "topk", "k": 12, "aux_coeff": 0.5, "l1_coeff": 1e-4, "resample_every": 25}
    assert RunConfig.from_dict(flat).sae.architecture == saes.topk.Config(k=12, aux_coeff=0.5)


def test_manifests_from_before_the_recipe_field_still_read():
    d = RunConfig().to_dict()
    del d["recipe"]
    assert RunConfig.from_dict(d) == RunConfig()


# --------------------------------------------------------------------------- online MLP


def test_online_training_learns_from_fresh_rows():
    shape = TaskShape()
    val = generate_splits(jax.random.key(9), {"val": 256})["val"]
    cfg = dataclasses.replace(MLPConfig(), epochs=8, batch_size=128, log_every=4)
    model = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    before = np.asarray(model.input.kernel[...]).copy()
    lines: list[str] = []
    first = fit_mlp_online(model, cfg, shape, n_train=4096, key=jax.random.key(1), val=(val.inputs, val.targets),
                           log=lines.append)
    assert first.step_losses.shape == (8, 32)  # epochs x ceil(4096 / 128)
    assert [line.split(" |")[0] for line in lines] == ["Epoch 4", "Epoch 8"]
    np.testing.assert_array_equal(np.asarray(model.input.kernel[...]), before)  # the caller's model is untouched
    # 256 steps only learn the start of the task, but clearly better than predicting the mean target
    # (whose MSE is the target variance; wrong targets or inputs in the sampler would not get below it).
    assert evaluation_mse(first.model, val.inputs, val.targets) < 0.8 * np.var(val.targets)
    # Every step sees new rows: no two steps share a loss, as they would if batches were reused.
    assert len(np.unique(first.step_losses)) == first.step_losses.size


def test_online_training_is_deterministic_given_its_key():
    cfg = dataclasses.replace(MLPConfig(), epochs=2, batch_size=32)

    def losses(seed: int) -> np.ndarray:
        model = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
        return fit_mlp_online(model, cfg, TaskShape(), n_train=128, key=jax.random.key(seed)).step_losses

    np.testing.assert_array_equal(losses(1), losses(1))


# --------------------------------------------------------------------------- SAE variants


def _activations(n: int = 256, d: int = 32) -> np.ndarray:
    """Sparse non-negative rows built from 16 directions, like a ReLU layer's output."""
    rng = np.random.default_rng(0)
    codes = rng.random((n, 16)) * (rng.random((n, 16)) < 0.2)
    return (codes @ np.abs(rng.normal(size=(16, d)))).astype(np.float32)


def test_topk_keeps_k_features_and_unit_decoder_rows():
    x = _activations()
    sae = saes.create("topk", 32, 48, saes.topk.Config(k=5), key=jax.random.key(0))
    result = sae_trainer.fit(sae, x, SAETrainConfig(epochs=3, batch_size=64), key=jax.random.key(0), log=lambda _: None)
    reconstruction, features = result.model(jnp.asarray(x))
    assert int((np.asarray(features) > 0).sum(axis=1).max()) <= 5
    np.testing.assert_allclose(np.linalg.norm(np.asarray(result.model.params()["w_dec"]), axis=1), 1.0, atol=1e-5)
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_auxk_gives_dead_latents_a_gradient_only_when_they_are_dead():
    x = jnp.asarray(_activations(64))
    sae = saes.create("topk", 32, 48, saes.topk.Config(k=4, aux_coeff=1 / 32), key=jax.random.key(0))
    p = sae.params() | {"b_dec": jnp.mean(x, axis=0)}
    # Latents 40..47 never reach the top k, and their pre-activations are negative on every row.
    p["b_enc"] = p["b_enc"].at[40:].set(-100.0)
    dead = jnp.arange(48) >= 40

    def grad_b_enc(dead_mask):
        return jax.grad(lambda q: sae.arch.loss(q, {}, sae.arch.batch(x), TrainContext(dead_mask), sae.cfg)[0])(p)["b_enc"]

    assert np.all(np.asarray(grad_b_enc(dead))[40:] != 0)
    np.testing.assert_array_equal(np.asarray(grad_b_enc(jnp.zeros(48, bool)))[40:], 0.0)


def test_anthropic_resampling_revives_dead_features_with_fresh_moments():
    import optax

    x = jnp.asarray(_activations(128))
    sae = saes.create("anthropic", 32, 48, key=jax.random.key(0))
    p = sae.params() | {"b_dec": jnp.mean(x, axis=0)}
    p["b_enc"] = p["b_enc"].at[:6].set(-1e3)  # dead on every row
    tx = optax.adam(1e-3)
    opt_state = tx.init(p)
    opt_state = (opt_state[0]._replace(mu=jax.tree.map(jnp.ones_like, p)), *opt_state[1:])
    p, opt_state, n = resample_dead(p, opt_state, sae.arch.batch(x), jax.random.key(0))
    assert n == 6
    fires = np.asarray(jax.nn.relu((x - p["b_dec"]) @ p["w_enc"] + p["b_enc"]) > 0).any(axis=0)
    assert fires[:6].all()
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p["w_dec"][:6]), axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(opt_state[0].mu["w_dec"][:6]), 0.0)
    np.testing.assert_array_equal(np.asarray(opt_state[0].mu["w_dec"][6:]), 1.0)  # live features keep theirs


# --------------------------------------------------------------------------- pipeline


TINY_STRONG = (
    "--recipe", "strong", "--n-train", "256", "--n-val", "64", "--n-test", "64", "--mlp-epochs", "2",
    "--mlp-batch-size", "64", "--sae-epochs", "2", "--dict-size", "64", "--sae-batch-size", "64",
)
VARIANT_FLAGS = {"topk": ("--sae-k", "4"), "anthropic": ("--sae-resample-every", "1")}


@pytest.fixture(scope="module")
def strong_run(tmp_path_factory):
    """The data, (online) mlp and harvest stages of a tiny strong run."""
    from jax_impl.jobs import pipeline

    run = pipeline.Run(tmp_path_factory.mktemp("strong"), _config(*TINY_STRONG, *VARIANT_FLAGS["topk"]), log=lambda _: None)
    for stage in (pipeline.stage_data, pipeline.stage_mlp, pipeline.stage_harvest):
        stage(run)
    return run


@pytest.mark.parametrize("variant", ["topk", "anthropic"])
def test_pipeline_stages_train_save_and_reload_a_variant(variant, strong_run, tmp_path):
    from jax_impl.jobs import pipeline
    from monosem_torch_ref.saes import sae_from_state_dict

    run = pipeline.Run(tmp_path, _config(*TINY_STRONG, "--sae-variant", variant, *VARIANT_FLAGS[variant]), log=lambda _: None)
    run.splits, run.mlp, run.activations = strong_run.splits, strong_run.mlp, strong_run.activations
    metrics = pipeline.stage_sae(run)
    assert metrics["variant"] == variant and 0 <= metrics["test"]["dead_fraction"] <= 1
    loaded = bridge.load_sae(tmp_path / pipeline.SAE_PATH)
    assert loaded.arch.name == variant
    torch_sae = sae_from_state_dict(torch.load(tmp_path / pipeline.SAE_PATH, weights_only=True))
    _, features = torch_sae(torch.tensor(run.activations))
    _, jax_features = loaded(jnp.asarray(run.activations))
    np.testing.assert_allclose(features.detach().numpy(), np.asarray(jax_features), atol=1e-5)
