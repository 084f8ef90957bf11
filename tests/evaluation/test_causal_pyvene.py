"""Our interchange interventions (jax_impl.evaluation.causal) against pyvene, Stanford's intervention library (the `interop` extra).

One briefly trained MLP (about 87% of held-out rows exact), exported to the PyTorch reference (torch_ref) through
the bridge, and wrapped in pyvene's `IntervenableModel` at `act2.output`: the ReLU after bn2, i.e. our `layer2` hook.

- whole vector: pyvene's VanillaIntervention (base x, source x') gives the outputs that our readout gives on
  h(x'), to float32 rounding.
- named features: h* = h + sum_{i in S} (f_i(x') - f_i(x)) d_i, formed in torch with torch_ref's SAE and set by
  pyvene (VanillaIntervention fed `source_representations`), gives our `set_outputs` to float32 rounding.
- DAS: pyvene trains its own LowRankRotatedSpaceIntervention (h + (h' - h) R R^T, R orthonormal by torch's
  parametrization) with its training-loop pattern (Adam over the intervention's parameters, MSE to the
  counterfactual answer) on the same variable, hook, rank and pairs as our `fit_subspaces`; the held-out IIAs agree
  within 0.03. Like ours, pyvene starts from the top principal directions of h' - h and from a random rotation and
  keeps the one with the lower loss on the fit pairs (DAS from a single random start varies by about +-0.04
  between seeds on this MLP, more than the tolerance).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

pv = pytest.importorskip("pyvene")

from flax import nnx  # noqa: E402

from jax_impl import saes
from jax_impl.evaluation.causal.config import DASConfig  # noqa: E402
from jax_impl.evaluation.causal.interventions import (  # noqa: E402
    Site,
    encode,
    feature_patch,
    fit_subspaces,
    iia,
    outputs,
    set_outputs,
    subspace_outputs,
)
from jax_impl.evaluation.dictionary import Dictionary  # noqa: E402
from jax_impl.interop import bridge  # noqa: E402
from jax_impl.models.mlp import InterpretabilityMLP  # noqa: E402
from jax_impl.task.pointer import TaskShape, pointer_targets  # noqa: E402
from jax_impl.task.variables import PairSampler, TaskVariables, random_rows  # noqa: E402
from jax_impl.training.mlp_trainer import (
    MLPConfig,  # noqa: E402
    fit_mlp,  # noqa: E402
)
from monosem_torch_ref.models import mlp_from_state_dict  # noqa: E402
from monosem_torch_ref.saes import sae_from_state_dict  # noqa: E402

HOOK, COMPONENT = "layer2", "act2.output"  # torch_ref: layer2 = act2(bn2(hidden1(...)))
VARIABLE, RANK = "A", 4  # A's DAS IIA on this MLP is about 0.4 (its whole-vector IIA about 0.5)
DAS = DASConfig(steps=300, batch_size=128, lr=1e-2)


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))  # a copy: jax's arrays are read-only


@pytest.fixture(scope="module")
def net():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few small matmuls per step: on 2 busy cores, more threads are many times slower
    rows = random_rows(np.random.default_rng(0), 8000, TaskShape())
    mlp = fit_mlp(InterpretabilityMLP(10, rngs=nnx.Rngs(0)), rows, pointer_targets(rows).astype(np.float32),
                  MLPConfig(epochs=20, batch_size=256, max_lr=2e-2), key=jax.random.key(1), log=lambda line: None).model
    mlp.eval()
    model = mlp_from_state_dict(bridge.mlp_to_state_dict(mlp))  # eval mode
    # pyvene reads `model.config` (a Hugging Face config) only to size interventions given as types; ours are
    # instances that carry their sizes.
    model.config = None
    yield Site.from_mlp(mlp, HOOK), model
    torch.set_num_threads(threads)


def _intervenable(model, intervention) -> pv.IntervenableModel:
    config = pv.IntervenableConfig(representations=[{"component": COMPONENT, "intervention": intervention}])
    intervenable = pv.IntervenableModel(config, model)
    intervenable.disable_model_gradients()
    return intervenable


def _scale(y: np.ndarray) -> float:
    return 1e-5 * max(1.0, float(np.abs(y).max()))


def test_whole_vector_patch_equals_pyvene_vanilla_intervention(net):
    site, model = net
    rng = np.random.default_rng(1)
    base, source = random_rows(rng, 512, TaskShape()), random_rows(rng, 512, TaskShape())
    h, h_source = site.activation(base), site.activation(source)
    ours = outputs(site.readout, h_source)
    with torch.no_grad():
        _, (theirs, layer2) = _intervenable(model, pv.VanillaIntervention())({"x": _t(base)}, [{"x": _t(source)}])
    theirs = theirs[:, 0].numpy()
    np.testing.assert_allclose(layer2.numpy(), h_source, rtol=0, atol=_scale(h_source))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=_scale(ours))
    print(f"\nwhole vector: max |ours - pyvene| {np.abs(theirs - ours).max():.3g} (outputs up to {np.abs(ours).max():.3g})")
    assert np.abs(ours - outputs(site.readout, h)).mean() > 0.5  # the patch moves the outputs


def test_feature_patch_equals_pyvene_with_the_patched_representation(net):
    site, model = net
    sae = saes.create("relu-l1", 512, 256, key=jax.random.key(0))  # untrained: the patch is what is compared
    dictionary = Dictionary.from_sae(sae)
    torch_sae = sae_from_state_dict(bridge.sae_to_state_dict(sae))
    rng = np.random.default_rng(2)
    base, source = random_rows(rng, 512, TaskShape()), random_rows(rng, 512, TaskShape())
    h, h_source = site.activation(base), site.activation(source)
    f, f_source = encode(dictionary, h), encode(dictionary, h_source)
    moving = np.argsort(-np.abs(f_source - f).mean(axis=0), kind="stable")
    sets = [[int(i) for i in moving[:1]], [int(i) for i in moving[:8]], [int(i) for i in moving[5:40:3]]]
    ours = set_outputs(site.readout, h, f, f_source, np.asarray(dictionary.w_dec), sets)
    for s, our_outputs in zip(sets, ours):
        with torch.no_grad():
            th, th_source = _t(h), _t(h_source)
            tf, tf_source = torch_sae(th)[1], torch_sae(th_source)[1]
            w_dec = torch_sae.decoder.weight.T  # (F, W): row i is feature i's decoder direction
            h_star = th + (tf_source[:, s] - tf[:, s]) @ w_dec[s]
            _, (theirs, layer2) = _intervenable(model, pv.VanillaIntervention())(
                {"x": _t(base)}, source_representations=h_star)
        our_h_star = np.asarray(feature_patch(h, f, f_source, np.asarray(dictionary.w_dec), np.asarray(s)))
        np.testing.assert_allclose(layer2.numpy(), our_h_star, rtol=0, atol=_scale(our_h_star))
        theirs = theirs[:, 0].numpy()
        np.testing.assert_allclose(theirs, our_outputs, rtol=0, atol=_scale(our_outputs))
        print(f"\n{len(s)} features: max |ours - pyvene| {np.abs(theirs - our_outputs).max():.3g}, "
              f"h* {np.abs(layer2.numpy() - our_h_star).max():.3g}")
    assert np.abs(ours[1] - outputs(site.readout, h)).max() > 1e-2  # the 8-feature patch moves some output


def _pyvene_das(model, pairs, init: np.ndarray | None, seed: int) -> tuple[float, pv.IntervenableModel]:
    """pyvene's DAS: LowRankRotatedSpaceIntervention trained with Adam on MSE to the counterfactual answer, the same
    steps, batch size and learning rate as ours. -> (MSE on all fit pairs, the trained model)."""
    torch.manual_seed(seed)
    intervention = pv.LowRankRotatedSpaceIntervention(embed_dim=model.layers["hidden2"].in_features, low_rank_dimension=RANK)
    if init is not None:
        with torch.no_grad():
            intervention.rotate_layer.weight = _t(init)  # through the orthogonal parametrization's right inverse
    intervenable = _intervenable(model, intervention)
    optimizer = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=DAS.lr)
    base, source, answer = _t(pairs.base), _t(pairs.source), _t(pairs.answer)
    rng = np.random.default_rng(seed)
    for _ in range(DAS.steps):
        idx = torch.from_numpy(rng.integers(0, len(pairs), DAS.batch_size))
        _, counterfactual = intervenable({"x": base[idx]}, [{"x": source[idx]}])
        loss = torch.mean((counterfactual[0][:, 0] - answer[idx]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, counterfactual = intervenable({"x": base}, [{"x": source}])
    return float(torch.mean((counterfactual[0][:, 0] - answer) ** 2)), intervenable


@pytest.mark.slow  # 20 s; make test keeps the whole-vector patch against pyvene
def test_das_iia_matches_pyvene_rotated_subspace(net):
    site, model = net
    sampler = PairSampler(TaskVariables(TaskShape()), seed=0)
    fit, held_out = sampler.pairs(VARIABLE, 512), sampler.pairs(VARIABLE, 1024)
    h, h_source = site.activation(fit.base), site.activation(fit.source)
    rotation = fit_subspaces(site.readout, h[None], h_source[None], fit.answer[None], RANK, jax.random.key(0), DAS)
    ours = iia(subspace_outputs(site.readout, site.activation(held_out.base)[None],
                                site.activation(held_out.source)[None], rotation)[0], held_out.answer)

    principal = np.linalg.svd(np.asarray(h_source - h, np.float64), full_matrices=False)[2][:RANK].T
    runs = [_pyvene_das(model, fit, init, seed=0) for init in (principal, None)]
    _, intervenable = min(runs, key=lambda run: run[0])
    with torch.no_grad():
        _, counterfactual = intervenable({"x": _t(held_out.base)}, [{"x": _t(held_out.source)}])
    theirs = iia(counterfactual[0][:, 0].numpy(), held_out.answer)

    whole = iia(outputs(site.readout, site.activation(held_out.source)), held_out.answer)
    base = iia(outputs(site.readout, site.activation(held_out.base)), held_out.answer)
    print(f"\nDAS {VARIABLE} rank {RANK}: ours {ours:.4f}, pyvene {theirs:.4f} (fit MSE per start "
          f"{[round(run[0], 4) for run in runs]}), whole vector {whole:.4f}, base {base:.4f}")
    assert base < 0.1 and 0.2 < theirs < whole  # a subspace that carries part of A: neither 0 nor 1
    assert abs(ours - theirs) <= 0.03, f"our DAS IIA {ours:.3f}, pyvene's {theirs:.3f}"
