"""The replacement model: the task MLP's three hidden maps (input -> layer1, layer1 -> layer2, layer2 -> layer3)
each replaced by a transcoder, and the MLP's own output layer on top.

    h0 = x (N, 10) float32;  f_l = activate(h_{l-1} @ w_enc_l + b_enc_l)     (N, F_l)
    h_l = f_l @ w_dec_l + b_dec_l + h_{l-1} @ w_skip_l (+ error_l)             (N, d_l)
    output = h3 @ w_out + b_out                                                (N,)

Without error terms each transcoder reads the previous transcoder's prediction. With them, error_l = the MLP's
true layer_l - the transcoder's prediction from the MLP's true layer_{l-1}: every transcoder then reads the
true activation, and the replacement computes the MLP's output (up to float32 rounding). Every architecture of
the family activates as `features = pre * mask` with mask = (features > 0) (ReLU, TopK, thresholds): what
attribution.py freezes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl import saes
from jax_impl.evaluation.circuit.config import LAYERS, CircuitConfig
from jax_impl.evaluation.metrics import prediction_metrics
from jax_impl.models.mlp import HOOK_WIDTHS, InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.saes import SAE
from jax_impl.saes.base import TrainContext, mse, project_out_parallel, renormalise_decoder
from jax_impl.training import sae_trainer
from jax_impl.training.loop import epoch_permutation, make_batched_epoch

Log = Callable[[str], None]


@partial(jax.tree_util.register_dataclass, data_fields=["transcoders", "w_out", "b_out"], meta_fields=[])
@dataclass(frozen=True)
class Replacement:
    """Three transcoders (LAYERS order) and the MLP's output layer w_out (d3,), b_out () float32."""

    transcoders: tuple[SAE, ...]
    w_out: jax.Array
    b_out: jax.Array

    @classmethod
    def from_mlp(cls, mlp: InterpretabilityMLP, transcoders: Sequence[SAE]) -> Replacement:
        widths = [mlp.input.kernel[...].shape[0]] + [HOOK_WIDTHS[layer] for layer in LAYERS]
        for i, tc in enumerate(transcoders):
            if not tc.transcoder or (tc.input_dim, tc.output_dim) != (widths[i], widths[i + 1]):
                raise ValueError(f"transcoder {i} must map {widths[i]} -> {widths[i + 1]}, got {tc.input_dim} -> "
                                 f"{tc.output_dim} (transcoder: {tc.transcoder})")
        return cls(tuple(transcoders), mlp.output.kernel[...][:, 0], mlp.output.bias[...][0])

    def weights(self, layer: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """(w_enc (D_in, F), b_enc (F,), w_dec (F, D_out), b_dec (D_out,), w_skip (D_in, D_out), zero without one)."""
        tc = self.transcoders[layer]
        p = tc.params()
        skip = p["w_skip"] if tc.skip else jnp.zeros((tc.input_dim, tc.output_dim), jnp.float32)
        return p["w_enc"], p["b_enc"], p["w_dec"], p["b_dec"], skip

    def pre(self, layer: int, h: jax.Array) -> jax.Array:
        """The encoder's pre-activations (N, F) of transcoder `layer` reading h (N, D_in)."""
        w_enc, b_enc, *_ = self.weights(layer)
        return h @ w_enc + b_enc

    def activate(self, layer: int, pre: jax.Array) -> jax.Array:
        """The architecture's inference activation (TopK, ReLU, threshold): pre (N, F) -> features (N, F)."""
        tc = self.transcoders[layer]
        return tc.arch.activate(pre, tc.params(), tc.buffers(), tc.cfg)

    def predict(self, layer: int, features: jax.Array, h: jax.Array) -> jax.Array:
        """features (N, F), the input h (N, D_in) -> the predicted layer (N, D_out), skip term included."""
        _, _, w_dec, b_dec, skip = self.weights(layer)
        return features @ w_dec + b_dec + h @ skip

    def run(self, x: jax.Array, errors: Sequence[jax.Array] | None = None, scale: Sequence[jax.Array] | None = None,
            masks: Sequence[jax.Array] | None = None) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
        """The replacement on x (N, D): errors (per layer (N, d_l), added to each prediction; None: none);
        scale (per layer (N, F_l), multiplies the features after activation: 0 ablates one); masks (per layer
        (N, F_l) 0/1: features = pre * mask, the frozen linear model; None: each transcoder's own activation).
        -> (output (N,), features per layer, hidden h_l per layer (h0 = x first))."""
        h, features, hidden = x, [], [x]
        for layer in range(len(self.transcoders)):
            pre = self.pre(layer, h)
            f = self.activate(layer, pre) if masks is None else pre * masks[layer]
            if scale is not None:
                f = f * scale[layer]
            h = self.predict(layer, f, h)
            if errors is not None:
                h = h + errors[layer]
            features.append(f)
            hidden.append(h)
        return h @ self.w_out + self.b_out, features, hidden


@jax.jit
def _mlp_hidden(mlp: InterpretabilityMLP, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    layer1 = mlp.activation_at(x, "layer1")
    h2 = jax.nn.relu(mlp.bn2(mlp.hidden1(layer1)))
    h3 = jax.nn.relu(mlp.hidden2(h2))
    return mlp.output(h3)[:, 0], [x, layer1, h2, h3]


@highest_precision
def mlp_hidden(mlp: InterpretabilityMLP, inputs: np.ndarray) -> tuple[jax.Array, list[jax.Array]]:
    """The MLP in eval mode on inputs (N, D): (output (N,), [x (N, D), layer1 (N, 256), layer2 (N, 512),
    layer3 (N, 256)]) float32."""
    mlp.eval()
    return _mlp_hidden(mlp, jnp.asarray(inputs, jnp.float32))


@jax.jit
def _errors(rep: Replacement, hidden: list[jax.Array]) -> list[jax.Array]:
    out = []
    for layer in range(len(rep.transcoders)):
        f = rep.activate(layer, rep.pre(layer, hidden[layer]))
        out.append(hidden[layer + 1] - rep.predict(layer, f, hidden[layer]))
    return out


@highest_precision
def error_terms(rep: Replacement, hidden: Sequence[jax.Array]) -> list[jax.Array]:
    """error_l = the MLP's layer_l - transcoder l's prediction from the MLP's layer_{l-1}: hidden (mlp_hidden's
    [x, layer1, layer2, layer3]) -> one (N, d_l) float32 per layer."""
    return _errors(rep, list(hidden))


@jax.jit
def _outputs(rep: Replacement, x: jax.Array, errors: list[jax.Array] | None) -> jax.Array:
    return rep.run(x, errors)[0]


@highest_precision
def replacement_metrics(mlp: InterpretabilityMLP, rep: Replacement, inputs: np.ndarray, targets: np.ndarray) -> dict:
    """Test metrics (jax_impl.evaluation.metrics.prediction_metrics: mse, exact_match) of the MLP, the replacement
    without error terms and with them: {"rows", "mlp", "replacement", "replacement_with_errors"}."""
    out, hidden = mlp_hidden(mlp, inputs)
    x = hidden[0]
    plain = _outputs(rep, x, None)
    with_errors = _outputs(rep, x, error_terms(rep, hidden))
    return {"rows": len(inputs), "mlp": prediction_metrics(np.asarray(out), targets),
            "replacement": prediction_metrics(np.asarray(plain), targets),
            "replacement_with_errors": prediction_metrics(np.asarray(with_errors), targets)}


def architecture_config(config: CircuitConfig, layer: int):
    """The architecture config of transcoder `layer` from the circuit's settings (k or the penalty)."""
    arch = saes.get(config.variant)
    fields = set(arch.config.__dataclass_fields__)
    values = {}
    if "k" in fields:
        values["k"] = config.k[layer]
    for penalty in ("l1_coeff", "l0_coeff"):
        if penalty in fields:
            values[penalty] = config.l1
    return arch.config(**values)


@highest_precision
def train_transcoders(mlp: InterpretabilityMLP, inputs: np.ndarray, config: CircuitConfig, key: jax.Array,
                      log: Log = print) -> tuple[list[SAE], list[dict]]:
    """One transcoder per replaced map, trained on rows = [its input, the MLP's layer_l] side by side for inputs
    (N, D) int; its input is the MLP's true layer_{l-1}, or with config.chained the previous transcoder's
    prediction (the first reads x either way); then config.finetune_epochs of finetune_transcoders. -> (transcoders,
    per-layer records {"train_seconds", "final_loss"}, with fine-tuning also "finetune_seconds", "finetune_final_loss"
    (the three's together))."""
    mlp_output, hidden = mlp_hidden(mlp, inputs)
    train = sae_trainer.SAETrainConfig(epochs=config.epochs, batch_size=min(config.batch_size, len(inputs)),
                                       lr=config.lr, log_every=max(config.epochs, 1))
    out, records = [], []
    reads = hidden[0]
    for layer, name in enumerate(LAYERS):
        d_in, d_out = hidden[layer].shape[1], hidden[layer + 1].shape[1]
        tc = saes.create(config.variant, d_in, config.dict_sizes[layer], architecture_config(config, layer),
                         key=jax.random.fold_in(key, 2 * layer), output_dim=d_out, skip=bool(config.skip))
        rows = np.concatenate([np.asarray(reads if config.chained else hidden[layer]), np.asarray(hidden[layer + 1])],
                              axis=1)
        started = time.perf_counter()
        result = sae_trainer.fit(tc, rows, train, key=jax.random.fold_in(key, 2 * layer + 1), log=lambda _: None)
        seconds = time.perf_counter() - started
        log(f"Transcoder {name} ({config.variant}, {config.dict_sizes[layer]} features): {seconds:.1f} s, "
            f"final loss {float(np.mean(result.step_losses[-10:])):.5f}")
        out.append(result.model)
        reads = _prediction(result.model, jnp.asarray(reads if config.chained else hidden[layer]))
        records.append({"train_seconds": round(seconds, 3), "final_loss": float(np.mean(result.step_losses[-10:]))})
    if config.finetune_epochs:
        started = time.perf_counter()
        out, losses = finetune_transcoders(out, hidden, mlp_output, Replacement.from_mlp(mlp, out), config,
                                           jax.random.fold_in(key, 2 * len(LAYERS)))
        seconds = time.perf_counter() - started
        log(f"Transcoders fine-tuned end to end ({config.finetune_epochs} epochs): {seconds:.1f} s, final loss "
            f"{float(np.mean(losses[-10:])):.5f}")
        for record in records:
            record |= {"finetune_seconds": round(seconds, 3), "finetune_final_loss": float(np.mean(losses[-10:]))}
    return out, records


@highest_precision
def finetune_transcoders(transcoders: Sequence[SAE], hidden: Sequence[jax.Array], mlp_output: jax.Array,
                         rep: Replacement, config: CircuitConfig, key: jax.Array) -> tuple[list[SAE], np.ndarray]:
    """The chained transcoders trained together for config.finetune_epochs (the replacement without error terms,
    end to end): per batch, the sum of each transcoder's own loss (its architecture's: reconstruction of the MLP's
    true layer_l plus its sparsity penalty) on the input the chain gives it (the previous transcoder's prediction;
    gradients flow through it into the earlier transcoders) plus config.output_weight x MSE(the replacement's
    output, the MLP's). The per-layer losses keep every transcoder a sparse predictor of its own layer (what the
    error terms and the graphs measure); on the strong recipe the output term changes little, training the three
    through the chain is what lifts exact match (docs/circuit.md, Targets).

    hidden: mlp_hidden's [x, layer1, layer2, layer3] (N, d_l); mlp_output (N,). A fresh Adam at config.finetune_lr
    (well below the per-layer lr: a fresh Adam's first steps move every weight by about lr, which at 3e-3 undid the
    per-layer training, docs/circuit.md), decayed to 0 on a cosine so that it settles; no dead-latent counting
    (AuxK off), each architecture's decoder normalisation and post-update kept. -> (transcoders, step losses (S,))."""
    archs = [tc.arch for tc in transcoders]
    cfgs = [tc.cfg for tc in transcoders]
    params = tuple(tc.params() for tc in transcoders)
    buffers = tuple(tc.buffers() for tc in transcoders)
    n = len(mlp_output)
    batch_size = min(config.batch_size, n)
    steps = config.finetune_epochs * (n // batch_size)
    tx = optax.adam(optax.cosine_decay_schedule(config.finetune_lr, steps), b1=0.9, b2=0.999, eps=1e-8)

    def loss_of(params, buffers, x, targets, y):
        h, total, updated = x, 0.0, []
        for arch, cfg, p, b, target in zip(archs, cfgs, params, buffers, targets):
            batch = arch.batch(h, target)
            ctx = TrainContext(dead=jnp.zeros(p["b_enc"].shape, bool))
            value, (_, new_b, _) = arch.loss(p, b, batch, ctx, cfg)
            h = batch.decode(p, arch.activate(batch.pre_activation(p), p, b, cfg))
            total = total + value
            updated.append(new_b)
        return total + config.output_weight * mse(h @ rep.w_out + rep.b_out, y), tuple(updated)

    def step(carry, batch):
        params, buffers, opt_state = carry
        x, *targets, y = batch
        (loss, buffers), grads = jax.value_and_grad(loss_of, has_aux=True)(params, buffers, x, targets, y)
        grads = tuple(project_out_parallel(g, p) if a.unit_decoder else g for a, g, p in zip(archs, grads, params))
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = tuple(renormalise_decoder(p) if a.unit_decoder else p for a, p in zip(archs, params))
        params = tuple(a.post_update(p) if a.post_update is not None else p for a, p in zip(archs, params))
        return (params, buffers, opt_state), loss

    epoch = make_batched_epoch(step, batch_size, keep_partial_batch=False)  # one batch shape: one program
    arrays = (*(jnp.asarray(h, jnp.float32) for h in hidden), jnp.asarray(mlp_output, jnp.float32))
    carry = jax.tree.map(jnp.copy, (params, buffers, tx.init(params)))
    losses = []
    for e in range(config.finetune_epochs):
        carry, step_losses = epoch(carry, arrays, epoch_permutation(key, e, n))
        losses.append(step_losses)
    params, buffers, _ = carry
    tuned = [SAE(tc.arch, tc.cfg, p, b, transcoder=True) for tc, p, b in zip(transcoders, params, buffers)]
    return tuned, np.asarray(jnp.concatenate(losses))


@jax.jit
def _prediction(tc: SAE, h: jax.Array) -> jax.Array:
    return tc(h)[0]


@jax.jit
def _quality(rep: Replacement, hidden: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
    out = []
    for layer in range(len(rep.transcoders)):
        f = rep.activate(layer, rep.pre(layer, hidden[layer]))
        target = hidden[layer + 1]
        residual = target - rep.predict(layer, f, hidden[layer])
        fvu = jnp.sum(residual**2) / jnp.sum((target - target.mean(axis=0)) ** 2)
        out.append((fvu, jnp.mean(jnp.sum(f > 0, axis=1))))
    return out


@highest_precision
def layer_quality(mlp: InterpretabilityMLP, rep: Replacement, inputs: np.ndarray) -> list[dict[str, float]]:
    """Per transcoder on inputs (N, D): fvu (its residual's variance over the layer's, from the true input) and l0
    (mean active features per row)."""
    _, hidden = mlp_hidden(mlp, inputs)
    return [{"fvu": float(fvu), "l0": float(l0)} for fvu, l0 in _quality(rep, list(hidden))]
