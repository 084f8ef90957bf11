"""What the training curves cost (jax_impl.training.curves): one jitted SAE epoch with the curve scalars scanned out
beside the losses against the same epoch without them, every architecture, interleaved in one process; and the
host's share, Curves.epoch reducing and writing an epoch's points.

    python benchmarks/bench_curves.py [--reps 7] [--rows 8192] [--width 256] [--dict-size 2048] [--out benchmarks]
    python benchmarks/bench_curves.py --quick --out DIR    # smoke check (tiny sizes)

Writes curves.json / curves.md into --out: per architecture the median epoch seconds without and with curves
(compilation excluded: each program runs once before the timed reps) and their ratio, in wall time and in the
process's CPU time (which other processes on a shared machine move less).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl import saes
from jax_impl.precision import highest_precision
from jax_impl.training.curves import CurveConfig, Curves
from jax_impl.training.loop import epoch_permutation
from jax_impl.training.sae_trainer import SAETrainConfig, make_chunk_fn, make_sae_step, sae_optimizer

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "relu-l1": saes.relu_l1.Config(),
    "anthropic": saes.anthropic.Config(),
    "topk": saes.topk.Config(k=32),
    "batchtopk": saes.batchtopk.Config(k=32),
    "matryoshka": saes.matryoshka.Config(k=32),
    "jumprelu": saes.jumprelu.Config(),
}


@highest_precision
def bench(variant: str, rows: np.ndarray, dict_size: int, batch_size: int, reps: int) -> dict:
    arch, cfg = saes.get(variant), CONFIGS[variant]
    n, width = rows.shape
    x = jnp.asarray(rows)
    tx = sae_optimizer(SAETrainConfig(batch_size=batch_size))
    steps = n // batch_size
    runs, carries = {}, {}
    for curves in (False, True):
        step = make_sae_step(arch, cfg, tx, dead_after=steps, curves=curves)
        runs[curves] = make_chunk_fn(step, batch_size, arch.keep_partial_batch)
        sae = saes.create(variant, width, dict_size, cfg, key=jax.random.key(0))
        p, b = sae.params(), sae.buffers()
        carries[curves] = (p, b, tx.init(p), jnp.zeros((dict_size,), jnp.int32))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}  # the process's CPU time: less moved by other processes
    for e in range(reps + 1):  # rep 0 compiles; each rep times both programs, in alternating order
        order = epoch_permutation(jax.random.key(1), e, n)
        for curves in ((False, True) if e % 2 else (True, False)):
            started, cpu_started = time.perf_counter(), time.process_time()
            carries[curves], out = runs[curves](carries[curves], x, order)
            jax.block_until_ready(out)
            fetched = jax.device_get(out)  # the epoch's one host sync, as run_epochs does
            if curves:
                scalars = fetched
            if e:
                seconds[curves].append(time.perf_counter() - started)
                cpu[curves].append(time.process_time() - cpu_started)
    host = _host_seconds(scalars, reps)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    cpu_off, cpu_on = statistics.median(cpu[False]), statistics.median(cpu[True])
    return {"variant": variant, "steps": steps, "without_s": round(off, 5), "with_s": round(on, 5),
            "ratio": round(on / off, 4), "cpu_without_s": round(cpu_off, 5), "cpu_with_s": round(cpu_on, 5),
            "cpu_ratio": round(cpu_on / cpu_off, 4), "host_points_s": round(host, 6)}


def _host_seconds(scalars: dict, reps: int) -> float:
    """Median seconds of Curves.epoch (reduce to points every 100 steps, write metrics.jsonl) for one epoch."""
    with tempfile.TemporaryDirectory() as folder:
        curves = Curves(folder, CurveConfig())
        curves.lr = 1e-3
        curves.start(0)
        times = []
        for e in range(reps):
            started = time.perf_counter()
            curves.epoch(e, scalars, 1.0)
            times.append(time.perf_counter() - started)
        curves.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--dict-size", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--variants", default=",".join(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.rows, args.width, args.dict_size, args.batch_size = 2, 512, 16, 128, 64
    rng = np.random.default_rng(0)
    codes = rng.random((args.rows, 64)) * (rng.random((args.rows, 64)) < 0.1)
    rows = (codes @ rng.normal(size=(64, args.width))).astype(np.float32)
    results = []
    for variant in args.variants.split(","):
        result = bench(variant, rows, args.dict_size, args.batch_size, args.reps)
        print(json.dumps(result), flush=True)
        results.append(result)
    device = jax.devices()[0]
    doc = {"device": f"{device.platform} {device.device_kind}", "rows": args.rows, "width": args.width,
           "dict_size": args.dict_size, "batch_size": args.batch_size, "reps": args.reps, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# Training curves: epoch time without and with them ({doc['device']})", "",
             f"{args.rows} rows x {args.width}, {args.dict_size} latents, batch {args.batch_size}; median of "
             f"{args.reps} epochs each, interleaved; host: Curves.epoch for one epoch's points.", "",
             "| architecture | steps | without (s) | with (s) | ratio | CPU without (s) | CPU with (s) | CPU ratio | "
             "host (s) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['steps']} | {r['without_s']:.4f} | {r['with_s']:.4f} | {r['ratio']:.3f} | "
              f"{r['cpu_without_s']:.4f} | {r['cpu_with_s']:.4f} | {r['cpu_ratio']:.3f} | {r['host_points_s']:.5f} |"
              for r in results]
    (args.out / "curves.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
