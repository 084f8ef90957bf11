"""The feature atlas on models whose answer is known by construction.

The main fixture is a hand-built "pointer circuit": layer2 holds the one-hot of p1 and the four a
values, the readout gates a[p1] out with ReLUs, and the b column is all zeros, so the MLP output is
exactly the target |a[p1] - 0|. Its SAE has one feature per pointer value (reading the one-hot,
writing "this pointer, not the others"), a copy of the p1=0 feature that writes nothing, a feature
that tracks a_0 (no clean concept), and a dead one. Everything expected below is derived from that
construction or from the definitions, never from the code under test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import saes
from jax_impl.evaluation import inference
from jax_impl.evaluation.atlas.document import ATLAS_HTML, ATLAS_JSON, build_atlas, feature_labels
from jax_impl.evaluation.atlas.effects import CausalEffects, causal_effects, consistency, mean_pointer_swaps
from jax_impl.evaluation.atlas.linear_probe import linear_readout_f1
from jax_impl.evaluation.atlas.scores import best_threshold_f1, score_features
from jax_impl.evaluation.dictionary import Dictionary
from jax_impl.evaluation.metrics import splice_metrics
from jax_impl.models.mlp import InterpretabilityMLP, Readout
from jax_impl.reports.atlas_page import render_page, write_atlas
from jax_impl.task.concepts import Concepts, task_concepts
from jax_impl.task.pointer import TaskShape, pointer_targets

ROW = [8, 9, 5, 1, 3, 2, 9, 4, 7, 1]  # the seed's first probe input: p1=3, p2=1, a[p1]=1, b[p2]=9, target 8


def _concept(concepts: Concepts, name: str) -> int:
    return concepts.names.index(name)


def _random_rows(n: int, seed: int, zero_b: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = np.concatenate([rng.integers(0, 10, (n, 2, 4)), rng.integers(0, 4, (n, 2, 1))], axis=2)
    if zero_b:
        cols[:, 1, :4] = 0
    return cols.reshape(n, 10)


# --- concepts ---------------------------------------------------------------------------------------


def test_concepts_of_a_known_row_and_their_counterfactual_targets():
    inputs = np.array([ROW] + _random_rows(200, 0).tolist())
    c = task_concepts(inputs, 5, 2)
    holds = {name for name, on in zip(c.names, c.mask[0]) if on}
    assert {"p1=3", "p2=1", "a[p1]=1", "b[p2]=9", "target=8", "a[p1]<b[p2]", "a_0=8", "b_3=7"} <= holds
    assert {"p1=3 & a_3=1", "p2=1 & b_1=9"} <= holds
    # two pointers, two pointed values, target, order, eight cells, two pointer-value conjunctions
    assert len(holds) == 2 + 2 + 1 + 1 + 8 + 2
    cf = {name: c.counterfactual[0, _concept(c, name)] for name in c.names}
    assert cf["p1=0"] == abs(8 - 9)  # read a[0] instead of a[3]
    assert cf["p2=3"] == abs(1 - 7)
    assert cf["a[p1]=5"] == abs(5 - 9)
    assert cf["b[p2]=0"] == abs(1 - 0)
    assert cf["a_3=6"] == abs(6 - 9)  # p1 points at a_3, so editing it changes the target
    assert cf["a_0=0"] == 8  # ...and editing a cell nobody points at does not
    assert cf["target=2"] == 2
    assert cf["a[p1]=b[p2]"] == 0
    assert np.isnan(cf["a[p1]>b[p2]"]) and np.isnan(cf["a[p1]<b[p2]"])
    assert cf["p1=0 & a_0=4"] == abs(4 - 9)  # point at a_0 and make it 4
    np.testing.assert_array_equal(c.mask.sum(axis=1), 16)  # every row has exactly one value per variable


def test_constant_concepts_are_dropped_and_other_shapes_work():
    inputs = _random_rows(300, 1, zero_b=True)
    c = task_concepts(inputs, 5, 2)
    assert "b_0=0" not in c.names and "b[p2]=0" not in c.names and "a[p1]<b[p2]" not in c.names
    assert "p2=1" in c.names and "a[p1]>b[p2]" in c.names
    shape = TaskShape(4, 3)
    rng = np.random.default_rng(2)
    cols = np.concatenate([rng.integers(0, 10, (400, 3, 3)), rng.integers(0, 3, (400, 3, 1))], axis=2)
    c3 = task_concepts(cols.reshape(400, 12), shape.x_dim, shape.y_dim)
    assert {"p3=2", "c[p3]=4", "a[p1]>c[p3]", "b_2=7"} <= set(c3.names)
    targets = pointer_targets(cols.reshape(400, 12), shape)
    # The target family agrees with the task's own target function.
    for t in np.unique(targets):
        np.testing.assert_array_equal(c3.mask[:, c3.names.index(f"target={t}")], targets == t)


# --- scores -----------------------------------------------------------------------------------------


def test_scores_match_their_definitions():
    rng = np.random.default_rng(3)
    n = 80
    features = np.where(rng.random((n, 5)) < 0.5, 0.0, rng.integers(1, 4, (n, 5)) / 2)  # many ties
    features[:, 4] = 0
    features[0, 4] = 1.0  # fires once
    mask = rng.random((n, 4)) < 0.3
    s = score_features(features, mask)
    for i in range(5):
        for k in range(4):
            on, pos = features[:, i] > 0, mask[:, k]
            tp = np.sum(on & pos)
            precision = tp / on.sum()
            recall = tp / pos.sum()
            f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
            # AUROC = P(score of a positive > score of a negative) + half the ties.
            p, q = features[pos, i][:, None], features[~pos, i][None, :]
            auroc = np.mean((p > q) + 0.5 * (p == q))
            assert s.precision[i, k] == pytest.approx(precision)
            assert s.recall[i, k] == pytest.approx(recall)
            assert s.f1[i, k] == pytest.approx(f1)
            assert s.auroc[i, k] == pytest.approx(auroc)


def test_best_threshold_f1_tries_every_cut():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 6, 60).astype(float)  # ties: a cut may not split equal scores
    mask = rng.random(60) < 0.4
    expected = max(
        2 * np.sum((scores > t) & mask) / (np.sum(scores > t) + mask.sum()) for t in np.unique(scores)[:-1] + 0.5
    )
    expected = max(expected, 2 * mask.sum() / (60 + mask.sum()))  # everything called positive
    f1, threshold = best_threshold_f1(scores, mask)
    assert f1 == pytest.approx(expected)
    called = scores > threshold
    assert 2 * np.sum(called & mask) / (called.sum() + mask.sum()) == pytest.approx(f1)


def test_linear_readout_f1_separates_half_spaces_from_bands():
    # x0 uniform in (-1, 1). "x0 > 0.2" is a half-space: a read-out detects it perfectly. "|x0| < 0.3" is a
    # band: the best half-space, x0 > -0.3, calls 65% of rows for a concept on 30%, F1 = 2*0.3/(0.65+0.3) = 0.63.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6000, 8)).astype(np.float32)
    mask = np.stack([x[:, 0] > 0.2, np.abs(x[:, 0]) < 0.3], axis=1)
    fit_rows = np.arange(6000) < 4000
    fit_f1, held_f1 = linear_readout_f1(x, mask, fit_rows)
    assert fit_f1[0] > 0.99 and held_f1[0] > 0.98
    assert fit_f1[1] == pytest.approx(0.63, abs=0.03) and held_f1[1] == pytest.approx(0.63, abs=0.04)


# --- metrics ----------------------------------------------------------------------------------------


def _identity_dictionary(width: int) -> Dictionary:
    eye = jnp.eye(width)
    return Dictionary(eye, jnp.zeros(width), eye, jnp.zeros(width))


def test_splice_metrics_perfect_and_mean_reconstruction():
    rng = np.random.default_rng(4)
    layer2 = np.abs(rng.normal(size=(200, 6))).astype(np.float32)
    targets = rng.normal(size=200).astype(np.float32)
    readout = Readout(jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), jnp.zeros(5), (jnp.ones(5),), (jnp.array(0.5),))
    # A lossless SAE (identity on non-negative inputs): splicing costs nothing.
    exact = splice_metrics(layer2, targets, _identity_dictionary(6), readout)
    assert exact["mse_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert exact["dense_fraction"] == 1.0
    clean = np.mean((np.asarray(readout(layer2)) - targets) ** 2)
    mean_h = np.broadcast_to(layer2.mean(axis=0), layer2.shape)
    assert exact["mean_ablated_mse"] == pytest.approx(np.mean((np.asarray(readout(mean_h)) - targets) ** 2), rel=1e-5)
    assert exact["mean_ablated_mse"] != pytest.approx(clean)
    # An SAE that always outputs the mean: splicing is exactly mean ablation.
    mean_sae = Dictionary(jnp.zeros((6, 3)), jnp.array([-1.0, -1.0, 1.0]), jnp.zeros((3, 6)), jnp.asarray(layer2.mean(axis=0)))
    mean_only = splice_metrics(layer2, targets, mean_sae, readout)
    assert mean_only["mse_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert mean_only["dense_fraction"] == pytest.approx(1 / 3)  # one always-on feature, two dead


def test_weights_from_nnx_modules_match_the_modules():
    mlp = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    _, layer2 = inference.mlp_forward(mlp, _random_rows(16, 5))
    np.testing.assert_allclose(Readout.from_mlp(mlp)(layer2), inference.readout(mlp, layer2), rtol=1e-5, atol=1e-5)
    for sae in (saes.create("relu-l1", 512, 64, key=jax.random.key(1)),
                saes.create("topk", 512, 64, saes.topk.Config(k=5), key=jax.random.key(2))):
        reconstruction, features = inference.sae_forward(sae, layer2)
        d = Dictionary.from_sae(sae)
        np.testing.assert_allclose(d.encode(layer2), features, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d.decode(features), reconstruction, rtol=1e-5, atol=1e-5)
    assert np.all((features > 0).sum(axis=1) <= 5)


# --- the pointer circuit ----------------------------------------------------------------------------

GATE = 10.0  # a_k + GATE * onehot_k - GATE is a_k when p1 = k and <= 0 otherwise (a_k <= 9 < GATE)


def _pointer_circuit(n: int = 1200, seed: int = 6):
    """inputs (N, 10) with b = 0, layer2 (N, 8) = [onehot(p1), a_0..a_3], its readout and SAE."""
    inputs = _random_rows(n, seed, zero_b=True)
    p1, a = inputs[:, 4], inputs[:, :4]
    layer2 = np.concatenate([np.eye(4)[p1], a], axis=1).astype(np.float32)
    w1 = np.zeros((8, 4), np.float32)
    w1[np.arange(4), np.arange(4)] = GATE
    w1[4 + np.arange(4), np.arange(4)] = 1.0
    readout = Readout(jnp.asarray(w1), jnp.full(4, -GATE), (jnp.ones(4),), (jnp.array(0.0),))
    # Features 0-3: "p1=k" (read onehot_k; write onehot_k minus the other pointers' one-hots),
    # 4: a copy of "p1=0" that writes nothing, 5: fires when a_0 >= 7 (no concept of the vocabulary),
    # 6: a copy of "p1=1" that writes minus every one-hot (closes all gates: the output becomes 0), 7: dead.
    w_enc = np.zeros((8, 8), np.float32)
    w_enc[np.arange(4), np.arange(4)] = 1.0
    w_enc[0, 4] = 1.0
    w_enc[4, 5] = 1.0
    w_enc[1, 6] = 1.0
    b_enc = np.array([0, 0, 0, 0, 0, -6.5, 0, -1], np.float32)
    w_dec = np.zeros((8, 8), np.float32)
    w_dec[:4, :4] = 2 * np.eye(4) - 1
    w_dec[6, :4] = -1
    dictionary = Dictionary(*(jnp.asarray(x) for x in (w_enc, b_enc, w_dec, np.zeros(8, np.float32))))
    return inputs, layer2, readout, dictionary


@pytest.fixture(scope="module")
def circuit_atlas():
    inputs, layer2, readout, dictionary = _pointer_circuit()
    targets = pointer_targets(inputs).astype(np.float32)
    np.testing.assert_allclose(readout(layer2), targets)  # the circuit really computes the task
    doc = build_atlas(layer2, inputs, targets, 5, 2, dictionary, readout, {"note": 1.0}, steer_sample=4000)
    return inputs, doc, {f["id"]: f for f in doc["features"]}


def test_labels_of_the_pointer_circuit(circuit_atlas):
    _, doc, by_id = circuit_atlas
    assert sorted(by_id) == [0, 1, 2, 3, 4, 5, 6]  # feature 7 never fires
    for k in range(4):
        f = by_id[k]
        assert (f["label"], f["family"], f["f1"], f["precision"], f["recall"], f["auroc"]) == (f"p1={k}", "pointer", 1, 1, 1, 1)
        assert f["monosemantic"]
    assert by_id[4]["label"] == "p1=0" and by_id[4]["f1"] == 1
    assert not by_id[5]["monosemantic"] and by_id[5]["f1"] < 0.6  # "a_0 >= 7" is no concept of the vocabulary
    assert feature_labels(doc) == {0: "p1=0", 1: "p1=1", 2: "p1=2", 3: "p1=3", 4: "p1=0", 6: "p1=1"}
    assert doc["summary"]["live"] == 7 and doc["summary"]["monosemantic"] == 6
    assert doc["summary"]["monosemantic_share"] == pytest.approx(6 / 7, abs=1e-4)
    assert doc["summary"]["consistent"] == 4
    best = {c["concept"]: (c["best_feature"], c["best_f1"]) for c in doc["concepts"]}
    assert best["p1=2"] == (2, 1) and best["p1=0"] == (0, 1)  # ties go to the lower id
    assert doc["summary"]["families"]["pointer"]["covered"] == 4
    assert doc["metrics"] == {"note": 1.0}


def test_causal_effects_of_the_pointer_circuit(circuit_atlas):
    inputs, _, by_id = circuit_atlas
    a, p1 = inputs[:, :4], inputs[:, 4]
    for k in range(4):
        f = by_id[k]
        # Clamping "p1=k" on makes the circuit read a[k]: exactly the task's counterfactual.
        assert f["steer_gain"] == pytest.approx(1.0, abs=1e-4)
        assert f["evidence"] == "steering" and f["consistent"]
        assert f["steer_rows"] == np.sum((p1 != k) & (a[np.arange(len(a)), p1] != a[:, k]))
        # Removing it where p1 = k turns every other gate on: the output becomes sum_{j != k} a_j.
        rows = p1 == k
        expected = np.mean(np.abs(a[rows].sum(axis=1) - 2 * a[rows, k]))
        assert f["ablation_in"] == pytest.approx(expected, rel=1e-4)
        assert f["ablation_out"] == 0
    # The copy that writes nothing: a perfect label that the interventions refute.
    silent = by_id[4]
    assert (silent["steer_gain"], silent["ablation_in"], silent["consistent"]) == (0, 0, False)
    # The eraser: steering it zeroes the output, which erases a[p1] instead of reading a[1].
    eraser = by_id[6]
    assert eraser["steer_gain"] == pytest.approx(0, abs=1e-4) and not eraser["consistent"]
    # A plain slope of output change on target change would have credited that erasure.
    t = a[np.arange(len(a)), p1]
    rows = (p1 != 1) & (a[:, 1] != t)
    assert np.sum((0 - t[rows]) * (a[rows, 1] - t[rows])) / np.sum((a[rows, 1] - t[rows]) ** 2) > 0.3


def test_causal_effects_match_direct_interventions():
    """The batched ablation/steering equals editing layer2 and running the readout, feature by feature."""
    rng = np.random.default_rng(7)
    n, width, hidden, n_feat = 300, 12, 9, 10
    layer2 = np.abs(rng.normal(size=(n, width))).astype(np.float32)
    dictionary = Dictionary(*(jnp.asarray(x, jnp.float32) for x in (
        rng.normal(size=(width, n_feat)), rng.normal(size=n_feat) - 1, rng.normal(size=(n_feat, width)), rng.normal(size=width))))
    w1, b1, w_mid, b_mid, w2 = (jnp.asarray(x, jnp.float32) for x in (
        rng.normal(size=(width, hidden)), rng.normal(size=hidden), rng.normal(size=(hidden, 7)), rng.normal(size=7),
        rng.normal(size=7)))
    # a readout with a hidden layer after its first (like the one from layer1)
    readout = Readout(w1, b1, (w_mid, w2), (b_mid, jnp.asarray(0.3, jnp.float32)))
    ids = np.array([1, 3, 4, 8])
    holds = rng.random((n, 4)) < 0.3
    targets = rng.integers(0, 10, n).astype(np.float32)
    counterfactual = np.where(rng.random((n, 4)) < 0.2, targets[:, None], rng.integers(0, 10, (n, 4))).astype(np.float32)
    counterfactual[:, 2] = 4.0  # like target=4: the same counterfactual on every row
    counterfactual[:, 3] = np.nan  # like a[p1]>b[p2]: none
    features = np.asarray(dictionary.encode(layer2))
    eff = causal_effects(
        layer2, features[:, ids], dictionary.w_dec[ids], readout, holds, counterfactual, targets, steer_scale=2.0, steer_sample=n
    )
    base = np.asarray(readout(layer2))
    for i, j in enumerate(ids):
        f, d = features[:, j], np.asarray(dictionary.w_dec[j])
        change = np.abs(np.asarray(readout(layer2 - f[:, None] * d)) - base)
        assert eff.ablation_in[i] == pytest.approx(change[holds[:, i]].mean(), rel=1e-4, abs=1e-6)
        assert eff.ablation_out[i] == pytest.approx(change[~holds[:, i]].mean(), rel=1e-4, abs=1e-6)
        on = (f > 0) & holds[:, i]
        alpha = 2.0 * (f[on].mean() if on.any() else f[f > 0].mean())
        steered = np.asarray(readout(layer2 + (alpha - f)[:, None] * d))
        cf = counterfactual[:, i]
        use = ~holds[:, i] & np.isfinite(cf) & (cf != targets)
        assert eff.steer_rows[i] == use.sum()
        if i == 2:  # share of the way from the clean output to the constant 4
            expected = np.sum((steered - base)[use] * (4 - base[use])) / np.sum((4 - base[use]) ** 2)
        elif i < 2:  # coefficient of the counterfactual, controlling for the clean output
            design = np.stack([cf[use], base[use], np.ones(use.sum())], axis=1)
            expected = np.linalg.lstsq(design, steered[use], rcond=None)[0][0]
        else:
            assert np.isnan(eff.steer_gain[i])
            continue
        assert eff.steer_gain[i] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert eff.steer_rows[3] == 0  # no counterfactual: steering gives no evidence


def test_consistency_falls_back_to_ablation_without_counterfactual():
    eff = CausalEffects(
        ablation_in=np.array([0.3, 0.3, 0.01, 0.3]), ablation_out=np.array([0.1, 0.2, 0.0, 0.0]),
        steer_gain=np.array([np.nan, np.nan, np.nan, 0.4]), steer_rows=np.array([0, 0, 0, 50]),
    )
    decisions = [consistency(eff, i, min_gain=0.5) for i in range(4)]
    assert decisions == [("ablation", True), ("ablation", False), ("ablation", False), ("steering", False)]


# --- files and page ---------------------------------------------------------------------------------


def test_files_page_and_labels(circuit_atlas, tmp_path):
    _, doc, _ = circuit_atlas
    doc = {"source": "test", **doc}
    doc["features"][0]["label"] = "</script><script>alert(1)</script>"  # must stay data
    json_path, html_path = write_atlas(doc, tmp_path)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(doc))
    assert feature_labels(json_path, min_f1=0.0)[5] == next(f["label"] for f in doc["features"] if f["id"] == 5)
    page = html_path.read_text()
    assert page == render_page(doc)
    # Offline: nothing is fetched from anywhere.
    assert not re.search(r"https?:|//cdn|\bsrc=|<link", page)
    embedded = re.search(r'<script id="atlas-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == json.loads(json.dumps(doc))
    assert page.count("</script>") == 2
    node = shutil.which("node")
    if node:  # the inline script at least parses
        script = page.rsplit("<script>", 1)[1].split("</script>")[0]
        (tmp_path / "page.js").write_text(script)
        subprocess.run([node, "--check", str(tmp_path / "page.js")], check=True)


def test_atlas_command_on_a_run_directory(tmp_path, capsys):
    from jax_impl import cli
    from jax_impl.interop import bridge
    from jax_impl.jobs.run_config import RunConfig
    from jax_impl.task.pointer import Split
    from jax_impl.task.splits import write_split

    for i, name in enumerate(("train", "val", "test")):
        inputs = _random_rows(40, 10 + i)
        write_split(tmp_path / "dataset" / f"mlp_{name}.xlsx", Split(inputs, pointer_targets(inputs).astype(np.float32)))
    bridge.save_mlp(InterpretabilityMLP(10, rngs=nnx.Rngs(0)), tmp_path / "mlp" / "perfect_mlp.pth")
    bridge.save_sae(saes.create("relu-l1", 512, 32, key=jax.random.key(1)), tmp_path / "sae" / "sae_model.pth")
    (tmp_path / "manifest.json").write_text(json.dumps({"config": RunConfig().to_dict()}))
    assert cli.main(["atlas", "--run-dir", str(tmp_path), "--split", "test"]) == 0
    doc = json.loads((tmp_path / ATLAS_JSON).read_text())
    assert doc["rows"] == 40 and doc["metrics"]["rows"] == 40 and "mse_recovered" in doc["metrics"]
    assert (tmp_path / ATLAS_HTML).exists()
    assert "Monosemantic (best F1 >= 0.7)" in capsys.readouterr().out
    assert cli.main(["atlas", "--run-dir", str(tmp_path), "--min-f1", "0"]) == 2


@pytest.mark.parametrize("writes", ["one_hot", "nothing"])
def test_pointer_swaps_follow_the_concept_only_where_features_write_it(writes):
    """A circuit whose `p1=k` features carry the one-hot the readout gates on: swapping the `p1=k` features for
    the `p1=j` ones makes it answer |a[j] - b[p2]| (gain 1, every row exact); features that write nothing
    label just as well but their swap moves nothing (gain 0). p2 has no features: not swappable."""
    inputs = _random_rows(1200, 9, zero_b=True)
    p1, a = inputs[:, 4], inputs[:, :4]
    layer2 = np.concatenate([np.eye(4)[p1], a], axis=1).astype(np.float32)
    w1 = np.zeros((8, 4), np.float32)
    w1[np.arange(4), np.arange(4)] = GATE
    w1[4 + np.arange(4), np.arange(4)] = 1.0
    readout = Readout(jnp.asarray(w1), jnp.full(4, -GATE), (jnp.ones(4),), (jnp.array(0.0),))
    w_enc = np.zeros((8, 4), np.float32)
    w_enc[np.arange(4), np.arange(4)] = 1.0
    w_dec = np.zeros((4, 8), np.float32)
    if writes == "one_hot":
        w_dec[np.arange(4), np.arange(4)] = 1.0
    features = np.asarray(jax.nn.relu(jnp.asarray(layer2) @ w_enc))
    concepts = task_concepts(inputs, 5, 2)
    best = np.array([concepts.names.index(f"p1={k}") for k in range(4)])
    targets = pointer_targets(inputs).astype(np.float32)
    out = mean_pointer_swaps(jnp.asarray(layer2), features, jnp.asarray(w_dec), best, concepts, targets, readout)
    by_name = {c["concept"]: c for c in out["concepts"]}
    assert out["pointer_concepts"] == 8 and out["swappable"] == 4
    for k in range(4):
        c = by_name[f"p1={k}"]
        assert c["features"] == 1 and len(c["swaps"]) == 3
        for swap in c["swaps"]:
            j = int(swap["to"].split("=")[1])
            assert swap["rows"] == np.sum((p1 == k) & (a[:, j] != a[np.arange(len(a)), p1]))
            if writes == "one_hot":
                assert swap["gain"] == pytest.approx(1.0, abs=1e-4) and swap["exact"] == 1.0
            else:
                assert swap["gain"] == pytest.approx(0.0, abs=1e-4) and swap["exact"] == 0.0
        assert c["works"] == (writes == "one_hot")
        assert by_name[f"p2={k}"]["mean_gain"] is None and not by_name[f"p2={k}"]["works"]
    assert out["works"] == (4 if writes == "one_hot" else 0)
    assert out["share"] == pytest.approx(out["works"] / 8, abs=1e-4)
