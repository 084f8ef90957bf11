"""Every architecture as a transcoder, with and without its skip connection: JAX (jax_impl.saes) against PyTorch
(monosem_torch_ref.saes), on an input width D_IN different from the output width D_OUT.

Each JAX transcoder's numpy_state is loaded with `strict=True` into the torch class its keys select, which must
list the same keys in the same order, give the same features and prediction (and so must a skip transcoder's TorchScript program),
the same training loss against the target and the same gradients of every parameter (w_skip included), and the
same parameters, buffers and dead latents over a few optimizer steps with the architecture's hooks.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import saes
from jax_impl.saes.base import SKIP_KEY, TRANSCODER_KEY, TrainContext, numpy_state
from jax_impl.training.sae_trainer import SAETrainConfig, make_sae_step, sae_optimizer
from monosem_torch_ref import saes as ref
from parity_tests.helpers import assert_close, ulps
from parity_tests.test_sae_family import CONFIGS as SAE_CONFIGS
from parity_tests.test_sae_family import TORCH_TYPES

D_IN, D_OUT, F, K, ROWS = 20, 12, 64, 4, 32
AUX_K = 4 * K
CONFIGS = SAE_CONFIGS | {"relu-l1": saes.relu_l1.Config(l1_coeff=1e-3)}
TYPES = TORCH_TYPES | {"relu-l1": ref.ReluL1SAE}
CASES = [(name, skip) for name in saes.NAMES for skip in (False, True)]
IDS = [f"{name}-{'skip' if skip else 'plain'}" for name, skip in CASES]
DEAD_AFTER = 5


def _model(name: str, skip: bool) -> saes.SAE:
    sae = saes.create(name, D_IN, F, CONFIGS[name], key=jax.random.key(3), output_dim=D_OUT, skip=skip)
    # Non-zero biases and skip weights (create's skip starts at zero) and a trained-looking threshold, so that a
    # dropped, transposed or mis-mapped tensor shows.
    key_dec, key_enc, key_skip = jax.random.split(jax.random.key(4), 3)
    sae.p["b_dec"][...] = 0.1 * jax.random.normal(key_dec, (D_OUT,))
    sae.p["b_enc"][...] = 0.1 * jax.random.normal(key_enc, (F,))
    if skip:
        sae.p["w_skip"][...] = 0.2 * jax.random.normal(key_skip, (D_IN, D_OUT))
    if "threshold" in sae.b:
        sae.b["threshold"][...] = jnp.asarray(0.05, jnp.float32)
    return sae


def _torch(sae: saes.SAE) -> torch.nn.Module:
    return ref.sae_from_state_dict({k: torch.from_numpy(v) for k, v in numpy_state(sae).items()})


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.abs(np.random.default_rng(0).normal(size=(ROWS, D_IN))).astype(np.float32)  # like ReLU'd activations


@pytest.fixture(scope="module")
def target() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(ROWS, D_OUT)).astype(np.float32)


def _dead() -> np.ndarray:
    return np.arange(F) % 2 == 1  # half the latents dead (32 > AUX_K), so AuxK selects among them


@pytest.mark.parametrize(("name", "skip"), CASES, ids=IDS)
def test_strict_load_and_forward(name: str, skip: bool, x: np.ndarray) -> None:
    sae = _model(name, skip)
    sd = numpy_state(sae)
    assert ref.architecture_of(sd) == name and ref.is_transcoder({k: torch.from_numpy(v) for k, v in sd.items()})
    torch_sae = _torch(sae)
    assert type(torch_sae) is TYPES[name]
    assert list(torch_sae.state_dict()) == list(sd)  # the same keys in the same order
    assert list(sd)[-1 - skip] == TRANSCODER_KEY and (SKIP_KEY in sd) == skip
    for key, value in torch_sae.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), sd[key])
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        t_prediction, t_features = torch_sae(inputs)
    prediction, features = (np.asarray(a) for a in sae(jnp.asarray(x)))
    assert prediction.shape == (ROWS, D_OUT) and (features > 0).any() and (features == 0).any()
    assert_close(f"{name} skip={skip} features", features, t_features, ulps(t_features, 64))
    assert_close(f"{name} skip={skip} prediction", prediction, t_prediction, ulps(t_prediction, 64))
    if skip:  # the skip term counts (far above rounding), and decode cannot silently leave it out
        with torch.no_grad():
            assert float(torch_sae.skip(inputs).abs().max()) > 0.1
        with pytest.raises(ValueError, match="needs its input x"):
            torch_sae.decode(t_features)
    if skip:  # TorchScript compiles the skip branch (and folds it away for a plain one, as for an SAE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(torch_sae.requires_grad_(False))
        assert_close(f"{name} skip={skip} torchscript prediction", scripted(inputs)[0], t_prediction, 0.0)


def test_skip_needs_a_transcoder_and_a_marker() -> None:
    with pytest.raises(ValueError, match="needs a transcoder"):
        ref.TopKSAE(D_IN, F, K, skip=True)
    sd = {k: torch.from_numpy(v) for k, v in numpy_state(_model("topk", True)).items()}
    with pytest.raises(ValueError, match="without 'transcoder'"):
        ref.architecture_of({k: v for k, v in sd.items() if k != TRANSCODER_KEY})
    with pytest.raises(ValueError, match="must be the int64 scalar 1"):
        ref.sae_from_state_dict(sd | {TRANSCODER_KEY: torch.tensor(2)})
    # an SAE's file is no transcoder's, and loads as before
    sae = saes.create("topk", D_IN, F, CONFIGS["topk"], key=jax.random.key(0))
    torch_sae = _torch(sae)
    assert not torch_sae.is_transcoder and torch_sae.skip is None and TRANSCODER_KEY not in torch_sae.state_dict()


def _torch_loss(name: str, torch_sae, x: torch.Tensor, target: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    return ref.training_loss(name, torch_sae, x, dead, CONFIGS[name], AUX_K, target)


def _torch_grads(torch_sae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The torch gradients under the JAX parameter names, in the JAX layout (Linear weights transposed)."""
    b_dec = torch_sae.decoder.bias if isinstance(torch_sae, ref.ReluL1SAE) else torch_sae.b_dec
    grads = {
        "w_enc": torch_sae.encoder.weight.grad.T, "b_enc": torch_sae.encoder.bias.grad,
        "w_dec": torch_sae.decoder.weight.grad.T, "b_dec": b_dec.grad,
    }
    if isinstance(torch_sae, ref.JumpReLUSAE):
        grads["threshold"] = torch_sae.threshold.grad
    if torch_sae.skip is not None:
        grads["w_skip"] = torch_sae.skip.weight.grad.T
    return grads


