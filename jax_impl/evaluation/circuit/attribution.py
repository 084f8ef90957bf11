"""Attribution graphs of the replacement model, many inputs at once.

For one input, freeze what the nonlinearities chose: each transcoder's active set (mask_l = features_l > 0; every
architecture of the family activates as features = pre * mask) and the error terms (error_l: the MLP's layer_l
minus transcoder l's prediction from the MLP's true layer_{l-1}, replacement.error_terms). The replacement is
then linear in its leaves (the input cells, the error terms and the biases), and every number below is exact:

    g_3 = w_out;  g_{l-1} = (mask_l * (g_l @ w_dec_l^T)) @ w_enc_l^T + g_l @ w_skip_l^T    (N, d) d output/d h
    effect of feature j of layer l = f_lj * (w_dec_l[j] . g_l)       (its total effect, direct and indirect)
    effect of input cell i = x_i * g_0[i];  of error_l = error_l . g_l
    bias = b_out + sum_l (b_dec_l . g_l + sum_j mask_lj b_enc_lj (w_dec_l[j] . g_l))
    output = sum of the input cells' effects + the errors' + bias                    (exactly; a test checks it)

A feature's effect is what removing it would move the output by with the masks frozen (its own contribution
and everything downstream of it): the "influence" of a node. Edges are direct: the weight from source s to
feature t of layer l is mask_t * (c_s . w_enc_l[:, t]), with c_s what s writes into the layer t reads (its
activation times its decoder row, or an input cell times its unit vector, or an error vector), carried through
the skip connections of the layers in between; to the output c_s . w_out. A feature's incoming edges from all
sources plus its bias term mask_t * b_enc_t sum to its activation.

Pruning keeps, per input, the fewest features (by |effect|, largest first) whose graph reaches completeness >=
`share` (below), at most `max_feature_nodes` (where that many do not reach it, the prefix of at most that many
with the highest completeness, reported as it is); input cells and error nodes are always kept.

Completeness (what a user can check): run the frozen linear model with the dropped features set to zero (their
contributions removed, and what they fed downstream with them; errors and biases kept):

    completeness = 1 - |output - output_kept| / |output - output_none|

where output_none drops every feature. 1: the kept features carry all that the features carry; 0: no better than
none of them (it can be negative). Where the features carry nothing (|output - output_none| < 1e-6) it is 1.

Checks by intervention (masks NOT frozen): the top `checks` features of a graph are zeroed one at a time in the
actual replacement model (error terms held, every transcoder downstream re-activating), and the output's change
is compared with the feature's effect; the strongest `edge_checks` edges between kept nodes of adjacent layers
(input -> layer1, layer1 -> layer2, layer2 -> layer3) are checked by zeroing the source and re-activating the
target's layer. A check agrees when |measured - attributed| <= atol + rtol |attributed|.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.evaluation.circuit.config import LAYERS
from jax_impl.evaluation.circuit.replacement import Replacement, mlp_hidden
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.precision import highest_precision

EPSILON = 1e-6  # |output - output_none| below this: the features carry nothing, completeness 1


@dataclass(frozen=True)
class Attribution:
    """The frozen linear replacement of N inputs, numpy float32 unless said.

    inputs (N, D) int; output (N,) the MLP's; hidden [x, layer1, layer2, layer3] the MLP's (N, d_l);
    errors, features, masks: per layer (N, d_l), (N, F_l), (N, F_l); grads: d output / d h_l for l = 0..3 (N, d_l);
    effects: per layer (N, F_l), each feature's total effect; input_effects (N, D); error_effects (N, 3);
    bias (N,) the biases' share of the output. linear_error: the largest |f - pre * mask| (0 for the family).
    """

    inputs: np.ndarray
    output: np.ndarray
    hidden: list[np.ndarray]
    errors: list[np.ndarray]
    features: list[np.ndarray]
    masks: list[np.ndarray]
    grads: list[np.ndarray]
    effects: list[np.ndarray]
    input_effects: np.ndarray
    error_effects: np.ndarray
    bias: np.ndarray
    linear_error: float

    def __len__(self) -> int:
        return len(self.output)

    @property
    def offsets(self) -> np.ndarray:
        """Where each layer's features start in the concatenated (N, sum F_l) effects."""
        return np.cumsum([0] + [f.shape[1] for f in self.features])

    def all_effects(self) -> np.ndarray:
        return np.concatenate(self.effects, axis=1)


