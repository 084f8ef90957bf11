"""`make bench`: the JAX pipeline against the PyTorch reference (torch_ref), stage by stage, in one process.

Both frameworks do the same work in the same invocation, interleaved repetition by repetition so that
whatever else runs on the machine slows both alike. Every timed quantity is repeated; the tables give the
median and the spread (min-max) over the repetitions.

Training stages are timed per epoch: each repetition trains a fresh model for `--mlp-epochs` /
`--sae-epochs` epochs on the seed data and batch order, and the full seed recipe (500 / 100 epochs) is
extrapolated as `compile + epochs x median epoch`. JAX's first epoch (tracing + XLA compilation) is timed
apart from the steady-state epochs (`TrainResult.epoch_seconds`). The whole pipeline is measured for real:
a cold `monosem run` with the default config in a fresh process.

FLOPs are the matmul FLOPs a training step has to do (forward, weight gradients, and input gradients of
every layer but the first, whose input needs none); element-wise work is not counted. The fp32 peak they
are compared with is measured in the same run (the best of a large torch / numpy / XLA sgemm).

    python benchmarks/bench.py                # full run (about 4 minutes on a quiet 2-core machine), writes benchmarks/results.*
    python benchmarks/bench.py --quick --out DIR   # smoke check in seconds (tiny sizes; numbers meaningless)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import torch
from flax import nnx

from jax_impl.data.harvest import harvest_activations
from jax_impl.evaluation import inference
from jax_impl.jobs.run_config import SAEConfig
from jax_impl.models.mlp import LAYER1_WIDTH, LAYER2_WIDTH, LAYER3_WIDTH, InterpretabilityMLP
from jax_impl.precision import highest_precision
from jax_impl.reports.circuit_trace import write_reports
from jax_impl.task.pointer import TaskShape, generate_splits
from jax_impl.task.splits import write_split
from jax_impl.training.mlp_trainer import MLPConfig, fit_mlp
from monosem_torch_ref import models as torch_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the seed's SAE (beside the parity tests), the demo
from benchmarks.report_demo import demo_arrays  # noqa: E402
from monosem_torch_ref import train as torch_train
from parity_tests.seed_sae import SparseAutoencoder, fit_sae  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED_MLP_EPOCHS = 500
SEED_SAE_EPOCHS = 100
SEED_SIZES = {"train": 8000, "val": 1000, "test": 1000}
# The upstream reports stage re-run on this machine (spec table); torch_ref has no reports code to time.
SPEC_REPORTS_SECONDS = 34.0
REFERENCE_STAGES = ("data", "mlp", "harvest", "sae", "probe", "reports")  # stage names in our manifest


def silent(_: str) -> None:
    pass


# --- FLOP counts -------------------------------------------------------------------------------------------


def training_flops_per_row(layers: list[tuple[int, int]]) -> int:
    """Matmul FLOPs of one training row through Linear layers [(in, out), ...]: forward and weight gradient
    for every layer, input gradient for every layer but the first."""
    per_layer = [2 * i * o for i, o in layers]
    return 2 * sum(per_layer) + sum(per_layer[1:])


def mlp_layers(input_dim: int) -> list[tuple[int, int]]:
    return [(input_dim, LAYER1_WIDTH), (LAYER1_WIDTH, LAYER2_WIDTH), (LAYER2_WIDTH, LAYER3_WIDTH), (LAYER3_WIDTH, 1)]


def sae_layers(dict_size: int) -> list[tuple[int, int]]:
    return [(LAYER2_WIDTH, dict_size), (dict_size, LAYER2_WIDTH)]


# --- timing helpers -----------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Repeated measurements of one quantity (seconds unless said otherwise)."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self) -> dict:
        return {"median": self.median, "min": min(self.values), "max": max(self.values), "n": len(self.values)}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_seconds(fn: Callable[[], object], repeats: int, inner: int) -> float:
    """Best mean over `repeats` runs of `inner` calls: the least disturbed estimate of a short kernel."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


# --- machine and peak ---------------------------------------------------------------------------------------


