"""Comparison helpers for the parity suite.

Every comparison goes through `assert_close`, which records the measured max |diff| next to its
tolerance; `PARITY_REPORT=path.json pytest parity_tests` writes them out (the full measured table; docs/parity.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# float32 machine epsilon (2**-23): the unit most tolerances below are expressed in.
EPS32 = float(np.finfo(np.float32).eps)

MEASURED: list[dict] = []

# The reference's published artifacts (tests read them; the product never does). MONOSEM_UPSTREAM=DIR points
# elsewhere; without them the tests that need them skip, except under CI=true, where they fail.
UPSTREAM = Path(os.environ.get("MONOSEM_UPSTREAM", Path(__file__).resolve().parents[2] / "shared" / "upstream"))


def missing_upstream(what: Path) -> None:
    """Skip (fail under CI=true) because the upstream fixture `what` is absent, saying how to provide it."""
    message = f"upstream fixture {what} not found: set MONOSEM_UPSTREAM=DIR (default ../shared/upstream beside the repo)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def max_abs_diff(actual, expected) -> float:
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64)))) if a.size else 0.0


def ulps(reference, n: float, *, floor: float = 1.0) -> float:
    """n float32 ulps of the largest |value| in `reference` (but at least of `floor`): the natural unit for
    a float32 result whose only error is rounding, which scales with the magnitudes involved."""
    return n * EPS32 * max(floor, float(np.max(np.abs(to_numpy(reference)))))


def assert_close(name: str, actual, expected, tol: float) -> float:
    """Assert max |actual - expected| <= tol (same shape required) and record the measurement."""
    diff = max_abs_diff(actual, expected)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    MEASURED.append({"test": test, "quantity": name, "max_abs_diff": diff, "tolerance": tol})
    assert diff <= tol, f"{name}: max |diff| {diff:.3e} exceeds tolerance {tol:.3e}"
    return diff


def task_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows of the 5x2 pointer task: inputs (n, 10) float32, targets (n, 1) float32."""
    from jax_impl.task.pointer import pointer_targets

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 10, size=(n, 2, 4))
    pointers = rng.integers(0, 4, size=(n, 2, 1))
    inputs = np.concatenate([values, pointers], axis=-1).reshape(n, 10)
    return inputs.astype(np.float32), pointer_targets(inputs).astype(np.float32).reshape(n, 1)


def randomize_batch_stats(model: torch.nn.Module, seed: int = 0) -> None:
    """Give a fresh torch MLP non-trivial BatchNorm statistics and affine parameters (eval mode
    would otherwise be a near-identity that hides a swapped mean/var or a missing eps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (model.layers["bn1"], model.layers["bn2"]):
            bn.running_mean.normal_(0.0, 0.5, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.normal_(0.0, 0.1, generator=g)
            bn.num_batches_tracked.fill_(7)
