"""Score a trained SAE against the features planted in synthetic data (jax_impl.data.synthetic).

Directions (no data needed), from the cosines between the true directions (F, D) and the SAE's decoder rows
(L, D):
  mean_max_cos   mean over true features of the best cosine with any latent (signed: a latent pointing the
                 other way does not recover a non-negative feature)
  mcc            mean |cosine| of an optimal one-to-one matching (Hungarian; SAELens' `mean_correlation_coefficient`)
  uniqueness     distinct true features among the latents' best matches / L (SAELens' `feature_uniqueness`)
Firing, over every row, for each true feature and the latent matched to it one-to-one:
  precision, recall, f1      means over true features (a latent "fires" where its activation is non-zero)
  f1_at_least_0.9            share of true features whose matched latent has F1 >= 0.9
  latent_f1                  SAELens' classification F1: each latent vs its best-matching true feature, mean over latents
  absorption                 children only fire with their parent; mean over children of the share of the child's
                             rows where the parent's matched latent is silent (0 = the parent latent always fires)
Reconstruction: explained_variance, mse, l0, dead_fraction (jax_impl.evaluation.metrics), shrinkage (mean |x_hat| / |x|).

`score_sae` scores one of ours; `Scorer` takes encoded chunks from anywhere (the benchmark feeds it
SAELens SAEs' outputs), so both are scored by the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from jax_impl.data.synthetic import GroundTruth
from jax_impl.evaluation import metrics
from jax_impl.precision import highest_precision

DEFAULT_CHUNK_ROWS = 16384


def _unit(w: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    return w / np.where(norm > 0, norm, 1.0)


class Scorer:
    """Accumulates the scores chunk by chunk. decoder: (L, D), the SAE's feature directions. truth: as
    synthetic.load_synthetic checks it (feature ids and parents in range, rows ascending: activations() searches
    them), or built in memory."""

    def __init__(self, truth: GroundTruth, decoder: np.ndarray):
        decoder = np.asarray(decoder, np.float64)
        if decoder.ndim != 2 or decoder.shape[1] != truth.directions.shape[1]:
            raise ValueError(f"decoder has shape {decoder.shape}; expected (latents, {truth.directions.shape[1]})")
        self.truth = truth
        self.cos = _unit(np.asarray(truth.directions, np.float64)) @ _unit(decoder).T  # (F, L)
        true_idx, latent_idx = linear_sum_assignment(-np.abs(self.cos))
        self.matched = np.full(truth.n_features, -1, np.int64)  # -1 where L < F left a feature unmatched
        self.matched[true_idx] = latent_idx
        self.mcc = float(np.abs(self.cos[true_idx, latent_idx]).mean())
        self.best_true = np.abs(self.cos).argmax(axis=0)  # (L,)
        n_latents = decoder.shape[0]
        self.tp, self.fp, self.fn = (np.zeros(truth.n_features) for _ in range(3))
        self.latent_counts = np.zeros((3, n_latents))  # tp, fp, fn of each latent vs its best true feature
        children = np.nonzero(truth.parent >= 0)[0]
        self.children = children
        self.child_rows = np.zeros(len(children))
        self.child_rows_parent_silent = np.zeros(len(children))
        self.fired = np.zeros(n_latents, bool)
        self.rows = 0
        self.active = self.true_active = self.sse = self.norm_ratio = 0.0
        self.valid_rows = 0
        self.col_sum = np.zeros(decoder.shape[1])
        self.col_sq = np.zeros(decoder.shape[1])

    def add(self, start: int, x: np.ndarray, features: np.ndarray, reconstruction: np.ndarray) -> None:
        """Rows start..start+len(x)-1: x (n, D), the SAE's features (n, L) and reconstruction (n, D)."""
        x, features, reconstruction = (np.asarray(a, np.float64) for a in (x, features, reconstruction))
        true_fires = self.truth.activations(start, start + len(x)) > 0  # (n, F)
        fires = features != 0  # (n, L)
        ok = self.matched >= 0
        matched_fires = np.zeros_like(true_fires)
        matched_fires[:, ok] = fires[:, self.matched[ok]]
        self.tp += np.sum(matched_fires & true_fires, axis=0)
        self.fp += np.sum(matched_fires & ~true_fires, axis=0)
        self.fn += np.sum(~matched_fires & true_fires, axis=0)
        best = true_fires[:, self.best_true]  # (n, L)
        self.latent_counts += [np.sum(fires & best, 0), np.sum(fires & ~best, 0), np.sum(~fires & best, 0)]
        if len(self.children):
            on_child = true_fires[:, self.children]  # (n, C)
            parent_latent_fires = matched_fires[:, self.truth.parent[self.children]]
            self.child_rows += on_child.sum(axis=0)
            self.child_rows_parent_silent += np.sum(on_child & ~parent_latent_fires, axis=0)
        self.fired |= fires.any(axis=0)
        self.rows += len(x)
        self.active += float(fires.sum())
        self.true_active += float(true_fires.sum())
        self.sse += float(np.sum(np.square(reconstruction - x)))
        x_norm = np.linalg.norm(x, axis=1)
        valid = x_norm > 1e-6
        self.norm_ratio += float(np.sum(np.linalg.norm(reconstruction, axis=1)[valid] / x_norm[valid]))
        self.valid_rows += int(valid.sum())
        self.col_sum += x.sum(axis=0)
        self.col_sq += np.square(x).sum(axis=0)

    def result(self) -> dict[str, float]:
        precision, recall, f1 = _prf(self.tp, self.fp, self.fn)
        _, _, latent_f1 = _prf(*self.latent_counts)
        centred = metrics.centred_sum_of_squares_from_sums(self.col_sum, self.col_sq, self.rows)
        seen = self.child_rows > 0
        return {
            "mean_max_cos": float(self.cos.max(axis=1).mean()),
            "mcc": self.mcc,
            "uniqueness": float(len(np.unique(self.best_true)) / len(self.best_true)),
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "f1_at_least_0.9": float(np.mean(f1 >= 0.9)),
            "latent_f1": float(latent_f1.mean()),
            "absorption": float(np.mean(self.child_rows_parent_silent[seen] / self.child_rows[seen])) if seen.any() else None,
            "explained_variance": metrics.explained_variance(self.sse, centred),
            "mse": metrics.mse_per_element(self.sse, self.rows * self.col_sum.shape[0]),
            "l0": metrics.mean_l0(self.active, self.rows),
            "true_l0": metrics.mean_l0(self.true_active, self.rows),
            "dead_fraction": metrics.dead_fraction(self.fired),
            "shrinkage": self.norm_ratio / max(self.valid_rows, 1),
        }


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return precision, recall, f1


@highest_precision
def score_sae(sae: Any, x: np.ndarray, truth: GroundTruth, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, float]:
    """Score one of our SAEs (a jax_impl.saes.SAE) on rows x (N, D) of the synthetic data behind `truth`."""
    scorer = Scorer(truth, np.asarray(sae.params()["w_dec"]))
    forward = jax.jit(lambda model, rows: model(rows))
    for start in range(0, len(x), chunk_rows):
        rows = np.asarray(x[start:start + chunk_rows], np.float32)
        reconstruction, features = forward(sae, rows)
        scorer.add(start, rows, np.asarray(features), np.asarray(reconstruction))
    return scorer.result()


def score_file(sae_path: Path | str, data_dir: Path | str) -> dict[str, float]:
    """Score an SAE file (.pth, .safetensors or a SAELens folder) on a folder written by `monosem synthetic`."""
    from jax_impl.data.synthetic import load_synthetic
    from jax_impl.interop.saelens import load_sae

    x, truth, _ = load_synthetic(data_dir)
    sae = load_sae(sae_path, input_dim=x.shape[1])
    return score_sae(sae, x, truth)