@jax.jit
def _attribute(rep: Replacement, hidden: list[jax.Array]):
    n_layers = len(rep.transcoders)
    x = hidden[0]
    features, masks, errors, linear_error = [], [], [], jnp.zeros(())
    for layer in range(n_layers):
        pre = rep.pre(layer, hidden[layer])
        f = rep.activate(layer, pre)
        mask = (f > 0).astype(jnp.float32)
        linear_error = jnp.maximum(linear_error, jnp.max(jnp.abs(f - pre * mask)))
        features.append(f)
        masks.append(mask)
        errors.append(hidden[layer + 1] - rep.predict(layer, f, hidden[layer]))
    grads = [None] * (n_layers + 1)
    grads[n_layers] = jnp.broadcast_to(rep.w_out, hidden[n_layers].shape)
    effects, error_effects = [None] * n_layers, [None] * n_layers
    bias = jnp.full(x.shape[:1], rep.b_out)
    for layer in reversed(range(n_layers)):
        w_enc, b_enc, w_dec, b_dec, skip = rep.weights(layer)
        g = grads[layer + 1]
        through = g @ w_dec.T  # (N, F): d output / d feature
        effects[layer] = features[layer] * through
        error_effects[layer] = jnp.sum(errors[layer] * g, axis=1)
        bias = bias + g @ b_dec + jnp.sum(masks[layer] * b_enc * through, axis=1)
        grads[layer] = (masks[layer] * through) @ w_enc.T + g @ skip.T
    return (features, masks, errors, grads, effects, x * grads[0], jnp.stack(error_effects, axis=1), bias,
            linear_error)


def _np(values) -> list[np.ndarray]:
    return [np.asarray(v) for v in values]


@highest_precision
def attribute(rep: Replacement, mlp: InterpretabilityMLP, inputs: np.ndarray) -> Attribution:
    """The attribution of every input row (N, D) int: one jitted call for all of them."""
    _, hidden = mlp_hidden(mlp, inputs)
    return attribute_hidden(rep, inputs, hidden)


@highest_precision
def attribute_hidden(rep: Replacement, inputs: np.ndarray, hidden: list) -> Attribution:
    """attribute() from the network's activations [x (N, D), layer1, layer2, layer3] (any network whose output is
    layer3 @ w_out + b_out: the error terms make up the rest)."""
    hidden = [jnp.asarray(h, jnp.float32) for h in hidden]
    output = hidden[-1] @ rep.w_out + rep.b_out
    features, masks, errors, grads, effects, input_effects, error_effects, bias, linear_error = _attribute(rep, list(hidden))
    return Attribution(np.asarray(inputs), np.asarray(output), _np(hidden), _np(errors), _np(features), _np(masks),
                       _np(grads), _np(effects), np.asarray(input_effects), np.asarray(error_effects), np.asarray(bias),
                       float(linear_error))


def ranked_features(att: Attribution) -> np.ndarray:
    """Each row's features by |effect|, largest first, active ones only: (N, sum F_l) indices into the concatenated
    features, -1 past a row's active ones."""
    size = np.abs(att.all_effects())
    order = np.argsort(-size, axis=1, kind="stable")
    return np.where(np.take_along_axis(size, order, axis=1) > 0, order, -1)


def keep_first(att: Attribution, counts: np.ndarray) -> list[np.ndarray]:
    """The kept features per layer (N, F_l) bool: each row's first counts[row] features of ranked_features."""
    order = ranked_features(att)
    take = (np.arange(order.shape[1]) < np.asarray(counts)[:, None]) & (order >= 0)
    keep = np.zeros(order.shape, bool)
    rows = np.nonzero(take)
    keep[rows[0], order[take]] = True
    o = att.offsets
    return [keep[:, o[i]:o[i + 1]] for i in range(len(att.features))]


def prune(rep: Replacement, att: Attribution, share: float, max_feature_nodes: int) -> list[np.ndarray]:
    """The kept features per layer (N, F_l) bool: per row the fewest features, largest |effect| first, whose graph
    reaches completeness >= share (module docstring), at most max_feature_nodes; where none that small does, the
    prefix of at most max_feature_nodes with the highest completeness."""
    active = (att.all_effects() != 0).sum(axis=1)
    best_count = np.zeros(len(att), np.int64)
    best_value = np.full(len(att), -np.inf)
    done = np.zeros(len(att), bool)
    full = frozen_output(rep, att, None)
    none = frozen_output(rep, att, [np.zeros_like(m, bool) for m in att.masks])
    for count in range(0, min(max_feature_nodes, int(active.max(initial=0))) + 1):
        counts = np.minimum(count, active)
        value = _completeness(full, frozen_output(rep, att, keep_first(att, counts)), none)
        better = ~done & (value > best_value)
        best_count[better], best_value[better] = counts[better], value[better]
        done |= value >= share
        if done.all():
            break
    return keep_first(att, best_count)


