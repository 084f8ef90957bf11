"""Fixtures for the JAX <-> PyTorch parity suite (upstream artifacts live in ../shared/upstream)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from parity_tests.helpers import MEASURED, UPSTREAM, missing_upstream

UPSTREAM_MLP = UPSTREAM / "mlp" / "perfect_mlp.pth"
UPSTREAM_SPLITS = {s: UPSTREAM / "dataset" / f"mlp_{s}.xlsx" for s in ("train", "val", "test")}


@pytest.fixture(scope="session", autouse=True)
def highest_matmul_precision():
    """Every JAX computation of the parity suite, its fixtures' included, traces float32 matmuls at full precision,
    as `monosem` and the public functions do (jax_impl.precision): the tests call the library's internals, which do
    not set it, and `import jax_impl` sets nothing for the process. Thread-local, like the tests."""
    from jax_impl.precision import matmul_precision

    with matmul_precision():
        yield


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("PARITY_REPORT")
    if path and MEASURED:
        Path(path).write_text(json.dumps(MEASURED, indent=1) + "\n")


@pytest.fixture(scope="session")
def upstream_state_dict() -> dict[str, torch.Tensor]:
    if not UPSTREAM_MLP.is_file():
        missing_upstream(UPSTREAM_MLP)
    return torch.load(UPSTREAM_MLP, weights_only=True)


@pytest.fixture(scope="session")
def upstream_splits():
    """{split: Split} for the three upstream xlsx files, read with the JAX reader."""
    from jax_impl.task.splits import read_split

    if not all(p.is_file() for p in UPSTREAM_SPLITS.values()):
        missing_upstream(UPSTREAM / "dataset")
    return {name: read_split(path) for name, path in UPSTREAM_SPLITS.items()}
