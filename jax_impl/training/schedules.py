"""torch.optim.lr_scheduler.OneCycleLR as precomputed tables.

optax.cosine_onecycle_schedule ends its phases one step later than torch and cycles no momentum, so we
evaluate torch's formulas in float64 for every step and feed the tables to optax through
`inject_hyperparams` (lr and Adam's beta1).
"""

from __future__ import annotations

import numpy as np


def _cosine_anneal(start: float, end: float, pct: np.ndarray) -> np.ndarray:
    return end + (start - end) / 2.0 * (np.cos(np.pi * pct) + 1.0)


def onecycle_tables(
    total_steps: int,
    max_lr: float,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """lr and beta1 used by optimizer step i = 0..total_steps-1, each (total_steps,) float64.

    Torch's two phases end at step `pct_start * T - 1` and `T - 1`; step i belongs to the first phase
    while i <= that first end. beta1 runs inversely to lr (cycle_momentum=True).
    """
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    warm_end = float(pct_start * total_steps) - 1
    steps = np.arange(total_steps, dtype=np.float64)
    in_warmup = steps <= warm_end
    warm_pct = steps / warm_end if warm_end > 0 else np.ones_like(steps)
    cool_pct = (steps - warm_end) / (total_steps - 1 - warm_end)
    lr = np.where(
        in_warmup, _cosine_anneal(initial_lr, max_lr, warm_pct), _cosine_anneal(max_lr, min_lr, cool_pct)
    )
    beta1 = np.where(
        in_warmup,
        _cosine_anneal(max_momentum, base_momentum, warm_pct),
        _cosine_anneal(base_momentum, max_momentum, cool_pct),
    )
    return lr, beta1
