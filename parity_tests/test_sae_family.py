"""Every tied-bias SAE architecture of the family: JAX (jax_impl.saes) against PyTorch (monosem_torch_ref.saes).

Each JAX model goes through the bridge's state_dict, is loaded with `strict=True` into the torch class
its keys select, and must give the same inference features and reconstruction, the same training loss and
gradients of every parameter, the same parameters (and buffers) after one optimizer step with the
architecture's hooks, and TorchScript / torch.export programs that agree with the module.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jax_impl import saes
from jax_impl.interop import bridge
from jax_impl.saes.base import TrainContext
from jax_impl.training.sae_trainer import SAETrainConfig, make_sae_step, sae_optimizer
from monosem_torch_ref import saes as ref
from parity_tests.helpers import assert_close, ulps

D, F, K, ROWS = 48, 64, 4, 32
AUX_K = 4 * K
TIED = ("anthropic", "topk", "batchtopk", "matryoshka", "jumprelu")
CONFIGS = {
    "anthropic": saes.anthropic.Config(l1_coeff=1e-3),
    "topk": saes.topk.Config(k=K),
    "batchtopk": saes.batchtopk.Config(k=K),
    "matryoshka": saes.matryoshka.Config(groups=(8, 24, F), k=K),
    # a bandwidth wide enough that many pre-activations fall in the kernel, so the threshold gradients are non-zero
    "jumprelu": saes.jumprelu.Config(l0_coeff=1e-2, bandwidth=0.5, init_threshold=0.3),
}
TORCH_TYPES = {
    "anthropic": ref.TiedBiasSAE, "topk": ref.TopKSAE, "batchtopk": ref.BatchTopKSAE,
    "matryoshka": ref.MatryoshkaSAE, "jumprelu": ref.JumpReLUSAE,
}


def _model(name: str) -> saes.SAE:
    sae = saes.create(name, D, F, CONFIGS[name], key=jax.random.key(3))
    # Non-zero biases (and a trained-looking threshold), so a dropped or mis-mapped tensor shows.
    key_dec, key_enc = jax.random.split(jax.random.key(4))
    sae.p["b_dec"][...] = 0.1 * jax.random.normal(key_dec, (D,))
    sae.p["b_enc"][...] = 0.1 * jax.random.normal(key_enc, (F,))
    if "threshold" in sae.b:
        sae.b["threshold"][...] = jnp.asarray(0.05, jnp.float32)
    return sae


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.abs(np.random.default_rng(0).normal(size=(ROWS, D))).astype(np.float32)  # like ReLU'd activations


def _dead() -> np.ndarray:
    return np.arange(F) % 2 == 1  # half the latents dead, so AuxK contributes and picks among them


@pytest.mark.parametrize("name", TIED)
def test_strict_load_and_forward(name: str, x: np.ndarray, tmp_path) -> None:
    sae = _model(name)
    sd = bridge.sae_to_state_dict(sae)
    assert ref.architecture_of(sd) == name
    torch_sae = ref.sae_from_state_dict(sd)
    assert type(torch_sae) is TORCH_TYPES[name]
    assert list(torch_sae.state_dict()) == list(sd)  # the same keys in torch's own order
    with torch.no_grad():
        t_reconstruction, t_features = torch_sae(torch.from_numpy(x))
    reconstruction, features = (np.asarray(a) for a in sae(jnp.asarray(x)))
    assert (features > 0).any() and (features == 0).any()
    assert_close(f"{name} features", features, t_features, ulps(t_features, 64))
    assert_close(f"{name} reconstruction", reconstruction, t_reconstruction, ulps(t_reconstruction, 64))
    path = tmp_path / "sae.pth"
    bridge.save_sae(sae, path)
    back = bridge.load_sae(path, input_dim=D)
    assert back.arch.name == name and back.cfg == bridge.load_sae(path, input_dim=None).cfg
    for key, value in sae.params().items():
        np.testing.assert_array_equal(np.asarray(back.params()[key]), np.asarray(value))


def test_architectures_are_told_apart_by_keys() -> None:
    key_sets = {name: set(bridge.sae_to_state_dict(_model(name))) for name in TIED}
    assert len({frozenset(k) for k in key_sets.values()}) == len(TIED)
    for name, keys in key_sets.items():
        assert saes.architecture_of_keys(keys).name == name
    with pytest.raises(ValueError, match="known architecture"):
        ref.architecture_of({"b_dec": 0, "encoder.weight": 0})
    topk_sd = bridge.sae_to_state_dict(_model("topk"))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ref.TiedBiasSAE(D, F).load_state_dict(topk_sd, strict=True)


def _torch_loss(name: str, torch_sae, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    return ref.training_loss(name, torch_sae, x, dead, CONFIGS[name], AUX_K)


def _torch_grads(torch_sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The torch gradients under the JAX parameter names, in the JAX layout (Linear weights transposed)."""
    grads = {
        "w_enc": torch_sae.encoder.weight.grad.T, "b_enc": torch_sae.encoder.bias.grad,
        "w_dec": torch_sae.decoder.weight.grad.T, "b_dec": torch_sae.b_dec.grad,
    }
    if isinstance(torch_sae, ref.JumpReLUSAE):
        grads["threshold"] = torch_sae.threshold.grad
    return grads