def machine_info() -> dict:
    model = platform.processor()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def measure_peak(n: int, repeats: int) -> dict:
    """fp32 GFLOP/s of an n x n x n matmul in torch, numpy and XLA; the best of them is the peak we compare with."""
    flops = 2 * n**3
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    ta, ja = torch.from_numpy(a), jnp.asarray(a)
    dot = jax.jit(jnp.matmul)
    gflops = {
        "torch": flops / best_seconds(lambda: torch.mm(ta, ta), repeats, 1) / 1e9,
        "numpy": flops / best_seconds(lambda: a @ a, repeats, 1) / 1e9,
        "xla": flops / best_seconds(lambda: dot(ja, ja).block_until_ready(), repeats, 1) / 1e9,
    }
    return {"size": n, "gflops": gflops, "peak_gflops": max(gflops.values())}


def matmul_shapes(batch_mlp: int, batch_sae: int, dict_size: int, input_dim: int) -> list[tuple[str, str, int, int, int]]:
    """(stage, role, m, k, n) of every matmul in one training step: forward, input gradient, weight gradient."""
    shapes = []
    for stage, batch, layers in (("mlp", batch_mlp, mlp_layers(input_dim)), ("sae", batch_sae, sae_layers(dict_size))):
        for i, (d_in, d_out) in enumerate(layers):
            if d_out == 1:
                continue  # the 1-wide readout is a matrix-vector product, not a GEMM
            shapes.append((stage, f"forward {d_in}->{d_out}", batch, d_in, d_out))
            if i:
                shapes.append((stage, f"input grad {d_in}->{d_out}", batch, d_out, d_in))
            shapes.append((stage, f"weight grad {d_in}->{d_out}", d_in, batch, d_out))
    return shapes


def bare_matmuls(shapes: list[tuple[str, str, int, int, int]], repeats: int, inner: int) -> list[dict]:
    """GFLOP/s of each training-step matmul alone, XLA vs torch: the ceiling each framework's kernels set."""
    rows = []
    dot = jax.jit(jnp.matmul)
    for stage, role, m, k, n in shapes:
        rng = np.random.default_rng(0)
        a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        flops = 2 * m * k * n
        xla = flops / best_seconds(lambda: dot(ja, jb).block_until_ready(), repeats, inner) / 1e9
        ref = flops / best_seconds(lambda: torch.mm(ta, tb), repeats, inner) / 1e9
        rows.append({"stage": stage, "role": role, "m": m, "k": k, "n": n, "xla_gflops": xla, "torch_gflops": ref})
    return rows


# --- the reference's non-training stages, written the way upstream does them -------------------------------


def torch_generate_split(path: Path, n: int, generator: torch.Generator, shape: TaskShape) -> None:
    """Upstream-style data generation: draw the rows with torch, write the xlsx with pandas."""
    values = torch.randint(0, 10, (n, shape.y_dim, shape.x_dim - 1), generator=generator)
    pointers = torch.randint(0, shape.max_pointer + 1, (n, shape.y_dim, 1), generator=generator)
    inputs = torch.cat([values, pointers], dim=-1).reshape(n, shape.input_dim)
    a = values[:, 0].gather(1, pointers[:, 0])[:, 0]
    b = values[:, -1].gather(1, pointers[:, -1])[:, 0]
    frame = pd.DataFrame({
        "input_list": [str(row) for row in inputs.tolist()],
        "output_list": [str([t]) for t in (a - b).abs().tolist()],
    })
    frame.to_excel(path, index=False)


@torch.no_grad()
def torch_probe(mlp: torch.nn.Module, sae: torch.nn.Module, rows: np.ndarray) -> list[str]:
    """The seed's probe: per input, the prediction, the count of features above 0.01 and the top 5."""
    mlp.eval()
    lines = []
    for row in rows:
        prediction, layer2 = mlp(torch.tensor(row, dtype=torch.float32)[None])
        _, features = sae(layer2)
        f = features[0]
        top = torch.topk(f, inference.PROBE_TOP)
        lines.append(
            f"{row.tolist()} -> {prediction.item():.4f}, {(f > inference.PROBE_THRESHOLD).sum().item()} active, "
            + ", ".join(f"#{i} {v:.4f}" for i, v in zip(top.indices.tolist(), top.values.tolist()))
        )
    return lines


# --- the benchmark ------------------------------------------------------------------------------------------


