import ast

import jax
import numpy as np
import openpyxl
import pandas as pd
import pytest

from jax_impl.errors import UserError
from jax_impl.evaluation.inference import SEED_PROBE_INPUTS
from jax_impl.task.pointer import Split, TaskShape, generate_splits, pointer_targets, sample_pointer_task
from jax_impl.task.splits import read_split, write_split


def test_seed_examples():
    # The seed's five probe inputs with the expected outputs it prints.
    assert pointer_targets(np.asarray(SEED_PROBE_INPUTS)).tolist() == [8, 6, 4, 1, 1]
    # spec example: [8,9,5,1,3, 2,9,4,7,1] -> |a[3] - b[1]| = |1 - 9|
    assert pointer_targets(np.array([[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]])).tolist() == [8]


def test_targets_match_a_loop_over_rows():
    x, y = sample_pointer_task(jax.random.key(3), 500)
    x, y = np.asarray(x), np.asarray(y)
    for row, target in zip(x, y):
        a, b = row[:5], row[5:]
        assert target == abs(a[a[4]] - b[b[4]])


@pytest.mark.parametrize("shape", [TaskShape(5, 2), TaskShape(3, 2), TaskShape(7, 3)])
def test_generator_ranges_and_other_shapes(shape):
    x, y = sample_pointer_task(jax.random.key(0), 4000, shape)
    grid = np.asarray(x).reshape(-1, shape.y_dim, shape.x_dim)
    assert x.shape == (4000, shape.input_dim) and y.shape == (4000,)
    assert grid[:, :, :-1].min() == 0 and grid[:, :, :-1].max() == 9
    assert grid[:, :, -1].min() == 0 and grid[:, :, -1].max() == shape.max_pointer
    first, last = grid[:, 0], grid[:, -1]
    expected = np.abs(first[np.arange(4000), first[:, -1]] - last[np.arange(4000), last[:, -1]])
    np.testing.assert_array_equal(np.asarray(y), expected)


def test_generator_is_seeded():
    a = generate_splits(jax.random.key(1), {"train": 100, "val": 10})
    b = generate_splits(jax.random.key(1), {"train": 100, "val": 10})
    c = generate_splits(jax.random.key(2), {"train": 100, "val": 10})
    np.testing.assert_array_equal(a["train"].inputs, b["train"].inputs)
    assert not np.array_equal(a["train"].inputs, c["train"].inputs)
    assert not np.array_equal(a["train"].inputs[:10], a["val"].inputs)


def test_splits_equal_separate_draws_at_their_own_sizes():
    # generate_splits draws every split at the largest size and cuts it; that must be exactly the split
    # `sample_pointer_task` gives at the split's own size (a row's bits do not depend on the row count).
    key = jax.random.key(5)
    sizes = {"train": 700, "val": 90, "test": 1}
    splits = generate_splits(key, sizes, TaskShape(6, 3))
    for i, (name, n) in enumerate(sizes.items()):
        inputs, targets = sample_pointer_task(jax.random.fold_in(key, i), n, TaskShape(6, 3))
        np.testing.assert_array_equal(splits[name].inputs, np.asarray(inputs))
        np.testing.assert_array_equal(splits[name].targets, np.asarray(targets, np.float32))
        assert splits[name].inputs.dtype == np.int32 and splits[name].targets.dtype == np.float32


def test_xlsx_round_trip_and_upstream_loader(tmp_path):
    split = generate_splits(jax.random.key(0), {"train": 300})["train"]
    path = tmp_path / "mlp_train.xlsx"
    write_split(path, split)
    back = read_split(path)
    np.testing.assert_array_equal(back.inputs, split.inputs)
    np.testing.assert_array_equal(back.targets, split.targets)
    # The upstream loader: pandas.read_excel + ast.literal_eval into float32.
    df = pd.read_excel(path)
    assert list(df.columns) == ["input_list", "output_list"]
    X = np.array([ast.literal_eval(v) for v in df["input_list"]], np.float32)
    y = np.array([ast.literal_eval(v) for v in df["output_list"]], np.float32)
    assert X.shape == (300, 10) and y.shape == (300, 1)
    np.testing.assert_array_equal(X, split.inputs)
    # Cell text exactly as upstream writes it, on one sheet named as pandas names it, with nothing else in it.
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Sheet1"]
    ws = wb.active
    assert ws["A2"].value == str(split.inputs[0].tolist()) and ws["B2"].value == f"[{int(split.targets[0])}]"
    assert (ws.max_row, ws.max_column) == (301, 2)


@pytest.mark.parametrize("name,rows", [("train", 8000), ("val", 1000), ("test", 1000)])
def test_upstream_files_load(upstream, name, rows):
    split = read_split(upstream / "dataset" / f"mlp_{name}.xlsx")
    assert split.inputs.shape == (rows, 10) and split.targets.shape == (rows,)


def _write_cells(path, rows, header=("input_list", "output_list")):
    wb = openpyxl.Workbook()
    ws = wb.active
    if header:
        ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    wb.save(path)


GOOD = ("[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]", "[8]")


@pytest.mark.parametrize(
    "rows,header,message",
    [
        ([GOOD, ("8, 9, 5", "[8]")], None, "row 3, column input_list: expected a list of 10 integers"),
        ([GOOD, ("[8, 9, 5, 1, 3, 2, 9, 4, 7]", "[8]")], None,
         "row 3, column input_list: expected a list of 10 integers like '[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]', got 9 element(s)"),
        ([("[8, 9, 5, 1, 7, 2, 9, 4, 7, 1]", "[8]")], None, "row 2, column input_list: pointer at position 4 is 7, expected 0..3"),
        ([("[8, 9, 5, 1, 3, 2, 9, 4, 17, 1]", "[8]")], None, "row 2, column input_list: value at position 8 is 17, expected 0..9"),
        ([("[8, 9, 5, 1.5, 3, 2, 9, 4, 7, 1]", "[8]")], None, "non-integer 1.5"),
        ([("[8, 9, 5, NaN, 3, 2, 9, 4, 7, 1]", "[8]")], None, "non-finite nan"),
        ([GOOD, GOOD, ("[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]", "[3]")], None, "row 4: output_list [3] contradicts input_list: the task gives 8"),
        ([GOOD], ("input_list", "target"), "missing column 'output_list'"),
        ([], None, "no data rows"),
    ],
)
def test_bad_xlsx_cells_name_row_and_column(tmp_path, rows, header, message):
    path = tmp_path / "bad.xlsx"
    _write_cells(path, rows, header or ("input_list", "output_list"))
    with pytest.raises(UserError) as e:
        read_split(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_missing_and_non_xlsx_files(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_split(tmp_path / "nope.xlsx")
    (tmp_path / "fake.xlsx").write_text("input_list,output_list\n")
    with pytest.raises(UserError, match="not a readable .xlsx workbook"):
        read_split(tmp_path / "fake.xlsx")
    wb = openpyxl.Workbook()
    wb.save(tmp_path / "empty.xlsx")
    with pytest.raises(UserError, match="the sheet is empty"):
        read_split(tmp_path / "empty.xlsx")


def test_split_len():
    assert len(Split(np.zeros((3, 10), np.int32), np.zeros(3, np.float32))) == 3