@pytest.mark.parametrize("name", TIED)
def test_loss_and_gradients(name: str, x: np.ndarray) -> None:
    sae = _model(name)
    torch_sae = ref.sae_from_state_dict(bridge.sae_to_state_dict(sae)).train()
    ctx = TrainContext(dead=jnp.asarray(_dead()))
    batch = sae.arch.batch(jnp.asarray(x))
    (loss, _), grads = jax.value_and_grad(sae.arch.loss, has_aux=True)(sae.params(), sae.buffers(), batch, ctx, sae.cfg)
    t_loss = _torch_loss(name, torch_sae, torch.from_numpy(x), torch.from_numpy(_dead()))
    t_loss.backward()
    assert_close(f"{name} loss", loss, t_loss, ulps(t_loss, 64))
    t_grads = _torch_grads(torch_sae)
    assert set(t_grads) == set(grads)
    for key, t_grad in t_grads.items():
        assert float(t_grad.abs().max()) > 0, f"{name}: the torch gradient of {key} is zero; the test would prove nothing"
        assert_close(f"{name} grad {key}", grads[key], t_grad, ulps(t_grad, 256))


@pytest.mark.parametrize("n_dead", [0, 1, AUX_K - 1, AUX_K, AUX_K + 1, 2 * AUX_K + 3, F])
def test_aux_k_on_the_dead_latents_alone(n_dead: int, x: np.ndarray) -> None:
    """AuxK computed on a compacted block of dead latents (one compiled size per bound: aux_k, 2 aux_k, ..., F;
    the top-k skipped with at most aux_k dead) against torch's top-k over the whole masked row, for dead
    counts on both sides of every bound: the loss and its gradients to the pre-activations and the decoder."""
    from jax_impl.saes.base import aux_k_loss

    rng = np.random.default_rng(n_dead)
    dead = np.zeros(F, bool)
    dead[rng.choice(F, n_dead, replace=False)] = True
    pre = rng.normal(size=(ROWS, F)).astype(np.float32)
    w_dec = rng.normal(size=(F, D)).astype(np.float32) / np.sqrt(D)
    reconstruction = rng.normal(size=(ROWS, D)).astype(np.float32)

    def loss_of(w, pre):
        return aux_k_loss({"w_dec": w}, pre, jnp.asarray(x), jnp.asarray(reconstruction), jnp.asarray(dead), AUX_K)

    loss, (g_w, g_pre) = jax.value_and_grad(loss_of, argnums=(0, 1))(jnp.asarray(w_dec), jnp.asarray(pre))
    torch_sae = ref.TopKSAE(D, F, K)
    with torch.no_grad():
        torch_sae.decoder.weight.copy_(torch.from_numpy(w_dec.T))
    t_pre = torch.from_numpy(pre).requires_grad_(True)
    t_loss = ref.aux_k_loss(torch_sae, t_pre, torch.from_numpy(x), torch.from_numpy(reconstruction),
                            torch.from_numpy(dead), AUX_K)
    if n_dead == 0:
        assert float(loss) == 0.0 and float(t_loss) == 0.0
        return
    t_loss.backward()
    assert_close("aux loss", loss, t_loss, ulps(t_loss, 64))
    assert_close("aux grad w_dec", g_w, torch_sae.decoder.weight.grad.T, ulps(torch_sae.decoder.weight.grad, 256))
    assert_close("aux grad pre", g_pre, t_pre.grad, ulps(t_pre.grad, 256))
    assert (np.asarray(g_pre)[:, ~dead] == 0).all() and (np.abs(np.asarray(g_pre)[:, dead]) > 0).sum() >= ROWS


