"""The causal map (jax_impl.evaluation.causal) on networks whose answer is planted, and its command line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl.evaluation.causal import CausalConfig
from jax_impl.evaluation.causal.config import DASConfig
from jax_impl.evaluation.causal.interventions import Site, fit_subspaces, iia, set_outputs, subspace_outputs
from jax_impl.evaluation.causal.planted import early_selection, identity_dictionary, late_selection
from jax_impl.evaluation.causal.study import PairSet, causal_map_of_site
from jax_impl.models.mlp import Readout
from jax_impl.task.pointer import TaskShape, pointer_targets
from jax_impl.task.variables import PairSampler, TaskVariables

SMALL = CausalConfig(fit_pairs=192, eval_pairs=192, isolation_pairs=96, ranks=(1, 4), das_steps=150,
                     max_features=8, shortlist=16, random_draws=2, circuit_rows=192)
VARIABLES = TaskVariables(TaskShape())


@pytest.fixture(scope="module")
def pairs():
    return PairSet.draw(VARIABLES, SMALL, names=["P1", "A", "T", "a_2"])


def test_counterfactual_answers_follow_the_task():
    rng = np.random.default_rng(0)
    sampler = PairSampler(VARIABLES, seed=3)
    for name in VARIABLES.names:
        p = sampler.pairs(name, 200)
        assert np.all(p.answer != p.base_answer), name  # every pair asks for a change
        if name in ("P1", "A", "a_2"):
            minimal = p.kind == 0
            # A minimal source differs from its base only in the variable's own input, so the answer is the
            # task's output on the source row itself.
            np.testing.assert_array_equal(p.answer[minimal], pointer_targets(p.source[minimal]))
    # P1 from a random row: the base's cells at the source's pointer.
    p = sampler.pairs("P1", 100).take(slice(None))
    random = p.kind == 1
    edited = p.base[random].copy()
    edited[:, 4] = p.source[random][:, 4]
    np.testing.assert_array_equal(p.answer[random], pointer_targets(edited))
    assert rng is not None


def test_pairs_avoid_excluded_rows_and_repeat_with_the_seed():
    excluded = PairSampler(VARIABLES, seed=1).pairs("A", 300).base
    p = PairSampler(VARIABLES, seed=1, exclude=excluded).pairs("A", 300)
    keys = {r.tobytes() for r in excluded.astype(np.int32)}
    assert not any(r.tobytes() in keys for r in np.concatenate([p.base, p.source]))
    again = PairSampler(VARIABLES, seed=1, exclude=excluded).pairs("A", 300)
    np.testing.assert_array_equal(p.base, again.base)


def test_isolation_pairs_keep_the_variable():
    sampler = PairSampler(VARIABLES, seed=2)
    for name in ("P1", "A", "D", "T"):
        p = sampler.isolation_pairs(name, 120)
        values_base, values_source = VARIABLES.values(p.base), VARIABLES.values(p.source)
        np.testing.assert_array_equal(values_base[name], values_source[name])
        assert np.all(np.any(p.base != p.source, axis=1))


def test_late_selection_patches_the_pointer(pairs):
    site = late_selection()
    doc = causal_map_of_site(site, identity_dictionary(site.width), VARIABLES, pairs, SMALL)
    v = doc["variables"]
    # The hook holds the one-hot pointer: its four coordinates carry P1 from any source.
    assert v["P1"]["features"]["iia"] == 1.0 and sorted(v["P1"]["features"]["chosen"]) == [0, 1, 2, 3]
    assert v["P1"]["features"]["isolation"] == 1.0
    assert v["P1"]["das"]["4"] >= 0.99  # the one-hot's span
    # The selected value is not a direction here: A needs the pointer and the cells together.
    assert v["A"]["das"]["4"] < 0.6 and v["A"]["features"]["iia"] == 1.0 and len(v["A"]["features"]["chosen"]) == 8
    assert v["a_2"]["features"]["chosen"] == [6] and v["a_2"]["das"]["1"] >= 0.99
    # Whole vector: the control moves every variable; only T (the output itself) follows it.
    assert v["T"]["whole"] == 1.0 and v["P1"]["whole_by_kind"]["random"] < 0.3


def test_early_selection_has_no_pointer_to_patch(pairs):
    site = early_selection()
    doc = causal_map_of_site(site, identity_dictionary(site.width), VARIABLES, pairs, SMALL)
    v = doc["variables"]
    # The hook holds A and B only. From a minimal source (only p1 changed) patching A looks like patching P1;
    # from a random source it does not.
    assert v["P1"]["features"]["iia_by_kind"]["minimal"] == 1.0
    assert v["P1"]["features"]["iia_by_kind"]["random"] < 0.3 and v["P1"]["features"]["iia"] < 0.7
    assert max(v["P1"]["das"].values()) < 0.7
    assert v["A"]["features"]["iia"] == 1.0 and v["A"]["features"]["chosen"] == [0] and v["A"]["das"]["1"] >= 0.99
    assert v["A"]["features"]["isolation"] == 1.0
    assert doc["circuit"]["best"]["share"] == 1.0


def test_das_recovers_a_planted_rank_two_subspace():
    """A hook of 24 dims in a random basis: A is split over two coordinates by a share that varies per row
    (c0 = A s, c1 = A (1 - s) / 2), B is a third, the rest is noise the readout ignores. The readout's ReLU units
    read each coordinate, so A' can only be written by moving both: along any one direction some rows would push
    a coordinate below zero. Rank 1 falls short; rank 2 recovers the plane."""
    rng = np.random.default_rng(0)
    width = 24
    basis = np.linalg.qr(rng.standard_normal((width, width)))[0].astype(np.float32)

    def activation(inputs):
        v = VARIABLES.values(inputs)
        share = np.random.default_rng(int(inputs.sum())).uniform(0, 1, len(inputs))
        coords = np.zeros((len(inputs), width), np.float32)
        coords[:, 0] = v["A"] * share
        coords[:, 1] = v["A"] * (1 - share) / 2
        coords[:, 2] = v["B"]
        coords[:, 3:] = np.random.default_rng(1).standard_normal((len(inputs), width - 3)) * 3
        return coords @ basis.T

    w1 = basis[:, :3]  # h @ w1 = (c0, c1, c2)
    tail = np.array([[1.0, -1.0], [2.0, -2.0], [-1.0, 1.0]], np.float32)  # ReLU(c) -> (A - B, B - A)
    readout = Readout(jnp.asarray(w1), jnp.zeros(3), (jnp.asarray(tail), jnp.ones(2)), (jnp.zeros(2), jnp.zeros(())))
    site = Site("planted", activation, readout)
    sampler = PairSampler(VARIABLES, seed=5)
    fit, ev = sampler.pairs("A", 512), sampler.pairs("A", 512)
    h, hs = site.activation(fit.base), site.activation(fit.source)
    eh, ehs = site.activation(ev.base), site.activation(ev.source)
    assert iia(readout(jnp.asarray(eh)), ev.base_answer) == 1.0  # the planted network computes the task
    scores = {}
    for rank in (1, 2):
        r = fit_subspaces(readout, h[None], hs[None], fit.answer[None], rank, jax.random.key(0), DASConfig(steps=400))
        np.testing.assert_allclose(r[0].T @ r[0], np.eye(rank), atol=1e-5)
        scores[rank] = iia(subspace_outputs(readout, eh[None], ehs[None], r)[0], ev.answer)
        if rank == 2:  # the plane found is the planted one: the principal angles between them are small
            planted = basis[:, :2]
            cosines = np.linalg.svd(planted.T @ r[0], compute_uv=False)
            assert cosines.min() > 0.95, cosines  # a random plane of 24 dims: about 0.2-0.5
    assert scores[2] >= 0.99 and scores[1] < 0.9, scores


def test_feature_patch_in_torch_equals_ours(tiny_run, tmp_path):
    """The patch computed by plain torch on the exported files equals ours."""
    import torch

    from jax_impl.evaluation.causal.interventions import encode
    from jax_impl.evaluation.dictionary import Dictionary
    from jax_impl.jobs.rundir import load_run
    from monosem_torch_ref.models import mlp_from_state_dict
    from monosem_torch_ref.saes import sae_from_state_dict

    run = load_run(tiny_run, log=lambda _: None)
    p = PairSampler(VARIABLES, seed=9).pairs("A", 128)
    site, dictionary = Site.from_mlp(run.mlp, "layer2"), Dictionary.from_sae(run.sae)
    h, hs = site.activation(p.base), site.activation(p.source)
    f, fs = encode(dictionary, h), encode(dictionary, hs)
    features = [int(i) for i in np.argsort(-np.abs(fs - f).sum(axis=0))[:5]]
    ours = set_outputs(site.readout, h, f, fs, np.asarray(dictionary.w_dec), [features])[0]

    mlp = mlp_from_state_dict(torch.load(tiny_run / "mlp" / "perfect_mlp.pth", weights_only=True)).eval()
    sae = sae_from_state_dict(torch.load(tiny_run / "sae" / "sae_model.pth", weights_only=True)).eval()
    encode_torch = sae.encode if hasattr(sae, "encode") else (lambda x: sae(x)[1])
    with torch.no_grad():
        tb, ts = (mlp.hook_activations(torch.as_tensor(x, dtype=torch.float32))["layer2"] for x in (p.base, p.source))
        fb, fsrc = encode_torch(tb), encode_torch(ts)
        w_dec = sae.decoder.weight.T  # (F, W): row i is feature i's direction
        patched = tb + (fsrc[:, features] - fb[:, features]) @ w_dec[features]
        theirs = mlp.readout_from(patched, "layer2").reshape(-1).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(theirs).max()))


CLI_TINY = ["--causal-variables", "P1,A,T", "--causal-fit-pairs", "64", "--causal-eval-pairs", "64", "--causal-isolation-pairs", "32",
            "--causal-ranks", "1,2", "--causal-das-steps", "5", "--causal-das-batch", "32", "--causal-max-features", "2",
            "--causal-shortlist", "4", "--causal-random-draws", "1", "--causal-circuit-rows", "64"]


@pytest.mark.parametrize("argv, message", [
    (["--hooks", "layer9"], "--hooks: unknown hook 'layer9'"),
    (["--hooks", "layer2", "--sae", "layer3=x.pth"], "--sae for layer3, which is not among --hooks layer2"),
    (["--sae", "missing.pth"], "--sae missing.pth: no such file or folder (for layer2)"),
    (["--causal-ranks", "0,2"], "--causal-ranks must be positive integers"),
    (["--causal-min-iia", "1.5"], "--causal-min-iia must be in (0, 1]"),
    (["--causal-eval-pairs", "0"], "--causal-eval-pairs must be positive"),
    (["--causal-variables", "A,Q"], "--causal-variables: unknown Q"),
])
def test_causal_command_refuses_bad_flags_in_one_line(tiny_run, tmp_path, capsys, argv, message):
    from jax_impl.cli import main

    out = tmp_path / "out"
    assert main(["causal", "--run-dir", str(tiny_run), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (out / "causal").exists()


def test_causal_command_trains_a_missing_hook_sae_and_writes_the_map(tiny_run, tmp_path, capsys):
    import torch

    from jax_impl.cli import main
    from jax_impl.models.mlp import HOOK_WIDTHS

    out = tmp_path / "out"
    argv = ["causal", "--run-dir", str(tiny_run), "--out", str(out), "--hooks", "layer2,layer3", *CLI_TINY]
    assert main(argv) == 0
    doc = json.loads((out / "causal" / "causal.json").read_text())
    assert doc["format"] == "monosem-causal-map/1" and list(doc["variables"]) == ["P1", "A", "T"]
    for v in doc["variables"].values():
        assert v["best"]["hook"] in ("layer2", "layer3") and set(v["by_hook"]) == {"layer2", "layer3"}
        assert {"hook", "sae", "features", "iia", "das_iia", "isolation"} <= set(v["best"])
    assert doc["hooks"]["layer2"]["sae"] == "sae/sae_model.pth"  # the run's own, named relative to the run
    folder = out / "causal" / "saes" / "layer3"
    for name in ("sae.pth", "sae.safetensors", "saelens/cfg.json", "saelens/sparsity.safetensors", "sae.torchscript.pt",
                 "sae_config.json", "metrics.json"):
        assert (folder / name).is_file(), name
    state = torch.load(folder / "sae.pth", weights_only=True)
    assert state["encoder.weight"].shape[1] == HOOK_WIDTHS["layer3"]
    # a second call reuses that SAE (same recipe) and writes the same bytes
    first = (out / "causal" / "causal.json").read_bytes()
    sae_bytes = (folder / "sae.pth").read_bytes()
    capsys.readouterr()
    assert main(argv) == 0
    assert "Training a" not in capsys.readouterr().out
    assert (out / "causal" / "causal.json").read_bytes() == first and (folder / "sae.pth").read_bytes() == sae_bytes
