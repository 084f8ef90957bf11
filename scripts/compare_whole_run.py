"""Train the seed recipes in JAX and in PyTorch from the same init and batch order, and compare.

Slow (the full recipes take minutes in torch), so not part of the test suite. Shorten it with
--mlp-epochs / --sae-epochs; the OneCycle schedule then spans the shortened run. With --float64 the
torch reference is trained a second time in float64, which measures how far float32 rounding alone
moves the same run: the floor against which the JAX-vs-torch drift should be read.

    python scripts/compare_whole_run.py --mlp-epochs 50 --sae-epochs 10 --float64

Prints a Markdown table (CHANGELOG.md records the runs).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from jax_impl.data.harvest import harvest_activations
from jax_impl.evaluation.inference import mlp_forward
from jax_impl.interop import bridge
from jax_impl.jobs.run_config import SAEConfig
from jax_impl.precision import highest_precision
from jax_impl.task.splits import read_split
from jax_impl.training.mlp_trainer import MLPConfig, fit_mlp
from monosem_torch_ref.models import InterpretabilityMLP, SparseAutoencoder
from monosem_torch_ref.train import harvest_layer2, sae_loss, train_mlp, train_sae

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the seed's SAE module lives beside the parity tests
from parity_tests.seed_sae import fit_sae, seed_sae_from_state_dict  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "dataset"
# Their exact gradient is 0 (a train-mode BatchNorm follows), so both frameworks random-walk them on
# rounding noise; reported apart from the parameters that carry the computation.
NOISE_DRIVEN = {"layers.input.bias", "layers.hidden1.bias", "layers.bn1.running_mean", "layers.bn2.running_mean"}


def permutations(seed: int, epochs: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(epochs)])


@torch.no_grad()
def torch_mse(model: InterpretabilityMLP, inputs: np.ndarray, targets: np.ndarray) -> float:
    prediction, _ = model.eval()(torch.as_tensor(inputs, dtype=next(model.parameters()).dtype))
    return float(((prediction[:, 0].double() - torch.as_tensor(targets, dtype=torch.float64)) ** 2).mean())


def drift(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


@torch.no_grad()
def sae_eval_loss(sae: SparseAutoencoder, activations: torch.Tensor, l1_coeff: float) -> float:
    return float(sae_loss(*sae(activations), activations, l1_coeff))


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder with mlp_{train,val,test}.xlsx")
    parser.add_argument("--mlp-epochs", type=int, default=MLPConfig().epochs)
    parser.add_argument("--sae-epochs", type=int, default=SAEConfig().epochs)
    parser.add_argument("--seed", type=int, default=0, help="torch init seed and batch-order seed")
    parser.add_argument("--float64", action="store_true", help="also train the torch reference in float64 (the float32 noise floor)")
    args = parser.parse_args()

    splits = {s: read_split(args.data_dir / f"mlp_{s}.xlsx") for s in ("train", "val", "test")}
    train = splits["train"]
    x = torch.as_tensor(train.inputs, dtype=torch.float32)
    y = torch.as_tensor(train.targets, dtype=torch.float32)[:, None]
    mlp_cfg, sae_cfg = MLPConfig(epochs=args.mlp_epochs), SAEConfig(epochs=args.sae_epochs)
    mlp_perms = permutations(args.seed, args.mlp_epochs, len(train))
    sae_perms = permutations(args.seed + 1, args.sae_epochs, len(train))

    torch.manual_seed(args.seed)
    init_mlp, init_sae = InterpretabilityMLP(), SparseAutoencoder(512, sae_cfg.dict_size)
    runs: dict[str, dict] = {}

    def run_torch(name: str, dtype: torch.dtype) -> None:
        t0 = time.perf_counter()
        mlp = copy.deepcopy(init_mlp).to(dtype)
        train_mlp(mlp, x.to(dtype), y.to(dtype), mlp_perms)
        acts = harvest_layer2(mlp, x.to(dtype))
        sae = copy.deepcopy(init_sae).to(dtype)
        sae_losses = train_sae(sae, acts, sae_perms, l1_coeff=sae_cfg.architecture.l1_coeff)
        runs[name] = {
            "mlp": {k: v for k, v in mlp.state_dict().items()}, "sae": sae.state_dict(), "seconds": time.perf_counter() - t0,
            "val": torch_mse(mlp, splits["val"].inputs, splits["val"].targets),
            "test": torch_mse(mlp, splits["test"].inputs, splits["test"].targets),
            "sae_train_loss": float(sae_losses[-1].mean()), "sae_eval": sae_eval_loss(sae, acts, sae_cfg.architecture.l1_coeff),
            "test_prediction": mlp(torch.as_tensor(splits["test"].inputs, dtype=dtype))[0][:, 0].detach().double().numpy(),
        }

    t0 = time.perf_counter()
    mlp = fit_mlp(bridge.mlp_from_state_dict(init_mlp.state_dict()), train.inputs, train.targets, mlp_cfg,
                  permutations=mlp_perms, log=lambda _: None).model
    acts = harvest_activations(mlp, train.inputs)
    sae_result = fit_sae(seed_sae_from_state_dict(init_sae.state_dict()), acts, sae_cfg, permutations=sae_perms, log=lambda _: None)
    jax_mlp, jax_sae = bridge.mlp_to_state_dict(mlp), bridge.sae_to_state_dict(sae_result.model)
    # Evaluated through torch modules holding the JAX weights, so both columns use one evaluation code path.
    as_torch = InterpretabilityMLP()
    as_torch.load_state_dict(jax_mlp, strict=True)
    sae_as_torch = SparseAutoencoder(512, sae_cfg.dict_size)
    sae_as_torch.load_state_dict(jax_sae, strict=True)
    runs["jax"] = {
        "mlp": jax_mlp, "sae": jax_sae, "seconds": time.perf_counter() - t0,
        "val": torch_mse(as_torch, splits["val"].inputs, splits["val"].targets),
        "test": torch_mse(as_torch, splits["test"].inputs, splits["test"].targets),
        "sae_train_loss": float(sae_result.step_losses[-1].mean()),
        "sae_eval": sae_eval_loss(sae_as_torch, torch.tensor(acts), sae_cfg.architecture.l1_coeff),
        "test_prediction": mlp_forward(mlp, splits["test"].inputs)[0].astype(np.float64),
    }
    run_torch("torch float32", torch.float32)
    if args.float64:
        run_torch("torch float64", torch.float64)

    reference = runs["torch float32"]
    carrying = [k for k in reference["mlp"] if k not in NOISE_DRIVEN and not k.endswith("num_batches_tracked")]
    print(f"MLP {args.mlp_epochs} epochs, SAE {args.sae_epochs} epochs, seed {args.seed}, data {args.data_dir}\n")
    print("| run | seconds | val MSE | test MSE | SAE loss (last epoch) | SAE loss (all rows) |"
          " max \\|Δ test prediction\\| | max \\|Δ MLP parameter or BN statistic\\|"
          " | max \\|Δ pre-BN bias or running mean\\| | max \\|Δ SAE parameter\\| |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        if name == "torch float32":
            deltas = "(reference) | | | "
        else:
            deltas = (
                f"{np.max(np.abs(r['test_prediction'] - reference['test_prediction'])):.2e} | "
                f"{drift(r['mlp'], reference['mlp'], carrying):.2e} | "
                f"{drift(r['mlp'], reference['mlp'], NOISE_DRIVEN):.2e} | "
            )
            deltas += f"{drift(r['sae'], reference['sae'], reference['sae'].keys()):.2e}"
        print(f"| {name} | {r['seconds']:.0f} | {r['val']:.6f} | {r['test']:.6f} | {r['sae_train_loss']:.6f} | "
              f"{r['sae_eval']:.6f} | {deltas} |")


if __name__ == "__main__":
    main()
