"""The replacement model and its attribution graphs (jax_impl.evaluation.circuit): exact sums, edges by hand,
the error terms, pruning and the settings' checks."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import saes
from jax_impl.errors import UserError
from jax_impl.evaluation.circuit.attribution import (
    ablation_checks,
    attribute,
    attribute_hidden,
    completeness,
    frozen_output,
    graph_edges,
    keep_first,
    prune,
    ranked_features,
)
from jax_impl.evaluation.circuit.config import CircuitConfig
from jax_impl.evaluation.circuit.labels import assign_variable
from jax_impl.evaluation.circuit.replacement import Replacement, error_terms, mlp_hidden, train_transcoders
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.saes import SAE
from jax_impl.task.pointer import sample_pointer_task


def _transcoder(seed: int, d_in: int, d_out: int, features: int, arch: str = "topk", k: int = 6) -> SAE:
    """A random transcoder with nonzero biases and skip connection (nothing in the sums may hide behind zeros)."""
    cfg = saes.get(arch).config(k=k) if arch == "topk" else None
    tc = saes.create(arch, d_in, features, cfg, key=jax.random.key(seed), output_dim=d_out, skip=True)
    keys = jax.random.split(jax.random.key(100 + seed), 3)
    p = tc.params() | {"w_skip": 0.05 * jax.random.normal(keys[0], (d_in, d_out)),
                       "b_enc": 0.1 * jax.random.normal(keys[1], (features,)),
                       "b_dec": 0.1 * jax.random.normal(keys[2], (d_out,))}
    return SAE(tc.arch, tc.cfg, p, tc.buffers(), transcoder=True)


@pytest.fixture(scope="module")
def model():
    mlp = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    mlp.eval()
    rep = Replacement.from_mlp(mlp, [_transcoder(0, 10, 256, 32), _transcoder(1, 256, 512, 64),
                                     _transcoder(2, 512, 256, 32)])
    inputs = np.asarray(sample_pointer_task(jax.random.key(1), 64)[0])
    return mlp, rep, inputs, attribute(rep, mlp, inputs)


def test_attribution_sums_exactly_to_the_output(model):
    mlp, rep, inputs, att = model
    assert att.linear_error == 0.0  # topk activates as pre * mask
    total = att.input_effects.sum(axis=1) + att.error_effects.sum(axis=1) + att.bias
    np.testing.assert_allclose(total, att.output, atol=2e-5)
    # the frozen model with every feature kept (errors included) is the MLP; completeness 1, and 0 with none kept
    np.testing.assert_allclose(frozen_output(rep, att, None), mlp_hidden(mlp, inputs)[0], atol=2e-5)
    everything = [np.ones_like(m, bool) for m in att.masks]
    value, kept, none = completeness(rep, att, everything)
    np.testing.assert_allclose(value, 1.0, atol=1e-4)
    value, _, _ = completeness(rep, att, [np.zeros_like(m, bool) for m in att.masks])
    np.testing.assert_allclose(value[np.abs(kept - none) > 1e-3], 0.0, atol=1e-4)
    # each feature's effect is what zeroing it moves the frozen output by
    row, layer = 3, 1
    j = int(np.argmax(np.abs(att.effects[layer][row])))
    keep = [np.ones_like(m, bool) for m in att.masks]
    keep[layer][row, j] = False
    moved = frozen_output(rep, att, None)[row] - frozen_output(rep, att, keep)[row]
    np.testing.assert_allclose(moved, att.effects[layer][row, j], rtol=1e-4, atol=1e-5)


def test_error_terms_make_the_replacement_the_mlp(model):
    mlp, rep, inputs, _ = model
    output, hidden = mlp_hidden(mlp, inputs)
    with_errors = rep.run(hidden[0], error_terms(rep, hidden))[0]
    np.testing.assert_allclose(with_errors, output, atol=2e-5)
    without = rep.run(hidden[0])[0]
    assert np.max(np.abs(without - output)) > 1e-2  # the random transcoders are not the MLP: the errors matter


def test_ablating_a_last_layer_feature_matches_its_attribution(model):
    """Nothing nonlinear lies after layer3's transcoder: the ablation must equal the attribution exactly."""
    _, rep, _, att = model
    checks = ablation_checks(rep, att, 8)
    last = (checks["layer"] == 2) & checks["valid"]
    assert last.any()
    np.testing.assert_allclose(checks["measured"][last], checks["attributed"][last], rtol=1e-4, atol=1e-5)