@pytest.mark.parametrize("name", TIED)
def test_one_optimizer_step_with_hooks(name: str, x: np.ndarray) -> None:
    """Adam after the parallel-gradient removal, then unit decoder rows (anthropic, topk; the others free), and
    jumprelu's threshold clip, batchtopk's threshold estimate, written here in plain torch."""
    sae = _model(name)
    train = SAETrainConfig(lr=1e-2)
    tx = sae_optimizer(train)
    p = sae.params()
    # since_fired: odd latents silent for 10 steps, dead with dead_after=5
    since = jnp.asarray(np.where(_dead(), 10, 0), jnp.int32)
    step = make_sae_step(sae.arch, sae.cfg, tx, dead_after=5)
    (p1, b1, _, since1), loss = jax.jit(step)((p, sae.buffers(), tx.init(p), since), jnp.asarray(x))

    torch_sae = ref.sae_from_state_dict(bridge.sae_to_state_dict(sae)).train()
    opt = torch.optim.Adam(torch_sae.parameters(), lr=train.lr, betas=(0.9, 0.999), eps=1e-8)
    if isinstance(torch_sae, ref.BatchTopKSAE):  # the estimate uses this step's (pre-update) batch features
        with torch.no_grad():
            kept = torch_sae.batch_activate(torch_sae.pre_activation(torch.from_numpy(x)))
            smallest = kept[kept > 0].min()
    t_loss = _torch_loss(name, torch_sae, torch.from_numpy(x), torch.from_numpy(_dead()))
    t_loss.backward()
    # anthropic and topk keep unit decoder rows; jumprelu's, batchtopk's and matryoshka's norms are free (SAELens')
    unit_decoder = not isinstance(torch_sae, (ref.JumpReLUSAE, ref.BatchTopKSAE))
    with torch.no_grad():
        w, g = torch_sae.decoder.weight, torch_sae.decoder.weight.grad  # (D, F): columns are feature directions
        if unit_decoder:
            g -= (g * w).sum(dim=0, keepdim=True) * w
    opt.step()
    with torch.no_grad():
        if unit_decoder:
            w /= w.norm(dim=0, keepdim=True)
        if isinstance(torch_sae, ref.JumpReLUSAE):
            torch_sae.threshold.clamp_(min=1e-6)
        if isinstance(torch_sae, ref.BatchTopKSAE):
            torch_sae.threshold.copy_(0.99 * torch_sae.threshold + 0.01 * smallest)
    assert_close(f"{name} loss", loss, t_loss, ulps(t_loss, 64))
    after = bridge.sae_to_state_dict(saes.SAE(sae.arch, sae.cfg, p1, b1))
    for key, value in torch_sae.state_dict().items():
        if value.dtype == torch.float32:
            # Adam's first step moves each weight by about lr; allow float32 noise of the update on top.
            assert_close(f"{name} {key} after one step", after[key], value, ulps(value, 512))
    if unit_decoder:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(p1["w_dec"]), axis=1), 1.0, atol=1e-6)
    assert np.asarray(since1).max() <= 11


