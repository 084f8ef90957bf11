"""xlsx splits: what jax_impl writes loads in the upstream-style loader (pandas + ast.literal_eval), and
the upstream files read the same in both loaders."""

from __future__ import annotations

import numpy as np
import pytest

from jax_impl.task.pointer import Split
from jax_impl.task.splits import read_split, write_split
from parity_tests.conftest import UPSTREAM_SPLITS
from parity_tests.helpers import missing_upstream, task_rows

pytest.importorskip("pandas", reason="the upstream loader needs pandas")
from monosem_torch_ref.data import load_excel_split  # noqa: E402


def test_written_split_loads_in_upstream_loader(tmp_path):
    x, y = task_rows(200, seed=40)
    split = Split(x.astype(np.int32), y[:, 0])
    write_split(tmp_path / "mlp_train.xlsx", split)
    X, Y = load_excel_split(tmp_path / "mlp_train.xlsx")
    # Exact: integers survive the text round trip, and the loader yields upstream's (N, 10), (N, 1) float32.
    assert X.shape == (200, 10) and Y.shape == (200, 1)
    np.testing.assert_array_equal(X.numpy(), x)
    np.testing.assert_array_equal(Y.numpy(), y)


@pytest.mark.parametrize("name", ["val", "test"])
def test_upstream_split_reads_the_same_in_both_loaders(name):
    path = UPSTREAM_SPLITS[name]
    if not path.is_file():
        missing_upstream(path)
    X, Y = load_excel_split(path)
    ours = read_split(path)
    np.testing.assert_array_equal(X.numpy(), ours.inputs.astype(np.float32))
    np.testing.assert_array_equal(Y.numpy()[:, 0], ours.targets)
