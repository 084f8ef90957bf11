"""The OneCycle lr and beta1 of every one of the seed MLP's 62,500 steps, against torch's OneCycleLR."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from jax_impl.training.mlp_trainer import MLPConfig
from jax_impl.training.schedules import onecycle_tables
from parity_tests.helpers import EPS32, assert_close

SEED_STEPS = 500 * 125  # 500 epochs x ceil(8000 / 64) batches


def torch_onecycle(total_steps: int, cfg: MLPConfig) -> tuple[np.ndarray, np.ndarray]:
    """lr and beta1 that torch's AdamW uses at each step, read off the optimizer before each step."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.max_lr, total_steps=total_steps, pct_start=cfg.pct_start,
        div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
    )
    lr, beta1 = np.empty(total_steps), np.empty(total_steps)
    group = optimizer.param_groups[0]
    with warnings.catch_warnings():
        # Only the schedule is under test, so the optimizer is never stepped; torch warns about that order once.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning)
        for i in range(total_steps):
            lr[i], beta1[i] = group["lr"], group["betas"][0]
            scheduler.step()
    return lr, beta1


def test_seed_schedule_every_step_matches_torch():
    cfg = MLPConfig()
    lr, beta1 = onecycle_tables(
        SEED_STEPS, cfg.max_lr, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
    )
    torch_lr, torch_beta1 = torch_onecycle(SEED_STEPS, cfg)
    # Both sides evaluate the same float64 cosine formula; torch's OneCycleLR computes it in a different
    # association order, so a few float64 ulps of lr (<= 1e-2) and of beta1 (<= 1) may differ. 1e-15 is
    # ~10 float64 ulps at 1e-2 while an off-by-one step shifts lr by >= 1e-9 near the peak: still caught.
    assert_close("onecycle lr (62,500 steps)", lr, torch_lr, 1e-15)
    assert_close("onecycle beta1 (62,500 steps)", beta1, torch_beta1, 1e-15)
    # The optimizer consumes the tables as float32: rounding them is the only loss (half an ulp).
    assert_close("onecycle lr as float32", lr.astype(np.float32), torch_lr, cfg.max_lr * EPS32 / 2)


def test_short_schedule_phase_ends_match_torch():
    """Odd totals put pct_start * T between integers; that is where an off-by-one would show."""
    cfg = MLPConfig()
    for total in (7, 10, 33, 250):
        lr, beta1 = onecycle_tables(total, cfg.max_lr)
        torch_lr, torch_beta1 = torch_onecycle(total, cfg)
        assert_close(f"onecycle lr (T={total})", lr, torch_lr, 1e-15)
        assert_close(f"onecycle beta1 (T={total})", beta1, torch_beta1, 1e-15)
