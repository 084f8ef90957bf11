"""Synthetic but task-shaped arrays for the circuit reports (jax_impl.reports.circuit_trace.write_reports): the
report tests, the reports stage of benchmarks/bench.py, and screenshots without training anything.

    python benchmarks/report_demo.py OUT_DIR [--n 10000]   # the four reports of synthetic data into OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jax_impl.reports.circuit_trace import write_reports


def demo_arrays(n: int = 10_000, *, n_features: int = 2048, seed: int = 0,
                x_dim: int = 5, y_dim: int = 2) -> dict[str, np.ndarray]:
    """Synthetic but task-shaped inputs for `write_reports` (tests, timing, screenshots).

    Inputs and targets follow the task definition; ``layer2`` (N, 512) is a ReLU of a random
    projection of the one-hot pointers, pointed-at values and target, so neurons depend on
    the computation; ``features`` (N, n_features) is a sparse non-negative ReLU encoding of
    layer2 (about 3% active, like the trained SAE's L0 of ~60 of 2048).
    """
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, 10, size=(n, x_dim * y_dim))
    last = (y_dim - 1) * x_dim
    inputs[:, x_dim - 1] = rng.integers(0, x_dim - 1, n)
    inputs[:, last + x_dim - 1] = rng.integers(0, x_dim - 1, n)
    rows = np.arange(n)
    a, b = inputs[rows, inputs[:, x_dim - 1]], inputs[rows, last + inputs[:, last + x_dim - 1]]
    expected = np.abs(a - b).astype(np.float64)
    codes = np.stack([inputs[:, x_dim - 1], x_dim + inputs[:, last + x_dim - 1],
                      2 * x_dim + a, 2 * x_dim + 10 + b, 2 * x_dim + 20 + expected.astype(int)], axis=1)
    onehot = np.zeros((n, 2 * x_dim + 30), np.float32)
    np.put_along_axis(onehot, codes, 1.0, axis=1)
    # Five ones per row times N(0, 0.45) weights: pre-activations ~ N(0, 1), like after BatchNorm.
    layer2 = np.maximum(onehot @ rng.normal(0, 0.45, (onehot.shape[1], 512)).astype(np.float32)
                        + rng.normal(0, 0.1, (n, 512)).astype(np.float32), 0)
    pre = layer2 @ (rng.normal(0, 1, (512, n_features)).astype(np.float32) / np.sqrt(512))
    active = max(1, round(0.03 * n_features))
    threshold = np.partition(pre, -active - 1, axis=1)[:, -active - 1:-active]
    features = np.maximum(pre - threshold, 0)
    features *= 0.6 / np.median(features.max(axis=1))             # strongest feature ~0.6
    predictions = expected + rng.normal(0, 0.3, n)
    return {"inputs": inputs, "expected": expected, "predictions": predictions,
            "layer2": layer2, "features": features.astype(np.float32)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the four reports for synthetic task-shaped data.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args(argv)
    write_reports(args.out_dir, **demo_arrays(args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
