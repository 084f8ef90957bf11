import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import saes
from jax_impl.models.mlp import HOOK_WIDTHS, InterpretabilityMLP, Readout, TorchBatchNorm1d


def test_mlp_and_sae_shapes():
    mlp = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    prediction, layer2 = mlp(jnp.ones((7, 10)))
    assert prediction.shape == (7, 1) and layer2.shape == (7, 512)
    assert float(layer2.min()) >= 0.0  # after ReLU
    sae = saes.create("relu-l1", 512, 2048, key=jax.random.key(0))
    reconstruction, features = sae(layer2)
    assert reconstruction.shape == (7, 512) and features.shape == (7, 2048)
    assert float(features.min()) >= 0.0


def test_torch_like_init_bounds():
    mlp = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    for layer, fan_in in ((mlp.input, 10), (mlp.hidden1, 256), (mlp.hidden2, 512), (mlp.output, 256)):
        bound = 1 / np.sqrt(fan_in)
        for v in (np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])):
            assert np.abs(v).max() <= bound
            if v.size >= 100:  # uniform over the whole interval, not a narrow normal and not zero biases
                assert np.abs(v).max() > 0.8 * bound
    np.testing.assert_array_equal(np.asarray(mlp.bn1.running_var[...]), np.ones(256))


def test_batchnorm_training_step_matches_hand_computation():
    bn = TorchBatchNorm1d(2)
    bn.weight[...] = jnp.array([2.0, 1.0])
    bn.bias[...] = jnp.array([0.5, -1.0])
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0], [7.0, 12.0]], np.float32)
    y = np.asarray(bn(jnp.asarray(x)))
    mean = np.array([4.0, 12.0])
    biased_var = np.array([5.0, 6.0])  # mean of squared deviations: (9+1+1+9)/4, (4+4+16+0)/4
    expected = (x - mean) / np.sqrt(biased_var + 1e-5) * [2.0, 1.0] + [0.5, -1.0]
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    # Running stats: momentum 0.1, and the *unbiased* variance n/(n-1) * biased.
    np.testing.assert_allclose(np.asarray(bn.running_mean[...]), 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.running_var[...]), 0.9 * 1 + 0.1 * biased_var * 4 / 3, rtol=1e-6)
    assert int(bn.num_batches_tracked[...]) == 1
    bn(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(bn.running_mean[...]), 0.1 * mean * (1 + 0.9), rtol=1e-6)
    assert int(bn.num_batches_tracked[...]) == 2


def test_batchnorm_eval_uses_running_stats_and_does_not_update():
    bn = TorchBatchNorm1d(2)
    bn.running_mean[...] = jnp.array([1.0, 2.0])
    bn.running_var[...] = jnp.array([4.0, 9.0])
    bn.use_running_average = True
    x = np.array([[3.0, 5.0]], np.float32)
    np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))), [[2 / np.sqrt(4 + 1e-5), 3 / np.sqrt(9 + 1e-5)]], rtol=1e-6)
    assert int(bn.num_batches_tracked[...]) == 0
    np.testing.assert_array_equal(np.asarray(bn.running_mean[...]), [1.0, 2.0])


def test_model_eval_switches_batchnorm_mode():
    mlp = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    mlp.eval()
    assert mlp.bn1.use_running_average and mlp.bn2.use_running_average
    mlp.train()
    assert not mlp.bn1.use_running_average


def test_batchnorm_refuses_a_batch_of_one_in_training():
    with pytest.raises(ValueError, match="N>=2"):
        TorchBatchNorm1d(3)(jnp.ones((1, 3)))


def test_probe_reports_the_strongest_features_in_eval_mode():
    """The probe against a direct eval-mode forward: threshold, order (ties by id), count, expected output."""
    from jax_impl.evaluation import inference

    mlp = InterpretabilityMLP(rngs=nnx.Rngs(0))
    sae = saes.create("relu-l1", 512, 64, key=jax.random.key(1))
    rows = np.array([[8, 9, 5, 1, 3, 2, 9, 4, 7, 1], [0, 0, 0, 0, 0, 9, 9, 9, 9, 2]])
    mlp.train()
    reports = inference.probe(mlp, sae, rows)
    assert mlp.bn1.use_running_average is False  # the caller's module keeps its mode
    mlp.eval()
    prediction, layer2 = mlp(jnp.asarray(rows, jnp.float32))
    _, features = sae(layer2)
    for report, row, p, f in zip(reports, rows, np.asarray(prediction)[:, 0], np.asarray(features)):
        active = [i for i in range(64) if f[i] > inference.PROBE_THRESHOLD]
        expected_top = sorted(active, key=lambda i: (-f[i], i))[: inference.PROBE_TOP]
        assert report.inputs == tuple(row.tolist())
        assert report.prediction == pytest.approx(float(p), abs=1e-6)
        assert report.active_count == len(active)
        assert [i for i, _ in report.top_features] == expected_top
        assert [a for _, a in report.top_features] == pytest.approx([float(f[i]) for i in expected_top], abs=1e-6)
    assert [r.expected for r in reports] == [8.0, 9.0]


@pytest.mark.parametrize("hook", ["layer1", "layer2", "layer3"])
def test_every_hook_reads_out_to_the_models_prediction(hook):
    """At each hook point the activation, read out by the model (readout_from) and by its Readout (bn2
    folded into hidden1 for layer1, the linear output written as ReLU pairs for layer3), gives the MLP's own
    prediction; and an edit of the activation moves both alike."""
    from jax_impl.data.harvest import harvest_activations
    from jax_impl.evaluation import inference

    mlp = InterpretabilityMLP(10, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(5)
    for bn in (mlp.bn1, mlp.bn2):  # statistics as after training, so that folding bn2 is really tested
        bn.running_mean[...] = jnp.asarray(rng.normal(size=bn.running_mean.shape), jnp.float32)
        bn.running_var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=bn.running_var.shape), jnp.float32)
    inputs = rng.integers(0, 4, size=(64, 10))
    prediction, h = inference.mlp_forward(mlp, inputs, hook)
    assert h.shape == (64, HOOK_WIDTHS[hook])
    np.testing.assert_array_equal(harvest_activations(mlp, inputs, hook), h)
    reference, _ = inference.mlp_forward(mlp, inputs)  # the plain forward (through layer2)
    np.testing.assert_allclose(prediction, reference, rtol=1e-6, atol=1e-6)
    readout = Readout.from_mlp(mlp, hook)
    np.testing.assert_allclose(np.asarray(readout(jnp.asarray(h))), prediction, rtol=1e-5, atol=1e-5)
    edited = h - 0.5 * np.abs(rng.normal(size=h.shape)).astype(np.float32)  # negative entries too
    np.testing.assert_allclose(np.asarray(readout(jnp.asarray(edited))), inference.readout(mlp, edited, hook),
                               rtol=1e-5, atol=1e-5)