@pytest.mark.parametrize(("name", "skip"), CASES, ids=IDS)
def test_loss_and_gradients(name: str, skip: bool, x: np.ndarray, target: np.ndarray) -> None:
    sae = _model(name, skip)
    torch_sae = _torch(sae).train()
    ctx = TrainContext(dead=jnp.asarray(_dead()))
    batch = sae.arch.batch(jnp.asarray(x), jnp.asarray(target))
    (loss, _), grads = jax.value_and_grad(sae.arch.loss, has_aux=True)(sae.params(), sae.buffers(), batch, ctx, sae.cfg)
    t_loss = _torch_loss(name, torch_sae, torch.from_numpy(x), torch.from_numpy(target), torch.from_numpy(_dead()))
    t_loss.backward()
    assert_close(f"{name} skip={skip} loss", loss, t_loss, ulps(t_loss, 64))
    t_grads = _torch_grads(torch_sae)
    assert set(t_grads) == set(grads)
    for key, t_grad in t_grads.items():
        assert float(t_grad.abs().max()) > 0, f"{name}: the torch gradient of {key} is zero; the test would prove nothing"
        assert_close(f"{name} skip={skip} grad {key}", grads[key], t_grad, ulps(t_grad, 256))


def _training_features(name: str, torch_sae, x: torch.Tensor) -> torch.Tensor:
    """The features a training step sees (what decides which latents fired): the batch's own selection for the
    BatchTopK family, the inference activation otherwise."""
    pre = torch_sae.pre_activation(x)
    return torch_sae.batch_activate(pre) if name in ("batchtopk", "matryoshka") else torch_sae.activate(pre)


