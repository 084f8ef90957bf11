"""Training rows/s streamed from files (one .npy, .safetensors shards, a SAELens cache) against the same rows in memory.

One TopK SAE (width 128, 1024 latents, k 32, batch 256) trains for a few epochs on N = chunks x chunk_rows rows
(default 8 x 8,192: the file is 8 times the chunk). Each case is one `sae_trainer.fit`; its rows/s is N over the
fastest of its epochs' wall seconds over every rep (the first epoch of each, which compiles, left out): on a shared
machine the fastest epoch is the one least disturbed by other work (the median is reported too). The cases,
interleaved over the reps:

  memory, one chunk       the rows as an in-memory array (what train-sae does when the file fits one chunk)
  memory, chunked         an in-memory source streamed in the same chunks as the files (no read cost): the reference
  npy                     one memory-mapped .npy, pages in the OS cache (warm), prefetch thread on / off
  shards                  8 .safetensors shards (a folder), warm, prefetch on / off
  shards, cold            the same, every shard's pages dropped from the OS cache before each epoch
                          (posix_fadvise DONTNEED: the reads go to the disk), prefetch on / off
  shards, buffer          the shards with --shuffle-buffer of 2 chunks, prefetch on
  saelens                 a SAELens-layout `datasets` folder (context 128), prefetch on

Beside them, each source's read rate alone (an epoch's chunks read with no training, no prefetch): how much faster
than training the reads are, i.e. how much of each chunk's compute the prefetch thread has to hide them in.

    python benchmarks/bench_streaming.py [--reps 4] [--epochs 3] [--out benchmarks]   # streaming.json / .md
    python benchmarks/bench_streaming.py --quick --out DIR                            # smoke check (tiny sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file

from jax_impl import saes
from jax_impl.data.activation_sets import open_activations
from jax_impl.data.activations import ActivationFile
from jax_impl.data.streaming import stream_chunks
from jax_impl.training.sae_trainer import SAETrainConfig, fit

HERE = Path(__file__).resolve().parent


class MemoryReader:
    """An in-memory array as an ActivationFile's reader: the chunked reference without any file read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop].copy()

    def read_sorted(self, indices: np.ndarray) -> np.ndarray:
        return self.array[indices]


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the OS cache, so that the next read goes to the disk."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_sources(rows: np.ndarray, folder: Path, n_shards: int, context: int) -> dict[str, Path]:
    np.save(folder / "acts.npy", rows)
    shards = folder / "shards"
    shards.mkdir()
    for i, part in enumerate(np.array_split(rows, n_shards)):
        save_file({"acts": np.ascontiguousarray(part)}, str(shards / f"part_{i:03d}.safetensors"))
    out = {"npy": folder / "acts.npy", "shards": shards}
    try:
        import datasets
    except ImportError:
        return out
    n_seq = len(rows) // context
    features = datasets.Features({"blocks.0.hook_resid_post": datasets.Array2D(shape=(context, rows.shape[1]),
                                                                                dtype="float32")})
    dataset = datasets.Dataset.from_dict({"blocks.0.hook_resid_post": rows[:n_seq * context].reshape(
        n_seq, context, rows.shape[1])}, features=features)
    dataset.save_to_disk(str(folder / "saelens"))
    out["saelens"] = folder / "saelens"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--chunks", type=int, default=8, help="the file's rows in chunks")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--dict-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--only", action="append", metavar="CASE", help="run only these cases (repeatable), e.g. "
                        "'memory, chunked'")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, not a measurement")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.quick:
        args.chunk_rows, args.chunks, args.width, args.dict_size, args.epochs, args.reps = 512, 4, 16, 64, 2, 1
    n = args.chunk_rows * args.chunks
    rng = np.random.default_rng(0)
    codes = rng.random((n, 64), dtype=np.float32) * (rng.random((n, 64), dtype=np.float32) < 0.1)
    rows = (codes @ rng.standard_normal((64, args.width), dtype=np.float32)).astype(np.float32)
    train = SAETrainConfig(epochs=args.epochs, batch_size=256 if not args.quick else 64, lr=1e-3, log_every=1)
    sae = saes.create("topk", args.width, args.dict_size, saes.topk.Config(k=32 if not args.quick else 4),
                      key=jax.random.key(0))

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_sources(rows, Path(tmp), args.chunks, 128 if not args.quick else 16)
        memory = ActivationFile(Path("memory"), n, args.width, MemoryReader(rows))
        shards = open_activations(paths["shards"])
        shard_files = [s.path for s in shards.shards]
        cases: dict[str, dict] = {
            "memory, one chunk": {"rows": rows, "chunk": None},
            "memory, chunked": {"rows": memory},
            "npy, prefetch": {"rows": open_activations(paths["npy"])},
            "npy, no prefetch": {"rows": open_activations(paths["npy"]), "prefetch": 0},
            "shards, prefetch": {"rows": shards},
            "shards, no prefetch": {"rows": shards, "prefetch": 0},
            "shards cold, prefetch": {"rows": shards, "cold": True},
            "shards cold, no prefetch": {"rows": shards, "prefetch": 0, "cold": True},
            "shards, buffer 2 chunks": {"rows": shards, "buffer": 2 * args.chunk_rows},
        }
        if "saelens" in paths:
            cases["saelens, prefetch"] = {"rows": open_activations(paths["saelens"])}
        if args.only:
            cases = {name: case for name, case in cases.items() if name in args.only or name.startswith("memory")}
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        read_seconds: dict[str, list[float]] = {}
        for rep in range(args.reps):
            for name in ("npy", "shards", "saelens"):
                if name in paths:
                    source = open_activations(paths[name])
                    started = time.perf_counter()
                    for _chunk in stream_chunks(source, args.chunk_rows, np.random.default_rng(rep), prefetch=0):
                        pass
                    read_seconds.setdefault(name, []).append(time.perf_counter() - started)
            for name, case in cases.items():
                source = case["rows"]
                log = (lambda _line: evict(shard_files)) if case.get("cold") else (lambda _line: None)
                if case.get("cold"):
                    evict(shard_files)
                result = fit(sae, source, train, key=jax.random.key(rep), log=log,
                             chunk_rows=case.get("chunk", args.chunk_rows), prefetch=case.get("prefetch", 1),
                             shuffle_buffer=case.get("buffer", 0))
                seconds[name] += [float(s) for s in result.epoch_seconds[1:]]
                print(f"rep {rep} {name}: {n / statistics.median(result.epoch_seconds[1:]):,.0f} rows/s", flush=True)
    rows_per_s = {name: n / min(s) for name, s in seconds.items()}
    median_rows_per_s = {name: n / statistics.median(s) for name, s in seconds.items()}
    reference = rows_per_s["memory, chunked"]
    results = {
        "meta": {"quick": args.quick, "rows": n, "chunk_rows": args.chunk_rows, "width": args.width,
                 "dict_size": args.dict_size, "epochs": args.epochs, "reps": args.reps,
                 "file_mb": round(rows.nbytes / 2**20, 1), "backend": jax.default_backend(),
                 "machine": {"platform": platform.platform(), "logical_cpus": os.cpu_count(),
                             "python": sys.version.split()[0], "jax": jax.__version__},
                 "date": time.strftime("%Y-%m-%d")},
        "cases": {name: {"rows_per_s": round(rows_per_s[name]), "of_memory_chunked": round(rows_per_s[name] / reference, 3),
                         "of_memory_one_chunk": round(rows_per_s[name] / rows_per_s["memory, one chunk"], 3),
                         "median_rows_per_s": round(median_rows_per_s[name]),
                         "epoch_seconds": [round(s, 4) for s in seconds[name]]} for name in cases},
        "read_only_rows_per_s": {name: round(n / min(s)) for name, s in read_seconds.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Streaming rows/s ({n:,} rows x {args.width} = {results['meta']['file_mb']} MB, chunks of "
             f"{args.chunk_rows:,}, TopK {args.dict_size} latents, {jax.default_backend()}, {results['meta']['date']})",
             "", "Training rows/s (fastest epoch; median in the last column):", "",
             "| case | rows/s | of memory, chunked | of memory, one chunk | median rows/s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {c['rows_per_s']:,} | {c['of_memory_chunked']:.1%} | {c['of_memory_one_chunk']:.1%} | "
              f"{c['median_rows_per_s']:,} |" for name, c in results["cases"].items()]
    lines += ["", "Reading alone (an epoch's chunks, no training, no prefetch), rows/s: " + ", ".join(
        f"{name} {v:,}" for name, v in results["read_only_rows_per_s"].items())]
    (args.out / "streaming.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
