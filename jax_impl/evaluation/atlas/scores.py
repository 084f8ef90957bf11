"""Scores of SAE features against the task's concepts: precision, recall, F1 and AUROC of every (feature, concept)
pair, and the best F1 of a thresholded score (which the linear probe uses)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class ConceptScores:
    """Scores of F features against C concepts, each (F, C) float64.

    precision/recall/f1 treat "feature > 0" as a prediction of the concept; auroc ranks
    rows by the feature's activation (0.5 = chance; ties, mostly zeros, count half).
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    auroc: np.ndarray


def score_features(features: np.ndarray, mask: np.ndarray) -> ConceptScores:
    """Score features (N, F) float against concepts mask (N, C) bool (each concept on some rows, not all)."""
    n = len(mask)
    active = (features > 0).astype(np.float32)
    concept = mask.astype(np.float32)
    # Counts as matrix products; float32 sums of 0/1 are exact below 2**24 rows.
    tp = (active.T @ concept).astype(np.float64)  # (F, C)
    n_active = active.sum(axis=0, dtype=np.float64)[:, None]  # (F, 1)
    n_pos = concept.sum(axis=0, dtype=np.float64)[None, :]  # (1, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_active > 0, tp / n_active, 0.0)
    recall = tp / n_pos
    f1 = 2 * tp / (n_active + n_pos)
    # Mann-Whitney: AUROC = (sum of positive ranks - n_pos(n_pos+1)/2) / (n_pos * n_neg).
    ranks = rankdata(features, axis=0)  # (N, F) float64, ties averaged
    rank_sum = ranks.T @ mask.astype(np.float64)  # (F, C)
    auroc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    return ConceptScores(precision, recall, f1, auroc)



def best_threshold_f1(scores: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The highest F1 of "score > threshold" as a detector of mask, over all thresholds.

    scores (N,) float, mask (N,) bool with some positives -> (F1, threshold). Exact: every cut of the
    rows sorted by score is tried; the threshold is halfway between the last row in and the first out.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(mask[order])  # true positives when the first k+1 rows are called positive
    f1 = 2 * tp / (np.arange(1, len(scores) + 1) + mask.sum())
    # A cut can only fall between different scores.
    f1[:-1][sorted_scores[:-1] == sorted_scores[1:]] = -1.0
    k = int(np.argmax(f1))
    below = sorted_scores[k + 1] if k + 1 < len(scores) else sorted_scores[k] - 1.0
    return float(f1[k]), float((sorted_scores[k] + below) / 2)