STEPS = 3


# Skip transcoders only: a plain one's step is the same code less the skip term (its loss and gradients are
# checked above), and each case compiles a training step (seconds on 2 cores).
@pytest.mark.parametrize("name", saes.NAMES)
def test_a_few_optimizer_steps_with_hooks(name: str, x: np.ndarray, target: np.ndarray) -> None:
    """STEPS Adam steps of the trainer's own step function on paired rows (input | target), against plain torch:
    the parallel-gradient removal and unit decoder rows (anthropic, topk), jumprelu's threshold clip, the
    BatchTopK threshold's running estimate, and which latents count as dead (since_fired) at every step."""
    sae, skip = _model(name, True), True
    train = SAETrainConfig(lr=1e-2)
    tx = sae_optimizer(train)
    p = sae.params()
    since = jnp.asarray(np.where(_dead(), 10, 0), jnp.int32)  # odd latents silent for 10 steps: dead at first
    # Not jitted: run op by op, the step reuses the ops the loss test above compiled (a jit would compile anew)
    step = make_sae_step(sae.arch, sae.cfg, tx, dead_after=DEAD_AFTER, split=D_IN)
    carry = (p, sae.buffers(), tx.init(p), since)
    rows = jnp.asarray(np.concatenate([x, target], axis=1))

    torch_sae = _torch(sae).train()
    t_x, t_target = torch.from_numpy(x), torch.from_numpy(target)
    t_since = torch.from_numpy(np.array(since)).long()
    opt = torch.optim.Adam(torch_sae.parameters(), lr=train.lr, betas=(0.9, 0.999), eps=1e-8)
    # anthropic and topk keep unit decoder rows; the others' norms are free (as for their SAEs)
    unit_decoder = not isinstance(torch_sae, ref.ReluL1SAE | ref.JumpReLUSAE | ref.BatchTopKSAE)
    assert unit_decoder == sae.arch.unit_decoder
    for i in range(STEPS):
        carry, loss = step(carry, rows)
        with torch.no_grad():  # what this step's (pre-update) batch selects
            fired = _training_features(name, torch_sae, t_x)
        opt.zero_grad()
        t_loss = _torch_loss(name, torch_sae, t_x, t_target, t_since >= DEAD_AFTER)
        t_loss.backward()
        with torch.no_grad():
            w, g = torch_sae.decoder.weight, torch_sae.decoder.weight.grad  # (D_out, F): columns are directions
            if unit_decoder:
                g -= (g * w).sum(dim=0, keepdim=True) * w
        opt.step()
        with torch.no_grad():
            if unit_decoder:
                w /= w.norm(dim=0, keepdim=True)
            if isinstance(torch_sae, ref.JumpReLUSAE):
                torch_sae.threshold.clamp_(min=1e-6)
            if isinstance(torch_sae, ref.BatchTopKSAE):
                torch_sae.threshold.copy_(0.99 * torch_sae.threshold + 0.01 * fired[fired > 0].min())
        t_since = torch.where((fired > 0).any(dim=0), 0, t_since + 1)
        assert_close(f"{name} skip={skip} loss at step {i}", loss, t_loss, ulps(t_loss, 64))
        np.testing.assert_array_equal(np.asarray(carry[3]), t_since.numpy(), err_msg=f"since_fired after step {i}")
    assert np.asarray(carry[3] >= DEAD_AFTER).any() and not np.asarray(carry[3] >= DEAD_AFTER).all()
    after = numpy_state(saes.SAE(sae.arch, sae.cfg, carry[0], carry[1], transcoder=True))
    for key, value in torch_sae.state_dict().items():
        if value.dtype == torch.float32:
            # Adam moves each weight by about lr per step; allow float32 noise of the updates on top.
            assert_close(f"{name} skip={skip} {key} after {STEPS} steps", after[key], value, ulps(value, 512 * STEPS))
            assert not np.array_equal(after[key], numpy_state(sae)[key])
    if unit_decoder:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(carry[0]["w_dec"]), axis=1), 1.0, atol=1e-6)