@pytest.mark.parametrize("name", TIED)
def test_scripts_and_exports(name: str, x: np.ndarray) -> None:
    """What `monosem export` needs: TorchScript and torch.export (dynamic batch) of the module agree with it."""
    torch_sae = ref.sae_from_state_dict(bridge.sae_to_state_dict(_model(name))).requires_grad_(False)
    inputs = torch.from_numpy(x)
    expected = torch_sae(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(torch_sae)
    program = torch.export.export(torch_sae, (inputs[:4],), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    for kind, out in (("torchscript", scripted(inputs)), ("torch.export", program.module()(inputs))):
        assert_close(f"{name} {kind} features", out[1], expected[1], 0.0)
        assert_close(f"{name} {kind} reconstruction", out[0], expected[0], 0.0)


def test_batchtopk_keeps_k_per_row_on_average_and_estimates_a_threshold(x: np.ndarray) -> None:
    sae = saes.create("batchtopk", D, F, saes.batchtopk.Config(k=K), key=jax.random.key(0))
    ctx = TrainContext(dead=jnp.zeros(F, bool))
    _, (features, buffers, _) = sae.arch.loss(sae.params(), sae.buffers(), sae.arch.batch(jnp.asarray(x)), ctx, sae.cfg)
    counts = np.asarray(features > 0).sum(axis=1)
    assert counts.sum() <= K * ROWS and counts.min() != counts.max()  # a shared budget, not k per row
    positive = np.asarray(features)[np.asarray(features) > 0]
    assert float(buffers["threshold"]) == pytest.approx(positive.min())  # first estimate: the batch's smallest


def test_jumprelu_threshold_moves_under_adam() -> None:
    """The direct parameterisation: a few hundred Adam steps move thresholds far from their 1e-3 start."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(np.abs(rng.normal(size=(256, D))).astype(np.float32))
    sae = saes.create("jumprelu", D, F, saes.jumprelu.Config(l0_coeff=1e-2), key=jax.random.key(0))
    tx = optax.adam(1e-3)
    p, b = sae.params(), sae.buffers()
    carry = (p, b, tx.init(p), jnp.zeros(F, jnp.int32))
    step = jax.jit(make_sae_step(sae.arch, sae.cfg, tx, dead_after=10**6))
    for _ in range(200):
        carry, _ = step(carry, x)
    assert float(jnp.max(carry[0]["threshold"])) > 0.05


@pytest.mark.parametrize("k", [1, 7, 40, 64])
def test_radix_select_keeps_what_top_k_keeps(k: int) -> None:
    """at_least_kth_largest (AuxK's selection) against torch.topk: the same entries on rows of mixed signs,
    zeros of both signs and magnitudes from 1e-30 to 1e30, with some columns invalid and a row with fewer
    than k valid entries (then every valid entry)."""
    from jax_impl.saes.base import at_least_kth_largest

    rng = np.random.default_rng(k)
    x = (rng.normal(size=(12, 64)) * 10.0 ** rng.integers(-30, 30, size=(12, 64))).astype(np.float32)
    x[0, :5] = [0.0, -0.0, 0.0, -1e-38, 1e-38]
    valid = rng.random(64) < 0.8
    keep = np.asarray(at_least_kth_largest(jnp.asarray(x), jnp.asarray(valid), k))
    masked = torch.from_numpy(np.where(valid, x, -np.inf))
    n_valid = int(valid.sum())
    for row in range(12):
        if n_valid <= k:
            assert (keep[row] == valid).all()
            continue
        expected = np.zeros(64, bool)
        expected[masked[row].topk(k).indices.numpy()] = True
        if (keep[row] != expected).any():  # only exact ties at the k-th value may differ (all kept here)
            kth = np.sort(x[row][valid])[-k]
            assert (x[row][keep[row] != expected] == kth).all()
        assert keep[row].sum() >= k and not keep[row][~valid].any()
