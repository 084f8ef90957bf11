"""The `topk` and `anthropic` SAEs: JAX (jax_impl.sae_variants) against PyTorch (torch_ref.sae_variants).

Each JAX model goes through the bridge's state_dict, is loaded with `strict=True` into the torch class
its keys select, and must give the same features, reconstruction, loss and loss gradients.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jax_impl import bridge
from jax_impl.sae_variants import TiedBiasSAE, TopKSAE, anthropic_loss, topk_loss
from parity_tests.helpers import assert_close, ulps
from torch_ref import sae_variants as ref

D, F, K, AUX_K, ROWS = 512, 64, 4, 16, 32


def _model(variant: str) -> TiedBiasSAE:
    rngs = nnx.Rngs(3)
    sae = TopKSAE(D, F, k=K, rngs=rngs) if variant == "topk" else TiedBiasSAE(D, F, rngs=rngs)
    # Non-zero biases, so a dropped or mis-mapped b_dec/b_enc shows.
    key_dec, key_enc = jax.random.split(jax.random.key(4))
    sae.b_dec[...] = 0.1 * jax.random.normal(key_dec, (D,))
    sae.encoder.bias[...] = 0.1 * jax.random.normal(key_enc, (F,))
    return sae


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.abs(np.random.default_rng(0).normal(size=(ROWS, D))).astype(np.float32)  # like ReLU'd layer2


@pytest.mark.parametrize("variant", ["topk", "anthropic"])
def test_strict_load_and_forward(variant: str, x: np.ndarray, tmp_path) -> None:
    sae = _model(variant)
    path = tmp_path / "sae_model.pth"
    bridge.save_sae(sae, path)
    sd = torch.load(path, weights_only=True)
    assert ref.variant_of(sd) == variant
    torch_sae = ref.sae_from_state_dict(sd)  # load_state_dict(strict=True) inside
    assert type(torch_sae) is (ref.TopKSAE if variant == "topk" else ref.TiedBiasSAE)
    assert list(torch_sae.state_dict()) == list(sd), "key order differs from torch's"

    reconstruction, features = sae(jnp.asarray(x))
    with torch.no_grad():
        t_reconstruction, t_features = torch_sae(torch.from_numpy(x))
    assert_close(f"{variant} features", features, t_features, ulps(t_features, 64))
    assert_close(f"{variant} reconstruction", reconstruction, t_reconstruction, ulps(t_reconstruction, 64))
    active = (np.asarray(features) > 0).sum(axis=1)
    if variant == "topk":
        assert active.max() <= K and np.array_equal(active, (t_features.numpy() > 0).sum(axis=1))

    back = bridge.load_sae(path)
    assert type(back) is type(sae) and back.k == sae.k
    for name, value in sae.params().items():
        np.testing.assert_array_equal(np.asarray(back.params()[name]), np.asarray(value), err_msg=name)


def test_variants_are_told_apart_by_keys() -> None:
    topk_sd = bridge.sae_to_state_dict(_model("topk"))
    anthropic_sd = bridge.sae_to_state_dict(_model("anthropic"))
    assert topk_sd["k"].dtype == torch.int64 and int(topk_sd["k"]) == K
    # A topk file does not strictly load into the anthropic class (its `k` is unexpected), nor the reverse.
    with pytest.raises(RuntimeError, match="k"):
        ref.TiedBiasSAE(D, F).load_state_dict(topk_sd, strict=True)
    with pytest.raises(RuntimeError, match="k"):
        ref.TopKSAE(D, F, k=K).load_state_dict(anthropic_sd, strict=True)
    other_k = ref.TopKSAE(D, F, k=K + 3)
    other_k.load_state_dict(topk_sd, strict=True)
    assert other_k.k_value == K  # the file's k, not the constructor's
    with pytest.raises(ValueError, match="known variant"):
        ref.variant_of({"b_dec": 0, "encoder.weight": 0})
    assert type(bridge.sae_from_state_dict(anthropic_sd)) is TiedBiasSAE


def _torch_grads(torch_sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The torch gradients under the JAX parameter names, in the JAX layout (Linear weights transposed)."""
    return {
        "w_enc": torch_sae.encoder.weight.grad.T, "b_enc": torch_sae.encoder.bias.grad,
        "w_dec": torch_sae.decoder.weight.grad.T, "b_dec": torch_sae.b_dec.grad,
    }


@pytest.mark.parametrize("variant", ["topk", "anthropic"])
def test_loss_and_gradients(variant: str, x: np.ndarray) -> None:
    sae = _model(variant)
    torch_sae = ref.sae_from_state_dict(bridge.sae_to_state_dict(sae))
    # Half the latents dead, so AuxK contributes (and picks among them) in the topk loss.
    dead = np.arange(F) % 2 == 1
    if variant == "topk":
        loss_fn = lambda p: topk_loss(p, jnp.asarray(x), jnp.asarray(dead), K, AUX_K, 1 / 32)[0]  # noqa: E731
        t_loss = ref.topk_loss(torch_sae, torch.from_numpy(x), torch.from_numpy(dead), AUX_K, 1 / 32)
    else:
        loss_fn = lambda p: anthropic_loss(p, jnp.asarray(x), 1e-3)[0]  # noqa: E731
        t_loss = ref.anthropic_loss(torch_sae, torch.from_numpy(x), 1e-3)
    loss, grads = jax.value_and_grad(loss_fn)(sae.params())
    t_loss.backward()
    assert_close(f"{variant} loss", loss, t_loss, ulps(t_loss, 64))
    for name, t_grad in _torch_grads(torch_sae).items():
        assert_close(f"{variant} grad {name}", grads[name], t_grad, ulps(t_grad, 256))


@pytest.mark.parametrize("variant", ["topk", "anthropic"])
def test_scripts_and_exports(variant: str, x: np.ndarray) -> None:
    """What `monosem export` needs: TorchScript and torch.export (dynamic batch) of the module agree with it."""
    torch_sae = ref.sae_from_state_dict(bridge.sae_to_state_dict(_model(variant))).requires_grad_(False)
    inputs = torch.from_numpy(x)
    expected = torch_sae(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(torch_sae)
    program = torch.export.export(torch_sae, (inputs[:4],), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    for name, out in (("torchscript", scripted(inputs)), ("torch.export", program.module()(inputs))):
        assert_close(f"{variant} {name} features", out[1], expected[1], 0.0)
        assert_close(f"{variant} {name} reconstruction", out[0], expected[0], 0.0)
