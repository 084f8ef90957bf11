"""Read a split the way the upstream loader does: pandas.read_excel + ast.literal_eval.

Kept deliberately close to upstream so a test can prove that xlsx files written by
`jax_impl` load unchanged in the upstream code path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import torch


def load_excel_split(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (X (N, D) float32, y (N, 1) float32) from an `input_list`/`output_list` sheet."""
    df = pd.read_excel(path)
    X = torch.tensor([ast.literal_eval(x) for x in df["input_list"]], dtype=torch.float32)
    y = torch.tensor([ast.literal_eval(y) for y in df["output_list"]], dtype=torch.float32)
    return X, y
