"""A sweep's vmapped groups against the same configurations trained one after the other, in one process.

Three workloads of 8 configurations each, on one host, interleaved (sequential, sweep, sequential, ...):

  sae-small  8 TopK SAEs of the strong recipe's shape (128 latents, k 32, batch 128) on 8,000 x 512 rows:
             seeds 0..3 x lr 1e-3, 3e-3 (one group: one compiled program)
  sae-seed   8 seeds of the seed recipe's relu-l1 SAE (2048 latents, batch 128) on the same rows
  mlp        8 seeds of the seed recipe's MLP (batch 64, 8,000 task rows)

"sequential" is 8 calls of the standalone trainer (sae_trainer.fit, mlp_trainer.fit_mlp) in the same process, each
compiling its own program as 8 `train-sae` runs would (minus 8 process starts); "sweep" is one
vmapped.fit_sae_group / fit_mlp_group call. Reported: configurations x epochs per second for each, the ratio of
the totals (compilation included) and of the steady-state epochs (first epoch excluded).

    python benchmarks/bench_sweep.py [--epochs 5] [--reps 2] [--out benchmarks]   # writes sweep.json / sweep.md
    python benchmarks/bench_sweep.py --quick --out DIR                             # smoke check (tiny sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jax_impl import saes
from jax_impl.jobs.rundir import KEY_MLP_INIT, KEY_MLP_SHUFFLE, stream_key
from jax_impl.jobs.sweep_grid import mlp_configurations, sae_configurations
from jax_impl.jobs.train_sae import init_and_shuffle_keys
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.task.pointer import TaskShape, generate_splits
from jax_impl.training.mlp_trainer import MLPConfig, fit_mlp
from jax_impl.training.sae_trainer import SAETrainConfig, fit
from jax_impl.training.vmapped import Progress, fit_mlp_group, fit_sae_group

HERE = Path(__file__).resolve().parent


def quiet(_line: str) -> None:
    pass


def sae_workload(rows: np.ndarray, configurations, label: str):
    def sequential() -> tuple[float, float]:
        started, steady = time.perf_counter(), 0.0
        for c in configurations:
            init_key, shuffle_key = init_and_shuffle_keys(c.seed)
            sae = saes.create(c.variant, rows.shape[1], c.dict_size, c.cfg, key=init_key)
            result = fit(sae, rows, c.train, key=shuffle_key, log=quiet)
            steady += float(result.epoch_seconds[1:].sum())
        return time.perf_counter() - started, steady

    def sweep() -> tuple[float, float]:
        started = time.perf_counter()
        progress = Progress(0, quiet)
        trained = fit_sae_group(configurations, [init_and_shuffle_keys(c.seed) for c in configurations], rows, progress)
        progress.close()
        return time.perf_counter() - started, float(trained[0].epoch_seconds[1:].sum())

    return label, sequential, sweep


def mlp_workload(splits, configurations, shape: TaskShape):
    train, val = splits["train"], splits["val"]

    def sequential() -> tuple[float, float]:
        started, steady = time.perf_counter(), 0.0
        for c in configurations:
            model = InterpretabilityMLP(shape.input_dim, rngs=nnx.Rngs(stream_key(c.seed, KEY_MLP_INIT)))
            result = fit_mlp(model, train.inputs, train.targets, c.cfg, key=stream_key(c.seed, KEY_MLP_SHUFFLE),
                             val=(val.inputs, val.targets), log=quiet)
            steady += float(result.epoch_seconds[1:].sum())
        return time.perf_counter() - started, steady

    def sweep() -> tuple[float, float]:
        started = time.perf_counter()
        progress = Progress(0, quiet)
        keys = [(stream_key(c.seed, KEY_MLP_INIT), stream_key(c.seed, KEY_MLP_SHUFFLE)) for c in configurations]
        trained = fit_mlp_group(configurations, keys, train, val, shape, progress)
        progress.close()
        return time.perf_counter() - started, float(trained[0].epoch_seconds[1:].sum())

    return "mlp", sequential, sweep


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", choices=("sae-small", "sae-seed", "mlp"), action="append")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, not a measurement")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    n_rows, epochs, reps = (8000, args.epochs, args.reps) if not args.quick else (512, 2, 1)
    x = np.abs(np.random.default_rng(0).normal(size=(n_rows, 512))).astype(np.float32)  # as bench_saes.py
    train = SAETrainConfig(epochs=epochs, batch_size=128, log_every=epochs)
    small = sae_configurations({"seed": range(4), "lr": [1e-3, 3e-3]}, variants=["topk"], dict_size=128,
                               train=train, seed=0, arch_defaults={"topk": {"k": 32}})
    seed_sae = sae_configurations({"seed": range(8)}, variants=["relu-l1"], dict_size=2048 if not args.quick else 256,
                                  train=train, seed=0)
    shape = TaskShape()
    splits = generate_splits(jax.random.key(0), {"train": n_rows, "val": 1000, "test": 1000}, shape)
    from jax_impl.jobs.run_config import RunConfig

    run_config = RunConfig(mlp=MLPConfig(epochs=epochs, log_every=epochs))
    mlps = mlp_configurations({"seed": range(8)}, run_config)
    workloads = [sae_workload(x, small, "sae-small"), sae_workload(x, seed_sae, "sae-seed"), mlp_workload(splits, mlps, shape)]
    results = {}
    for label, sequential, sweep in workloads:
        if args.only and label not in args.only:
            continue
        totals = {"sequential": [], "sweep": []}
        steady = {"sequential": [], "sweep": []}
        for _ in range(reps):  # interleaved, so both see the same machine load
            for name, fn in (("sequential", sequential), ("sweep", sweep)):
                total, steady_seconds = fn()
                totals[name].append(total)
                steady[name].append(steady_seconds)
                print(f"{label:<10} {name:<10} total {total:7.2f} s  steady {steady_seconds:7.2f} s", flush=True)
        t = {k: statistics.median(v) for k, v in totals.items()}
        s = {k: statistics.median(v) for k, v in steady.items()}
        config_epochs = 8 * epochs
        results[label] = {
            "configurations": 8, "epochs": epochs,
            "sequential_seconds": round(t["sequential"], 3), "sweep_seconds": round(t["sweep"], 3),
            "sequential_config_epochs_per_s": round(config_epochs / t["sequential"], 3),
            "sweep_config_epochs_per_s": round(config_epochs / t["sweep"], 3),
            "ratio_total": round(t["sequential"] / t["sweep"], 2),
            "ratio_steady": round(s["sequential"] / s["sweep"], 2) if s["sweep"] > 0 else None,
            "runs": {"total": totals, "steady": steady},
        }
        print(f"{label}: sweep / sequential throughput {results[label]['ratio_total']}x (compilation included), "
              f"{results[label]['ratio_steady']}x (steady-state epochs)", flush=True)
    doc = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
                    "load_average_at_start": os.getloadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": n_rows, "reps": reps, "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# Sweep throughput: 8 configurations vmapped vs 8 sequential runs (one process, interleaved)", "",
             f"Machine: {doc['machine']['processor']}, {doc['machine']['cpus']} CPUs, jax {jax.__version__} "
             f"({jax.default_backend()}); load average at start {tuple(round(v, 2) for v in doc['machine']['load_average_at_start'])}. "
             f"Median of {reps} interleaved repetitions, {epochs} epochs each. Command: `{doc['command']}`", "",
             "| workload | sequential s | sweep s | config-epochs/s seq | config-epochs/s sweep | ratio (total) | ratio (steady) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['sequential_seconds']} | {r['sweep_seconds']} | {r['sequential_config_epochs_per_s']} | "
                     f"{r['sweep_config_epochs_per_s']} | {r['ratio_total']}x | {r['ratio_steady']}x |")
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