def test_edges_recomputed_by_hand():
    """A hand-sized replacement (3 -> 4 -> 4 -> 3, ReLU transcoders with skips): every edge in plain numpy, and
    each feature's incoming edges (biases included) sum to its activation, the output's to the output."""
    rng = np.random.default_rng(0)
    dims, features = (3, 4, 4, 3), (3, 3, 3)
    tcs, raw = [], []
    for layer in range(3):
        p = {"w_enc": rng.normal(size=(dims[layer], features[layer])), "b_enc": rng.normal(size=features[layer]) * 0.3,
             "w_dec": rng.normal(size=(features[layer], dims[layer + 1])), "b_dec": rng.normal(size=dims[layer + 1]),
             "w_skip": rng.normal(size=(dims[layer], dims[layer + 1])) * 0.5}
        raw.append({k: v.astype(np.float32) for k, v in p.items()})
        arch = saes.get("anthropic")
        tcs.append(SAE(arch, arch.config(), {k: jnp.asarray(v) for k, v in raw[-1].items()}, {}, transcoder=True))
    w_out, b_out = rng.normal(size=3).astype(np.float32), np.float32(0.7)
    rep = Replacement(tuple(tcs), jnp.asarray(w_out), jnp.asarray(b_out))
    x = np.array([[2.0, 1.0, 3.0]], np.float32)
    hidden = [x] + [rng.normal(size=(1, d)).astype(np.float32) for d in dims[1:]]  # the "true" layers
    att = attribute_hidden(rep, x.astype(np.int32), hidden)
    keep = [m.astype(bool) for m in att.masks]
    edges = {(s, t): w for s, t, w in graph_edges(rep, att, 0, keep, min_weight=0.0, with_bias=True)}

    # by hand: each node's contribution to the layer a feature reads, carried through the skips
    f, m = [], []
    for layer in range(3):
        pre = hidden[layer][0] @ raw[layer]["w_enc"] + raw[layer]["b_enc"]
        f.append(np.maximum(pre, 0))
        m.append((pre > 0).astype(np.float32))
    errors = [hidden[layer + 1][0] - (f[layer] @ raw[layer]["w_dec"] + raw[layer]["b_dec"]
                                      + hidden[layer][0] @ raw[layer]["w_skip"]) for layer in range(3)]

    def reaching(vector, home, layer):  # what a vector written into hidden[home] adds to hidden[layer]
        for step in range(home, layer):
            vector = vector @ raw[step]["w_skip"]
        return vector

    names = ("layer1", "layer2", "layer3")
    expected = {}
    sources = [(f"input/{i}", 0, np.eye(3)[i] * x[0, i]) for i in range(3)]
    for layer in range(3):
        sources += [(f"{names[layer]}/{j}", layer + 1, f[layer][j] * raw[layer]["w_dec"][j]) for j in range(3) if m[layer][j]]
        sources += [(f"error/{names[layer]}", layer + 1, errors[layer]), (f"bias/{names[layer]}", layer + 1, raw[layer]["b_dec"])]
    for name, home, vector in sources:
        for layer in range(home, 3):
            for t in np.flatnonzero(m[layer]):
                expected[(name, f"{names[layer]}/{t}")] = reaching(vector, home, layer) @ raw[layer]["w_enc"][:, t]
        expected[(name, "output")] = reaching(vector, home, 3) @ w_out
    assert set(edges) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(edges[key], value, rtol=1e-4, atol=1e-5, err_msg=str(key))
    incoming = collections.defaultdict(float)
    for (_, target), w in edges.items():
        incoming[target] += w
    for layer in range(3):
        for t in np.flatnonzero(m[layer]):
            np.testing.assert_allclose(incoming[f"{names[layer]}/{t}"] + raw[layer]["b_enc"][t], f[layer][t], rtol=1e-4)
    np.testing.assert_allclose(incoming["output"] + b_out, att.output[0], rtol=1e-4)
    np.testing.assert_allclose(att.output[0], hidden[3][0] @ w_out + b_out, rtol=1e-5)