@jax.jit
def _frozen_outputs(rep: Replacement, x: jax.Array, errors: list[jax.Array], masks: list[jax.Array],
                    keep: list[jax.Array]) -> jax.Array:
    return rep.run(x, errors, scale=keep, masks=masks)[0]


@highest_precision
def frozen_output(rep: Replacement, att: Attribution, keep: list[np.ndarray] | None) -> np.ndarray:
    """The frozen linear model's output (N,) with only the `keep` features (per layer (N, F_l) bool; None: all)."""
    keep = [np.ones_like(m) for m in att.masks] if keep is None else [k.astype(np.float32) for k in keep]
    return np.asarray(_frozen_outputs(rep, jnp.asarray(att.hidden[0]), att.errors, att.masks, keep))


def completeness(rep: Replacement, att: Attribution, keep: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(completeness (N,), output_kept (N,), output_none (N,)): see the module docstring."""
    full = frozen_output(rep, att, None)
    kept = frozen_output(rep, att, keep)
    none = frozen_output(rep, att, [np.zeros_like(k) for k in keep])
    return _completeness(full, kept, none), kept, none


def _completeness(full: np.ndarray, kept: np.ndarray, none: np.ndarray) -> np.ndarray:
    carried = np.abs(full - none)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(carried < EPSILON, 1.0, 1.0 - np.abs(full - kept) / carried)


@jax.jit
def _ablated(rep: Replacement, x: jax.Array, errors: list[jax.Array], scale: list[jax.Array]) -> jax.Array:
    return rep.run(x, errors, scale=scale)[0]


@highest_precision
def ablation_checks(rep: Replacement, att: Attribution, checks: int) -> dict[str, np.ndarray]:
    """Zero each row's top `checks` features (by |effect|) one at a time in the nonlinear replacement (error terms
    held) -> {"layer", "feature" (N, C) int, "attributed", "measured" (N, C) float32}; measured = output - output
    with the feature zeroed. Rows with fewer active features repeat their last (measured once each, counted
    as many times: callers use `valid`)."""
    effects = att.all_effects()
    checks = min(checks, effects.shape[1])
    order = np.argsort(-np.abs(effects), axis=1, kind="stable")[:, :checks]
    valid = np.take_along_axis(effects, order, axis=1) != 0
    o = att.offsets
    layer = np.searchsorted(o, order, side="right") - 1
    feature = order - o[layer]
    n = len(att)
    x = jnp.asarray(np.tile(att.hidden[0], (checks, 1)))
    errors = [jnp.asarray(np.tile(e, (checks, 1))) for e in att.errors]
    scale = [np.ones((checks * n, f.shape[1]), np.float32) for f in att.features]
    rows = np.arange(checks * n)
    flat_layer, flat_feature = layer.T.reshape(-1), feature.T.reshape(-1)  # check c of row r at c * n + r
    for i in range(len(scale)):
        at = flat_layer == i
        scale[i][rows[at], flat_feature[at]] = 0.0
    ablated = np.asarray(_ablated(rep, x, errors, [jnp.asarray(s) for s in scale])).reshape(checks, n).T
    clean = np.asarray(_ablated(rep, jnp.asarray(att.hidden[0]), att.errors, [jnp.ones_like(f) for f in att.features]))
    return {"layer": layer, "feature": feature, "attributed": np.take_along_axis(effects, order, axis=1),
            "measured": clean[:, None] - ablated, "valid": valid}


def agrees(measured: np.ndarray, attributed: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    return np.abs(measured - attributed) <= atol + rtol * np.abs(attributed)


# --------------------------------------------------------------------------- edges


def _sources(rep: Replacement, att: Attribution, row: int, keep: list[np.ndarray],
             with_bias: bool) -> list[tuple[str, int, np.ndarray]]:
    """The kept source nodes of one row: (id, the hidden index it writes into, what it writes (d,)); with_bias:
    also each decoder bias b_dec_l as a source "bias/LAYER"."""
    out = [(f"input/{i}", 0, np.eye(att.hidden[0].shape[1], dtype=np.float32)[i] * att.hidden[0][row, i])
           for i in range(att.hidden[0].shape[1])]
    for layer, name in enumerate(LAYERS):
        w_dec = np.asarray(rep.weights(layer)[2])
        for j in np.flatnonzero(keep[layer][row]):
            out.append((f"{name}/{j}", layer + 1, att.features[layer][row, j] * w_dec[j]))
        out.append((f"error/{name}", layer + 1, att.errors[layer][row]))
        if with_bias:
            out.append((f"bias/{name}", layer + 1, np.asarray(rep.weights(layer)[3])))
    return out


def graph_edges(rep: Replacement, att: Attribution, row: int, keep: list[np.ndarray], min_weight: float = 1e-6,
                with_bias: bool = False) -> list[tuple[str, str, float]]:
    """Every edge between one row's kept nodes with |weight| > min_weight: (source id, target id, weight).
    with_bias: also the edges of the decoder biases (sources "bias/LAYER"): then, with every active feature kept,
    a feature's incoming edges plus mask_t * b_enc_t sum to its activation, and the output's plus b_out to it."""
    weights = [tuple(np.asarray(w) for w in rep.weights(layer)) for layer in range(len(LAYERS))]
    w_out = np.asarray(rep.w_out)
    edges = []
    for source, home, written in _sources(rep, att, row, keep, with_bias):
        c = written
        for layer in range(home, len(LAYERS) + 1):  # the transcoder that reads hidden[layer]; then the output
            if layer == len(LAYERS):
                edges.append((source, "output", float(c @ w_out)))
                break
            w_enc, _, _, _, skip = weights[layer]
            targets = np.flatnonzero(keep[layer][row])
            values = (c @ w_enc[:, targets]) * att.masks[layer][row, targets]
            edges += [(source, f"{LAYERS[layer]}/{t}", float(v)) for t, v in zip(targets, values)]
            c = c @ skip  # what the source writes into the next hidden layer through the skip connection
            if not np.any(c):
                break
    return [e for e in edges if abs(e[2]) > min_weight]


@partial(jax.jit, static_argnums=1)
def _layer_features(rep: Replacement, layer: int, h: jax.Array) -> jax.Array:
    return rep.activate(layer, rep.pre(layer, h))


@highest_precision
def edge_checks(rep: Replacement, att: Attribution, keep: list[np.ndarray], per_graph: int) -> list[list[dict]]:
    """Per row, its `per_graph` strongest edges between kept nodes of adjacent layers (input cell -> layer1
    feature, layer_l feature -> layer_{l+1} feature), each checked by zeroing the source in the hidden layer the
    target reads (error terms held) and re-activating the target's transcoder (mask not frozen):
    [{"source", "target", "attributed", "measured"}] per row."""
    n, checks = len(att), [[] for _ in range(len(att))]
    if per_graph == 0:
        return checks
    weights = [tuple(np.asarray(w) for w in rep.weights(layer)) for layer in range(len(LAYERS))]
    candidates = [[] for _ in range(n)]  # (|w|, w, target layer, source kind/index, target index)
    for layer in range(len(LAYERS)):
        w_enc = weights[layer][0]
        for r in range(n):
            targets = np.flatnonzero(keep[layer][r])
            if not len(targets):
                continue
            m = att.masks[layer][r, targets]
            if layer == 0:
                x = att.hidden[0][r]
                w = x[:, None] * w_enc[:, targets] * m
                sources = [("input", i) for i in range(len(x))]
            else:
                src = np.flatnonzero(keep[layer - 1][r])
                w_dec = weights[layer - 1][2]
                w = (att.features[layer - 1][r, src, None] * w_dec[src]) @ w_enc[:, targets] * m
                sources = [(LAYERS[layer - 1], j) for j in src]
            for si, s in enumerate(sources):
                for ti, t in enumerate(targets):
                    if w[si, ti] != 0:
                        candidates[r].append((abs(w[si, ti]), float(w[si, ti]), layer, s, int(t)))
    chosen = [sorted(c, key=lambda e: -e[0])[:per_graph] for c in candidates]
    for layer in range(len(LAYERS)):
        rows, hs, targets, attributed, names = [], [], [], [], []
        for r in range(n):
            for _, w, lay, (kind, j), t in chosen[r]:
                if lay != layer:
                    continue
                h = att.hidden[layer][r].copy()
                if kind == "input":
                    h[j] = 0.0
                else:
                    h = h - att.features[layer - 1][r, j] * weights[layer - 1][2][j]
                rows.append(r)
                hs.append(h)
                targets.append(t)
                attributed.append(w)
                names.append((f"input/{j}" if kind == "input" else f"{kind}/{j}", f"{LAYERS[layer]}/{t}"))
        if not rows:
            continue
        after = np.asarray(_layer_features(rep, layer, jnp.asarray(np.stack(hs))))
        for i, (r, t) in enumerate(zip(rows, targets)):
            measured = float(att.features[layer][r, t] - after[i, t])
            checks[r].append({"source": names[i][0], "target": names[i][1], "attributed": attributed[i],
                              "measured": measured})
    return checks
