"""Fixtures shared by tests/ and parity_tests/."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The tests start about a hundred `monosem` and helper processes that compile the same small programs again.
# One compilation cache per test session (a fresh temporary folder, removed at exit; never a user's cache) lets
# each later process load a program instead of compiling it: about a third of a small run's time. A loaded
# program is the compiled program, so no result changes (the byte-identity tests compare across processes).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="monosem-tests-jax-cache-")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
    os.environ.update({
        "JAX_COMPILATION_CACHE_DIR": _jax_cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # JAX's default keeps only programs of >= 1 s
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    })

# Property-based tests (tests/cli/test_fuzz.py): `ci` (the default) runs each test's few derandomized examples, so
# `make test` is fast and the same every time; HYPOTHESIS_PROFILE=long draws many more, freshly random.
settings.register_profile("ci", deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
settings.register_profile("long", deadline=None, database=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent

# A pipeline run small enough for CI (seconds) that still exercises every stage and artifact.
TINY_RUN_ARGS = [
    "--seed", "7", "--n-train", "512", "--n-val", "128", "--n-test", "128",
    "--mlp-epochs", "3", "--mlp-log-every", "1", "--sae-epochs", "2", "--sae-log-every", "1", "--dict-size", "512",
    # the causal stage measures little (two variables): its cost does not shrink with the run
    "--causal-variables", "A,T", "--causal-fit-pairs", "64", "--causal-eval-pairs", "64",
    "--causal-isolation-pairs", "32", "--causal-ranks", "1,2",
    "--causal-das-steps", "5", "--causal-das-batch", "32", "--causal-max-features", "2", "--causal-shortlist", "4",
    "--causal-random-draws", "1", "--causal-circuit-rows", "64",
    # the circuit stage has a test of its own (tests/jobs/test_pipeline.py): every other tiny run leaves it out
    "--no-circuit",
]


def xlsx_cells(path: Path) -> list[tuple]:
    """Every cell value of every sheet, row by row (xlsx files differ in bytes by their timestamps)."""
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True)
    try:
        return [tuple(row) for ws in wb.worksheets for row in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


# The SAE tests' activations: sparse codes over 24 random directions (15% of the codes non-zero), so that an SAE
# has something to find. One file per session, shared by train-sae, sweep and many-host tests.
ACTIVATION_ROWS, ACTIVATION_WIDTH = 1200, 37


@pytest.fixture(scope="session")
def activations(tmp_path_factory) -> Path:
    """An (ACTIVATION_ROWS, ACTIVATION_WIDTH) float32 .npy of sparse codes; a test file that needs other
    activations defines its own `activations` fixture."""
    import numpy as np

    rng = np.random.default_rng(0)
    codes = rng.random((ACTIVATION_ROWS, 24)) * (rng.random((ACTIVATION_ROWS, 24)) < 0.15)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, (codes @ rng.normal(size=(24, ACTIVATION_WIDTH))).astype(np.float32))
    return path


@pytest.fixture(scope="session")
def upstream() -> Path:
    from parity_tests.helpers import UPSTREAM, missing_upstream

    if not (UPSTREAM / "mlp" / "perfect_mlp.pth").exists():
        missing_upstream(UPSTREAM / "mlp" / "perfect_mlp.pth")
    return UPSTREAM


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished `monosem run` with TINY_RUN_ARGS; treat it as read-only."""
    from jax_impl.cli import main

    run_dir = tmp_path_factory.mktemp("tiny_run")
    assert main(["run", "--run-dir", str(run_dir), *TINY_RUN_ARGS]) == 0
    return run_dir


@pytest.fixture(scope="session")
def sae_lens():
    """The real `sae_lens` package (the `interop` extra), imported quietly; the test skips without it, except under
    CI=true (`make test` installs it), where it fails."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sae_lens
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("sae-lens is not installed: `make test` installs the `interop` extra")
        pytest.skip("sae-lens is not installed (pip install -e '.[interop]')")
    return sae_lens