def test_prune_keeps_the_fewest_reaching_the_share_under_the_cap(model):
    _, rep, _, att = model
    order = ranked_features(att)
    for share, cap in ((0.5, 100), (0.9, 5)):
        keep = prune(rep, att, share, cap)
        counts = sum(k.sum(axis=1) for k in keep)
        assert np.all(counts <= cap)
        np.testing.assert_array_equal(np.concatenate(keep, axis=1), np.concatenate(keep_first(att, counts), axis=1))
        kept_order = np.take_along_axis(np.abs(att.all_effects()), np.maximum(order, 0), axis=1)
        assert np.all(np.diff(kept_order, axis=1)[order[:, 1:] >= 0] <= 0)  # largest |effect| first
        value = completeness(rep, att, keep)[0]
        reached = value >= share
        fewer = completeness(rep, att, keep_first(att, np.maximum(counts - 1, 0)))[0]
        assert np.all(fewer[reached & (counts > 0)] < share)  # the fewest that reach it
        # where the cap stops short of the share, no shorter prefix does better
        for c in range(cap):
            assert np.all(completeness(rep, att, keep_first(att, np.full(len(att), c)))[0][~reached] <= value[~reached] + 1e-6)
    assert np.any(counts == 5) and np.any(~reached)  # the cap binds somewhere: the last branch is tested


def test_variable_assignment_prefers_t_on_a_tie():
    scores = {"A": np.array([0.1, 0.9, 0.2, 0.1]), "D": np.array([0.99, 0.2, 0.3, 0.2]),
              "T": np.array([0.96, 0.88, 0.2, 0.1])}
    assert assign_variable(scores, 0) == ("T", 0.96)  # T = |D|: a feature of T scores as high on D
    assert assign_variable(scores, 1) == ("A", 0.9)  # the D-T rule only: A is not given up for a near T
    assert assign_variable(scores, 2) == (None, 0.3)


@pytest.mark.parametrize("field, value, flag", [
    ("dict_sizes", (8, 8), "--circuit-dict-sizes"), ("k", (9, 4, 4), "--circuit-k"), ("share", 1.5, "--circuit-share"),
    ("variant", "nope", "--circuit-variant"), ("skip", 2, "--circuit-skip"), ("lr", float("nan"), "--circuit-lr"),
    ("max_feature_nodes", 0, "--circuit-max-feature-nodes"),
])
def test_config_names_the_flag(field, value, flag):
    import dataclasses

    with pytest.raises(UserError, match=flag):
        dataclasses.replace(CircuitConfig(dict_sizes=(8, 8, 8), k=(4, 4, 4)), **{field: value}).validate()


def test_finetuning_brings_the_chained_replacement_to_the_mlp():
    """The end-to-end phase (finetune_epochs) lowers the replacement's output error against the MLP's, from the
    same per-layer training, and leaves transcoders of the same shapes (so the graphs' algebra is unchanged)."""
    import dataclasses

    mlp = InterpretabilityMLP(10, rngs=nnx.Rngs(3))
    mlp.eval()
    inputs = np.asarray(sample_pointer_task(jax.random.key(2), 512)[0])
    config = CircuitConfig(dict_sizes=(16, 32, 16), epochs=2, batch_size=64, lr=3e-3, finetune_epochs=0)
    key = jax.random.key(0)
    plain, records = train_transcoders(mlp, inputs, config, key, log=lambda _: None)
    tuned, tuned_records = train_transcoders(mlp, inputs, dataclasses.replace(config, finetune_epochs=20,
                                                                              output_weight=10.0), key, log=lambda _: None)
    out, hidden = mlp_hidden(mlp, inputs)

    def gap(transcoders):
        return float(jnp.mean((Replacement.from_mlp(mlp, transcoders).run(hidden[0])[0] - out) ** 2))

    assert gap(tuned) < 0.5 * gap(plain)
    assert "finetune_seconds" not in records[0] and tuned_records[0]["finetune_seconds"] > 0
    for a, b in zip(plain, tuned):
        assert (b.transcoder, b.skip, b.arch.name) == (True, True, a.arch.name)
        assert jax.tree.map(jnp.shape, a.params()) == jax.tree.map(jnp.shape, b.params())
