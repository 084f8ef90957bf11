"""Sweep SAE settings for `--recipe strong` on a finished run and score each against the issue-8 targets.

Usage (after `monosem run --recipe strong --run-dir runs/strong`):

    python scripts/sweep_strong.py --run-dir runs/strong [--grid quick|dense|full] [--epochs 100]
    python scripts/sweep_strong.py --mlp     # the MLP settings instead (no run directory needed)

`--mlp` trains the MLP with the seed recipe and with online data at a few batch sizes, on the splits and
keys `monosem run --seed 0` uses, and prints test MSE, exact match and seconds (CHANGELOG.md).

For every setting it trains an SAE on the run's harvested activations (mlp_activations.pt, the 8,000
training rows), then measures on all 10,000 rows of the run's dataset what CHANGELOG.md reports:
explained variance, dead fraction, L0, MLP MSE clean and with the reconstruction spliced in, the share of
live features whose best concept F1 >= 0.7 (the atlas's "monosemantic"), and the worst best-F1 over the
pointer concepts (p1=k, p2=k) and over the target values. Concept scores are the atlas's (jax_impl.evaluation.atlas);
the causal tests are left to `monosem atlas` on the chosen setting. Prints a markdown table and writes
RUN_DIR/sweep_strong_GRID.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jax_impl import saes
from jax_impl.data.activations import read_activations
from jax_impl.evaluation import inference
from jax_impl.evaluation.atlas.scores import score_features
from jax_impl.files.atomic import write_json_atomic
from jax_impl.interop import bridge
from jax_impl.jobs.run_config import RunConfig, SAEConfig
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, KEY_DATA, KEY_MLP_INIT, KEY_MLP_SHUFFLE, MLP_PATH, Run, dataset_path
from jax_impl.models.mlp import LAYER2_WIDTH, InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.task.concepts import task_concepts
from jax_impl.task.pointer import SPLITS, TaskShape, concat_splits, generate_splits
from jax_impl.task.splits import read_split
from jax_impl.training import sae_trainer
from jax_impl.training.mlp_trainer import MLPConfig, fit_mlp
from jax_impl.training.online import fit_mlp_online

MIN_F1 = 0.7  # the atlas's default threshold for a monosemantic feature

GRIDS: dict[str, list[dict]] = {
    "quick": [
        {"variant": "topk", "dict_size": 256, "k": 16},
        {"variant": "topk", "dict_size": 512, "k": 16},
        {"variant": "topk", "dict_size": 512, "k": 32},
        {"variant": "anthropic", "dict_size": 512, "l1_coeff": 1e-3},
    ],
    # small dictionaries with many active features: where the full grid found the monosemantic ones
    "dense": [{"variant": "topk", "dict_size": d, "k": k} for d, k in ((64, 16), (64, 32), (128, 48), (128, 64), (256, 64))],
    "full": [
        *({"variant": "topk", "dict_size": d, "k": k} for d in (128, 256, 512) for k in (8, 16, 32)),
        *({"variant": "anthropic", "dict_size": 512, "l1_coeff": c} for c in (3e-4, 1e-3, 3e-3)),
        {"variant": "relu-l1", "dict_size": 2048, "l1_coeff": 1e-4},  # the seed's SAE, for comparison
    ],
}


# (data, batch size, epochs); the seed recipe is 62,500 steps of 64 rows, i.e. 4.0M rows in all.
MLP_GRID = [("split", 64, 500), ("online", 256, 250), ("online", 256, 500), ("online", 512, 250), ("online", 512, 500)]


def sweep_mlp(seed: int) -> None:
    run = Run(Path("."), RunConfig(seed=seed), log=lambda _: None)  # only for its keys
    d = run.config.data
    splits = generate_splits(run.key(KEY_DATA), {"train": d.n_train, "val": d.n_val, "test": d.n_test})
    print("| data | batch | epochs | steps | rows seen | s | test MSE | test exact |\n|---|---|---|---|---|---|---|---|")
    for data, batch, epochs in MLP_GRID:
        cfg = dataclasses.replace(MLPConfig(), data=data, batch_size=batch, epochs=epochs)
        model = InterpretabilityMLP(10, rngs=nnx.Rngs(run.key(KEY_MLP_INIT)))
        t0 = time.perf_counter()
        if data == "online":
            result = fit_mlp_online(model, cfg, TaskShape(), n_train=d.n_train, key=run.key(KEY_MLP_SHUFFLE), log=print)
        else:
            train = splits["train"]
            result = fit_mlp(model, train.inputs, train.targets, cfg, key=run.key(KEY_MLP_SHUFFLE), log=print)
        seconds = time.perf_counter() - t0
        test = inference.evaluate(result.model, splits["test"])
        steps = result.step_losses.size
        print(f"| {data} | {batch} | {epochs} | {steps} | {steps * batch / 1e6:.1f}M | {seconds:.0f} "
              f"| {test['mse']:.4f} | {100 * test['exact_match']:.1f}% |", flush=True)


def targets_met(row: dict) -> list[str]:
    """The issue-8 targets this row meets (the spliced one is relative to the clean MLP)."""
    checks = {
        "pointer F1>=0.95": row["min_pointer_f1"] >= 0.95,
        "target F1>=0.8": row["min_target_f1"] >= 0.8,
        "mono>=50%": row["monosemantic_share"] >= 0.5,
        "dead<10%": row["dead_fraction"] < 0.1,
        "EV>=0.99": row["explained_variance"] >= 0.99,
        "spliced<=clean+0.02": row["spliced_mse"] <= row["mse"] + 0.02,
    }
    return [name for name, ok in checks.items() if ok]


def score(mlp, sae, split, shape: TaskShape) -> dict:
    """Reconstruction metrics and concept coverage of one SAE on the rows of `split`."""
    metrics = inference.evaluate(mlp, split, sae)
    _, layer2 = inference.mlp_forward(mlp, split.inputs)
    _, features = inference.sae_forward(sae, layer2)
    live = features[:, features.max(axis=0) > 0]
    concepts = task_concepts(split.inputs, shape.x_dim, shape.y_dim)
    f1 = score_features(live, concepts.mask).f1  # (live, C)
    best_per_concept = f1.max(axis=0)
    families = np.asarray(concepts.families)
    return {
        **{k: metrics[k] for k in ("mse", "exact_match", "explained_variance", "l0", "dead_fraction", "spliced_mse")},
        "monosemantic_share": float((f1.max(axis=1) >= MIN_F1).mean()),
        "min_pointer_f1": float(best_per_concept[families == "pointer"].min()),
        "min_target_f1": float(best_per_concept[families == "target"].min()),
    }


def train(setting: dict, activations: np.ndarray, epochs: int, seed: int):
    trainer = {f.name for f in dataclasses.fields(SAEConfig)}
    variant = setting["variant"]
    arch_config = saes.get(variant).config(**{k: v for k, v in setting.items() if k not in trainer})
    cfg = SAEConfig(epochs=epochs, log_every=epochs, architecture=arch_config,
                    **{k: v for k, v in setting.items() if k in trainer})
    sae = saes.create(cfg.variant, activations.shape[1], cfg.dict_size, cfg.architecture, key=jax.random.key(seed))
    return sae_trainer.fit(sae, activations, cfg.train_config(), key=jax.random.key(seed + 1), log=lambda _: None).model


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished run (required unless --mlp)")
    parser.add_argument("--mlp", action="store_true", help="sweep the MLP settings instead of the SAE")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.mlp:
        sweep_mlp(args.seed)
        return
    if args.run_dir is None:
        parser.error("--run-dir is required for the SAE sweep")

    shape = TaskShape()
    mlp = bridge.load_mlp(args.run_dir / MLP_PATH)
    activations = read_activations(args.run_dir / ACTIVATIONS_PATH, width=LAYER2_WIDTH)
    split = concat_splits([read_split(dataset_path(args.run_dir, s), shape) for s in SPLITS])
    rows = []
    header = ("| variant | dict | k | L1 | epochs | s | EV | dead | L0 | MSE clean / spliced | mono | min p F1 "
              "| min target F1 | targets met |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for setting in GRIDS[args.grid]:
        t0 = time.perf_counter()
        sae = train(setting, activations, args.epochs, args.seed)
        row = {**setting, "epochs": args.epochs, "seconds": round(time.perf_counter() - t0, 1), **score(mlp, sae, split, shape)}
        row["targets_met"] = targets_met(row)
        rows.append(row)
        print(
            f"| {row['variant']} | {row['dict_size']} | {row.get('k', '')} | {row.get('l1_coeff', '')} | {row['epochs']} "
            f"| {row['seconds']} | {row['explained_variance']:.4f} | {100 * row['dead_fraction']:.1f}% | {row['l0']:.1f} "
            f"| {row['mse']:.4f} / {row['spliced_mse']:.4f} | {100 * row['monosemantic_share']:.1f}% "
            f"| {row['min_pointer_f1']:.3f} | {row['min_target_f1']:.3f} | {len(row['targets_met'])}/6 |",
            flush=True,
        )
    out = args.run_dir / f"sweep_strong_{args.grid}.json"
    write_json_atomic(out, rows)
    print(json.dumps({"wrote": str(out)}))


if __name__ == "__main__":
    main()