@dataclass
class Plan:
    quick: bool
    reps: int
    mlp_epochs: int  # timed steady-state epochs per repetition (JAX runs one more, its compile epoch)
    sae_epochs: int
    sizes: dict[str, int]
    dict_size: int
    peak_size: int
    scaling: bool
    scale_rows: int  # 10x the training rows
    scale_dict: int  # 4x the dictionary
    scale_sae_window: int  # rows of the scaled SAE timed per repetition (its epoch is extrapolated)
    pipeline: bool
    reports_rows: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(quick=True, reps=1, mlp_epochs=1, sae_epochs=1, sizes={"train": 256, "val": 64, "test": 64},
                    dict_size=256, peak_size=256, scaling=False, scale_rows=0, scale_dict=0, scale_sae_window=0,
                    pipeline=False, reports_rows=200)
    return Plan(quick=False, reps=args.reps, mlp_epochs=args.mlp_epochs, sae_epochs=args.sae_epochs,
                sizes=dict(SEED_SIZES), dict_size=SAEConfig().dict_size, peak_size=4096, scaling=not args.no_scaling,
                scale_rows=10 * SEED_SIZES["train"], scale_dict=4 * SAEConfig().dict_size,
                scale_sae_window=SEED_SIZES["train"], pipeline=not args.no_pipeline,
                reports_rows=sum(SEED_SIZES.values()))


@dataclass
class TrainTiming:
    """Per-repetition epoch seconds of one training stage in both frameworks."""

    jax_epoch: Samples = field(default_factory=Samples)
    jax_compile: Samples = field(default_factory=Samples)
    torch_epoch: Samples = field(default_factory=Samples)


def time_training(
    reps: int,
    epochs: int,
    jax_fit: Callable[[int, np.ndarray], np.ndarray],
    torch_fit: Callable[[np.ndarray], None],
    n_rows: int,
    seed: int,
) -> TrainTiming:
    """Interleave JAX and torch repetitions. `jax_fit(epochs, permutations)` returns the epoch seconds."""
    timing = TrainTiming()
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        permutations = np.stack([rng.permutation(n_rows) for _ in range(epochs + 1)])
        seconds = jax_fit(epochs + 1, permutations)
        steady = float(np.mean(seconds[1:]))
        timing.jax_epoch.values.append(steady)
        timing.jax_compile.values.append(max(0.0, float(seconds[0]) - steady))
        elapsed, _ = timed(lambda: torch_fit(permutations[:epochs]))
        timing.torch_epoch.values.append(elapsed / epochs)
    return timing


