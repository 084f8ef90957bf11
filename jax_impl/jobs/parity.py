"""`monosem parity`: load a finished run's artifacts in both frameworks and compare what they compute.

The JAX side is the project's own code path (bridge -> models, eval mode). The torch side never touches
JAX: `torch.load(weights_only=True)` and a strict `load_state_dict` into the reference modules of
`torch_ref`. Both get the same float32 rows of all three splits; each SAE decomposes its own
framework's activation at the run's hook (`layer2` unless the run chose another), so a difference anywhere
upstream shows up downstream too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jax_impl.errors import UserError
from jax_impl.evaluation import inference
from jax_impl.interop import bridge
from jax_impl.jobs.rundir import MLP_PATH, SAE_PATH, dataset_path, run_config
from jax_impl.models.mlp import DEFAULT_HOOK, HOOK_WIDTHS
from jax_impl.task.pointer import SPLITS, TaskShape
from jax_impl.task.splits import read_split
from monosem_torch_ref.models import mlp_from_state_dict
from monosem_torch_ref.saes import sae_from_state_dict  # any SAE architecture, told apart by its keys

QUANTITIES = ("prediction", "layer2", "features", "reconstruction")

# Max |JAX - torch| allowed, in absolute units of each quantity. Both sides are float32 but use different
# kernels (XLA/Eigen vs oneDNN/MKL) and so different summation orders; nothing else may differ.
# The error budget is set by the first layer: on the upstream perfect_mlp.pth its pre-BatchNorm values
# reach |z| ~ 300 (weights up to 31 on inputs up to 9), where one float32 ulp is 3e-5; BatchNorm divides
# by sqrt(running_var) ~ 35, so one ulp there is ~1e-6 in layer2, which the later layers carry on
# (K = 512 and 256 terms for the prediction, 512 and 2048 through the SAE). Measured: 2-4e-6, i.e. a few
# ulps (CHANGELOG.md). The bounds allow ~50 such ulps, and remain far below what a semantic slip does
# (a biased running_var, a missing transpose, train-mode BatchNorm: >= 1e-2).
# layer1 and layer3 (the other hook points) carry the same few-ulp error as layer2 (layer1 before it, layer3
# one 512-term layer after it, with weights < 1).
TOLERANCES = {"prediction": 1e-4, "layer1": 5e-5, "layer2": 5e-5, "layer3": 5e-5, "features": 5e-5, "reconstruction": 5e-5}


def quantities(hook: str) -> tuple[str, ...]:
    """What is compared for a run at `hook`: the hook's activation is added where it is not layer2."""
    return ("prediction", "layer2", *((hook,) if hook != "layer2" else ()), "features", "reconstruction")


@dataclass(frozen=True)
class ParityRow:
    """One quantity: max |JAX - torch| per split, and the tolerance it must stay within."""

    quantity: str
    max_abs_diff: dict[str, float]
    tolerance: float

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    @property
    def ok(self) -> bool:
        return self.worst <= self.tolerance


def jax_outputs(run_dir: Path, inputs: np.ndarray, hook: str = DEFAULT_HOOK) -> dict[str, np.ndarray]:
    """The quantities from the project's JAX code. inputs (N, D) -> prediction (N,), layer2 (N, 512), the
    hook's activation (N, W), features (N, dict_size), reconstruction (N, W), all float32."""
    mlp, sae = bridge.load_mlp(run_dir / MLP_PATH), bridge.load_sae(run_dir / SAE_PATH, input_dim=HOOK_WIDTHS[hook])
    prediction, layer2 = inference.mlp_forward(mlp, inputs)
    _, h = inference.mlp_forward(mlp, inputs, hook)
    reconstruction, features = inference.sae_forward(sae, h)
    return {"prediction": prediction, "layer2": layer2, hook: h, "features": features, "reconstruction": reconstruction}


@torch.no_grad()
def torch_outputs(run_dir: Path, inputs: np.ndarray, hook: str = DEFAULT_HOOK) -> dict[str, np.ndarray]:
    """The same quantities from the PyTorch reference modules, without any JAX code involved."""
    state_dicts = {}
    for name, rel in (("mlp", MLP_PATH), ("sae", SAE_PATH)):
        state_dicts[name] = bridge.torch_load(run_dir / rel)  # weights_only=True; a one-line error if unreadable
    try:
        mlp, sae = mlp_from_state_dict(state_dicts["mlp"]), sae_from_state_dict(state_dicts["sae"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{run_dir}: torch cannot load the run's models strictly: {str(e).splitlines()[0]}") from None
    x = torch.as_tensor(inputs, dtype=torch.float32)
    prediction, layer2 = mlp(x)
    h = mlp.hook_activations(x)[hook]
    reconstruction, features = sae(h)
    out = {"prediction": prediction[:, 0], "layer2": layer2, hook: h, "features": features, "reconstruction": reconstruction}
    return {k: v.numpy() for k, v in out.items()}


def compare_run(run_dir: Path | str, tolerances: dict[str, float] = TOLERANCES) -> list[ParityRow]:
    """Max |JAX - torch| of each quantity over each split of the run's data (all rows)."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    shape = TaskShape(config.data.x_dim, config.data.y_dim)
    names = quantities(config.hook)
    diffs: dict[str, dict[str, float]] = {q: {} for q in names}
    for split in SPLITS:
        inputs = read_split(dataset_path(run_dir, split), shape).inputs
        ours, reference = jax_outputs(run_dir, inputs, config.hook), torch_outputs(run_dir, inputs, config.hook)
        for q in names:
            diffs[q][split] = float(np.max(np.abs(ours[q].astype(np.float64) - reference[q])))
    return [ParityRow(q, diffs[q], tolerances[q]) for q in names]


def format_table(rows: list[ParityRow]) -> str:
    """Fixed-width table: one line per quantity, max |diff| per split, tolerance, ok/EXCEEDED."""
    header = f"{'quantity':<16}" + "".join(f"{s:>12}" for s in SPLITS) + f"{'tolerance':>12}  status"
    lines = ["max |JAX - torch| over every row of each split", header, "-" * len(header)]
    for row in rows:
        cells = "".join(f"{row.max_abs_diff[s]:>12.2e}" for s in SPLITS)
        lines.append(f"{row.quantity:<16}{cells}{row.tolerance:>12.1e}  {'ok' if row.ok else 'EXCEEDED'}")
    return "\n".join(lines)