def run_benchmark(plan: Plan, log: Callable[[str], None]) -> dict:
    shape = TaskShape()
    started = datetime.now(timezone.utc)
    results: dict = {
        "meta": {
            "started_utc": started.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "quick": plan.quick,
            "reps": plan.reps,
            "mlp_epochs_timed": plan.mlp_epochs,
            "sae_epochs_timed": plan.sae_epochs,
            "load_average_start": list(os.getloadavg()),
            "machine": machine_info(),
        },
    }

    log("peak: large sgemm")
    peak = measure_peak(plan.peak_size, repeats=3 if plan.quick else 5)
    results["peak"] = peak
    peak_gflops = peak["peak_gflops"]

    stages: dict[str, dict] = {}

    def record(name: str, jax_s: Samples, torch_s: Samples | float, rows: int, *, unit: str, flops: float | None = None,
               torch_source: str = "torch_ref, measured", extra: dict | None = None) -> None:
        torch_median = torch_s.median if isinstance(torch_s, Samples) else torch_s
        entry = {
            "unit": unit,
            "jax_seconds": jax_s.summary(),
            "torch_seconds": torch_s.summary() if isinstance(torch_s, Samples) else {"median": torch_s},
            "torch_source": torch_source,
            "torch_over_jax": torch_median / jax_s.median,
            "rows": rows,
            "jax_samples_per_s": rows / jax_s.median,
            "torch_samples_per_s": rows / torch_median,
        }
        if flops is not None:
            entry["flops"] = flops
            entry["jax_gflops"] = flops / jax_s.median / 1e9
            entry["torch_gflops"] = flops / torch_median / 1e9
            entry["jax_pct_peak"] = 100 * entry["jax_gflops"] / peak_gflops
            entry["torch_pct_peak"] = 100 * entry["torch_gflops"] / peak_gflops
        entry.update(extra or {})
        stages[name] = entry

    # data generation: JAX draws on device and writes with openpyxl; the reference draws with torch, writes with pandas
    log("data generation")
    work = Path(tempfile.mkdtemp(prefix="monosem-bench-"))
    try:
        jax_data, torch_data = Samples(), Samples()
        for rep in range(plan.reps):
            def jax_generate() -> dict:
                splits = generate_splits(jax.random.key(rep), plan.sizes, shape)
                for name, split in splits.items():
                    write_split(work / f"jax_{name}.xlsx", split)
                return splits

            elapsed, splits = timed(jax_generate)
            jax_data.values.append(elapsed)
            generator = torch.Generator().manual_seed(rep)
            elapsed, _ = timed(lambda: [torch_generate_split(work / f"torch_{n}.xlsx", k, generator, shape)
                                        for n, k in plan.sizes.items()])
            torch_data.values.append(elapsed)
        record("data generation", jax_data, torch_data, sum(plan.sizes.values()), unit="3 xlsx splits")

        train = splits["train"]
        x_train, y_train = train.inputs.astype(np.float32), train.targets
        n_train = len(train)
        tx_train, ty_train = torch.from_numpy(x_train), torch.from_numpy(y_train)[:, None]
        mlp_cfg = MLPConfig()
        mlp_flops_epoch = training_flops_per_row(mlp_layers(shape.input_dim)) * n_train

        log("MLP training")
        trained: dict[str, InterpretabilityMLP] = {}

        def jax_mlp(inputs: np.ndarray, targets: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
            def fit(epochs: int, permutations: np.ndarray) -> np.ndarray:
                model = InterpretabilityMLP(shape.input_dim, rngs=nnx.Rngs(0))
                result = fit_mlp(model, inputs, targets, replace(mlp_cfg, epochs=epochs), permutations=permutations,
                                 log=silent)
                trained["mlp"] = result.model
                return result.epoch_seconds
            return fit

        def torch_mlp(inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[np.ndarray], None]:
            def fit(permutations: np.ndarray) -> None:
                model = torch_models.InterpretabilityMLP(shape.input_dim)
                torch_train.train_mlp(model, inputs, targets, permutations, batch_size=mlp_cfg.batch_size)
                trained["torch_mlp"] = model
            return fit

        mlp = time_training(plan.reps, plan.mlp_epochs, jax_mlp(x_train, y_train), torch_mlp(tx_train, ty_train),
                            n_train, seed=1)
        record("MLP training (per epoch)", mlp.jax_epoch, mlp.torch_epoch, n_train, unit="1 epoch",
               flops=mlp_flops_epoch, extra={"jax_compile_seconds": mlp.jax_compile.summary()})

        log("harvest")
        jax_harvest, torch_harvest = Samples(), Samples()
        for _ in range(plan.reps + 1):  # the first JAX call compiles; it is reported apart
            elapsed, activations = timed(lambda: harvest_activations(trained["mlp"], x_train))
            jax_harvest.values.append(elapsed)
            elapsed, _ = timed(lambda: torch_train.harvest_layer2(trained["torch_mlp"], tx_train))
            torch_harvest.values.append(elapsed)
        harvest_compile = jax_harvest.values.pop(0) - statistics.median(jax_harvest.values)
        torch_harvest.values.pop(0)
        record("harvest", jax_harvest, torch_harvest, n_train, unit=f"{n_train} rows",
               extra={"jax_compile_seconds": {"median": max(0.0, harvest_compile)}})

        log("SAE training")
        sae_cfg = replace(SAEConfig(), dict_size=plan.dict_size)

        def jax_sae(acts: np.ndarray, cfg: SAEConfig) -> Callable[[int, np.ndarray], np.ndarray]:
            def fit(epochs: int, permutations: np.ndarray) -> np.ndarray:
                sae = SparseAutoencoder(LAYER2_WIDTH, cfg.dict_size, rngs=nnx.Rngs(1))
                result = fit_sae(sae, acts, replace(cfg, epochs=epochs), permutations=permutations, log=silent)
                trained["sae"] = result.model
                return result.epoch_seconds
            return fit

        def torch_sae(acts: torch.Tensor, cfg: SAEConfig) -> Callable[[np.ndarray], None]:
            def fit(permutations: np.ndarray) -> None:
                sae = torch_models.SparseAutoencoder(LAYER2_WIDTH, cfg.dict_size)
                torch_train.train_sae(sae, acts, permutations, batch_size=cfg.batch_size, lr=cfg.lr,
                                      l1_coeff=cfg.architecture.l1_coeff)
                trained["torch_sae"] = sae
            return fit

        sae_flops_epoch = training_flops_per_row(sae_layers(plan.dict_size)) * n_train
        sae = time_training(plan.reps, plan.sae_epochs, jax_sae(activations, sae_cfg),
                            torch_sae(torch.tensor(activations), sae_cfg), n_train, seed=2)
        record("SAE training (per epoch)", sae.jax_epoch, sae.torch_epoch, n_train, unit="1 epoch",
               flops=sae_flops_epoch, extra={"jax_compile_seconds": sae.jax_compile.summary()})

        log("probe")
        probe_rows = np.asarray(inference.SEED_PROBE_INPUTS)
        jax_probe, torch_probe_s = Samples(), Samples()
        for _ in range(plan.reps + 1):
            elapsed, _ = timed(lambda: [inference.format_probe(report)
                                        for report in inference.probe(trained["mlp"], trained["sae"], probe_rows, shape)])
            jax_probe.values.append(elapsed)
            elapsed, _ = timed(lambda: torch_probe(trained["torch_mlp"], trained["torch_sae"], probe_rows))
            torch_probe_s.values.append(elapsed)
        jax_probe.values.pop(0)  # compile
        torch_probe_s.values.pop(0)
        record("probe", jax_probe, torch_probe_s, len(probe_rows), unit="5 inputs")

        log("reports")
        report_inputs = demo_arrays(plan.reports_rows, n_features=plan.dict_size)
        jax_reports = Samples()
        for rep in range(plan.reps):
            elapsed, _ = timed(lambda: write_reports(work / f"reports{rep}", **report_inputs, log=silent))
            jax_reports.values.append(elapsed)
        record("reports", jax_reports, SPEC_REPORTS_SECONDS * plan.reports_rows / sum(SEED_SIZES.values()),
               plan.reports_rows, unit=f"{plan.reports_rows} rows",
               torch_source="upstream re-run on this machine (spec table); torch_ref has no reports stage")

        # the full seed recipes, extrapolated from the per-epoch medians
        for name, timing, epochs, flops in (
            ("MLP training (seed recipe, extrapolated)", mlp, SEED_MLP_EPOCHS, mlp_flops_epoch),
            ("SAE training (seed recipe, extrapolated)", sae, SEED_SAE_EPOCHS, sae_flops_epoch),
        ):
            jax_full = Samples([timing.jax_compile.median + epochs * s for s in timing.jax_epoch.values])
            torch_full = Samples([epochs * s for s in timing.torch_epoch.values])
            record(name, jax_full, torch_full, n_train * epochs, unit=f"{epochs} epochs", flops=flops * epochs,
                   extra={"extrapolated": f"compile + {epochs} x epoch (JAX); {epochs} x epoch (torch)"})
        results["stages"] = stages

        # the whole pipeline: the reference is the sum of its stages; ours is a real cold `monosem run`
        reference_total = sum(
            stages[s]["torch_seconds"]["median"] for s in (
                "data generation", "MLP training (seed recipe, extrapolated)", "harvest",
                "SAE training (seed recipe, extrapolated)", "probe", "reports")
        )
        jax_sum = sum(
            stages[s]["jax_seconds"]["median"] + stages[s].get("jax_compile_seconds", {"median": 0})["median"]
            for s in ("data generation", "harvest", "probe", "reports")
        ) + sum(stages[s]["jax_seconds"]["median"] for s in (
            "MLP training (seed recipe, extrapolated)", "SAE training (seed recipe, extrapolated)"))
        pipeline: dict = {"reference_seconds": reference_total, "jax_sum_of_stages_seconds": jax_sum}
        if plan.pipeline:
            log("whole pipeline: cold `monosem run` (default config)")
            pipeline.update(run_monosem(work / "run"))
            pipeline["jax_over_reference"] = pipeline["seconds"] / reference_total
        results["pipeline"] = pipeline

        if plan.scaling:
            results["scaling"] = run_scaling(plan, shape, trained["mlp"], jax_mlp, torch_mlp, jax_sae, torch_sae,
                                             peak_gflops, log)

        if not plan.quick:
            log("kernel profile of one warm epoch (benchmarks/profile_epoch.py)")
            results["kernel_profile"] = run_kernel_profile()

        log("bare matmuls")
        results["matmuls"] = bare_matmuls(
            matmul_shapes(mlp_cfg.batch_size, sae_cfg.batch_size, plan.dict_size, shape.input_dim),
            repeats=3 if plan.quick else 7, inner=5 if plan.quick else 20,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mlp_pct = stages["MLP training (per epoch)"]["jax_pct_peak"]
    sae_pct = stages["SAE training (per epoch)"]["jax_pct_peak"]
    results["targets"] = {
        "mlp_pct_peak": {"target": 40.0, "value": mlp_pct, "met": mlp_pct >= 40.0},
        "sae_pct_peak": {"target": 60.0, "value": sae_pct, "met": sae_pct >= 60.0},
    }
    # The matmuls of the two seed recipes alone, at the measured peak: no implementation of the same math
    # on this machine can train faster than this.
    training_flops = sum(stages[s]["flops"] for s in (
        "MLP training (seed recipe, extrapolated)", "SAE training (seed recipe, extrapolated)"))
    results["pipeline"]["training_floor_seconds"] = training_flops / peak_gflops / 1e9
    if "jax_over_reference" in results["pipeline"]:
        share = 100 * results["pipeline"]["jax_over_reference"]
        results["targets"]["pipeline_pct_of_reference"] = {
            "target": 25.0, "value": share, "met": share <= 25.0,
            "floor_pct": 100 * results["pipeline"]["training_floor_seconds"] / results["pipeline"]["reference_seconds"],
        }
    results["meta"]["load_average_end"] = list(os.getloadavg())
    results["meta"]["seconds"] = (datetime.now(timezone.utc) - started).total_seconds()
    return results


def run_monosem(run_dir: Path) -> dict:
    """A cold default `monosem run` in a fresh process: interpreter start, imports, every compile, every stage."""
    monosem = Path(sys.executable).with_name("monosem")
    command = [str(monosem)] if monosem.exists() else [sys.executable, "-m", "jax_impl.cli"]
    env = dict(os.environ)
    elapsed, proc = timed(lambda: subprocess.run([*command, "run", "--run-dir", str(run_dir)], env=env,
                                                 capture_output=True, text=True))
    if proc.returncode != 0:
        raise RuntimeError(f"monosem run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stage_seconds = {k: v["seconds"] for k, v in manifest["stages"].items()}
    return {
        "seconds": elapsed,
        "stage_seconds": stage_seconds,
        # the stages the reference pipeline has too (ours adds e.g. the atlas and the TorchScript export)
        "reference_stages_seconds": sum(v for k, v in stage_seconds.items() if k in REFERENCE_STAGES),
    }


def run_kernel_profile() -> dict:
    """benchmarks/profile_epoch.py in its own process (it compiles XLA's per-kernel trace events in)."""
    proc = subprocess.run([sys.executable, str(HERE / "profile_epoch.py")], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_scaling(plan: Plan, shape: TaskShape, mlp: InterpretabilityMLP, jax_mlp, torch_mlp, jax_sae, torch_sae,
                peak_gflops: float, log: Callable[[str], None]) -> list[dict]:
    """Per-epoch cost at 10x the MLP data and at 4x the SAE dictionary on 10x the activations."""
    rows = []
    log(f"scaling: MLP on {plan.scale_rows} rows")
    splits = generate_splits(jax.random.key(99), {"train": plan.scale_rows}, shape)
    x, y = splits["train"].inputs.astype(np.float32), splits["train"].targets
    timing = time_training(plan.reps, 1, jax_mlp(x, y), torch_mlp(torch.from_numpy(x), torch.from_numpy(y)[:, None]),
                           plan.scale_rows, seed=3)
    rows.append(scaling_row(f"MLP, {plan.scale_rows} rows (10x)", timing, plan.scale_rows,
                            training_flops_per_row(mlp_layers(shape.input_dim)) * plan.scale_rows, 1.0, peak_gflops))

    # 10x activations at 4x the dictionary makes a 40x epoch (about a minute in torch): each repetition times
    # a window of the epoch's steps (batches drawn from all 10x activations) and scales it to the whole epoch.
    log(f"scaling: SAE with {plan.scale_dict} features on {plan.scale_rows} activations")
    activations = harvest_activations(mlp, x)
    window = plan.scale_sae_window
    cfg = replace(SAEConfig(), dict_size=plan.scale_dict)
    rng = np.random.default_rng(4)
    window_rows = rng.choice(plan.scale_rows, window, replace=False)
    timing = time_training(plan.reps, 1, jax_sae(activations[window_rows], cfg),
                           torch_sae(torch.tensor(activations[window_rows]), cfg), window, seed=5)
    rows.append(scaling_row(f"SAE, {plan.scale_dict} features, {plan.scale_rows} rows (4x, 10x)", timing,
                            plan.scale_rows, training_flops_per_row(sae_layers(plan.scale_dict)) * plan.scale_rows,
                            plan.scale_rows / window, peak_gflops))
    return rows


def scaling_row(name: str, timing: TrainTiming, rows: int, flops: float, scale: float, peak_gflops: float) -> dict:
    jax_s, torch_s = timing.jax_epoch.median * scale, timing.torch_epoch.median * scale
    return {
        "case": name,
        "jax_epoch_seconds": {k: v * scale if k != "n" else v for k, v in timing.jax_epoch.summary().items()},
        "torch_epoch_seconds": {k: v * scale if k != "n" else v for k, v in timing.torch_epoch.summary().items()},
        "jax_compile_seconds": timing.jax_compile.summary(),
        "extrapolated_from_fraction": 1 / scale,
        "torch_over_jax": torch_s / jax_s,
        "jax_gflops": flops / jax_s / 1e9,
        "torch_gflops": flops / torch_s / 1e9,
        "jax_pct_peak": 100 * flops / jax_s / 1e9 / peak_gflops,
        "torch_pct_peak": 100 * flops / torch_s / 1e9 / peak_gflops,
    }


# --- report -------------------------------------------------------------------------------------------------


def _spread(s: dict) -> str:
    if "min" not in s:
        return f"{s['median']:.3g}"
    return f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"


def render_markdown(results: dict) -> str:
    meta, peak = results["meta"], results["peak"]
    m = meta["machine"]
    lines = [
        "# Benchmark: JAX pipeline vs torch_ref",
        "",
        f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['platform']}; "
        f"jax {m['versions'].get('jax')}, torch {m['versions'].get('torch')} ({m['torch_threads']} threads).",
        f"- Run: {meta['started_utc']}, `{meta['command']}`, {meta['reps']} repetitions (median, min-max), "
        f"load average at start {meta['load_average_start'][0]:.2f}, at end {meta['load_average_end'][0]:.2f}"
        f"{' — QUICK MODE: tiny sizes, numbers meaningless' if meta['quick'] else ''}.",
        f"- Measured fp32 peak ({peak['size']}^3 sgemm): {peak['peak_gflops']:.0f} GFLOP/s "
        f"(torch {peak['gflops']['torch']:.0f}, numpy {peak['gflops']['numpy']:.0f}, XLA {peak['gflops']['xla']:.0f}).",
        "",
        "| stage | unit | JAX s | torch_ref s | torch/JAX | JAX rows/s | torch rows/s | JAX GFLOP/s (% peak) | "
        "torch GFLOP/s (% peak) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["stages"].items():
        flops = (f"{s['jax_gflops']:.0f} ({s['jax_pct_peak']:.0f}%) | {s['torch_gflops']:.0f} ({s['torch_pct_peak']:.0f}%)"
                 if "flops" in s else "- | -")
        torch_cell = _spread(s["torch_seconds"]) + ("" if s["torch_source"].startswith("monosem_torch_ref") else " *")
        lines.append(f"| {name} | {s['unit']} | {_spread(s['jax_seconds'])} | {torch_cell} | "
                     f"{s['torch_over_jax']:.2f}x | {s['jax_samples_per_s']:,.0f} | {s['torch_samples_per_s']:,.0f} | {flops} |")
    p = results["pipeline"]
    if "seconds" in p:
        lines.append(f"| **whole pipeline** | default `monosem run`, cold | **{p['seconds']:.1f}** | "
                     f"**{p['reference_seconds']:.1f}** (sum of stages) | {1 / p['jax_over_reference']:.2f}x | | | | |")
        lines.append(f"| same, only the stages the reference has | {', '.join(REFERENCE_STAGES)} | "
                     f"{p['reference_stages_seconds']:.1f} | {p['reference_seconds']:.1f} | "
                     f"{p['reference_seconds'] / p['reference_stages_seconds']:.2f}x | | | | |")
    lines += ["", "\\* reference reports: the upstream stage re-run on this machine (spec table); torch_ref has no "
              "reports code.", ""]
    for name, s in results["stages"].items():
        if "jax_compile_seconds" in s:
            lines.append(f"- {name}: JAX compile (first call minus a steady one) {_spread(s['jax_compile_seconds'])} s")
    lines.append(f"- JAX sum of stage medians (compile included): {p['jax_sum_of_stages_seconds']:.1f} s")
    if "stage_seconds" in p:
        lines.append("- cold `monosem run` stage seconds (its manifest): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in p["stage_seconds"].items()))
    if results.get("scaling"):
        lines += ["", "## Scaling (seconds per epoch)", "",
                  "| case | JAX s/epoch | torch s/epoch | torch/JAX | JAX GFLOP/s (% peak) | torch GFLOP/s (% peak) | timed |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["scaling"]:
            frac = r["extrapolated_from_fraction"]
            timed_what = "whole epochs" if frac == 1 else f"{frac:.0%} of an epoch, scaled up"
            lines.append(f"| {r['case']} | {_spread(r['jax_epoch_seconds'])} | {_spread(r['torch_epoch_seconds'])} | "
                         f"{r['torch_over_jax']:.2f}x | {r['jax_gflops']:.0f} ({r['jax_pct_peak']:.0f}%) | "
                         f"{r['torch_gflops']:.0f} ({r['torch_pct_peak']:.0f}%) | {timed_what} |")
    if results.get("kernel_profile"):
        lines += ["", "## Where a warm epoch goes (XLA kernel trace, benchmarks/profile_epoch.py)", "",
                  "| stage | epoch s (traced) | kernels per step: matmul / other | kernel time in matmuls | "
                  "GFLOP/s inside the matmul kernels | GFLOP/s over the epoch |", "|---|---|---|---|---|---|"]
        for stage, r in results["kernel_profile"].items():
            k = r["kernels_per_step"]
            lines.append(f"| {stage} | {r['epoch_seconds']:.3f} | {k.get('matmul', 0):.0f} / {k.get('other', 0):.0f} | "
                         f"{100 * r['matmul_share_of_kernel_time']:.0f}% | {r['matmul_kernel_gflops']:.0f} | "
                         f"{r['epoch_gflops']:.0f} |")
    lines += ["", "## Bare matmuls of one training step (best of repeated runs)", "",
              "| stage | matmul | m x k x n | XLA GFLOP/s | torch GFLOP/s |", "|---|---|---|---|---|"]
    for r in results["matmuls"]:
        lines.append(f"| {r['stage']} | {r['role']} | {r['m']}x{r['k']}x{r['n']} | {r['xla_gflops']:.0f} | "
                     f"{r['torch_gflops']:.0f} |")
    lines += ["", "## Targets", ""]
    for name, t in results["targets"].items():
        floor = (f"; the training matmuls alone at the measured peak take {t['floor_pct']:.0f}% "
                 f"({p['training_floor_seconds']:.0f} s)" if "floor_pct" in t else "")
        lines.append(f"- {name}: {t['value']:.1f} (target {t['target']:.0f}) — {'met' if t['met'] else 'NOT met'}{floor}")
    return "\n".join(lines) + "\n"


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: a smoke check")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json and results.md go (default benchmarks/)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every timing (default 3)")
    parser.add_argument("--mlp-epochs", type=int, default=3, help="steady-state MLP epochs per repetition (default 3)")
    parser.add_argument("--sae-epochs", type=int, default=2, help="steady-state SAE epochs per repetition (default 2)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 10x / 4x scaling rows")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the cold `monosem run`")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    results = run_benchmark(plan, log=lambda s: print(f"[bench {time.strftime('%H:%M:%S')}] {s}", flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_markdown(results)
    (args.out / "results.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
