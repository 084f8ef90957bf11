"""`make bench` (second part): one training epoch of every SAE architecture at the seed shape, JAX against
the same loop written in plain torch (monosem_torch_ref.saes losses, the same hooks), in one process, interleaved;
and the peak RSS of `train-sae` streaming a `.npy` several times larger than its chunk.

    python benchmarks/bench_saes.py [--reps 3] [--rows 8000] [--out benchmarks]   # writes saes.json / saes.md
    python benchmarks/bench_saes.py --quick --out DIR                             # smoke check (tiny sizes)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jax_impl import saes
from jax_impl.interop import bridge
from jax_impl.precision import highest_precision
from jax_impl.training.sae_trainer import SAETrainConfig, make_chunk_fn, make_sae_step, sae_optimizer
from monosem_torch_ref import saes as ref

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "relu-l1": saes.relu_l1.Config(),
    "anthropic": saes.anthropic.Config(),
    "topk": saes.topk.Config(k=32),
    "batchtopk": saes.batchtopk.Config(k=32),
    "matryoshka": saes.matryoshka.Config(k=32),
    "jumprelu": saes.jumprelu.Config(),
}


def jax_epoch(name: str, x: np.ndarray, dict_size: int, batch: int):
    sae = saes.create(name, x.shape[1], dict_size, CONFIGS[name], key=jax.random.key(0))
    train = SAETrainConfig(batch_size=batch)
    tx = sae_optimizer(train)
    run = make_chunk_fn(make_sae_step(sae.arch, sae.cfg, tx, dead_after=x.shape[0] // batch), batch, sae.arch.keep_partial_batch)
    rows = jnp.asarray(x)
    p, b = sae.params(), sae.buffers()
    state = {"carry": (p, b, tx.init(p), jnp.zeros(dict_size, jnp.int32))}

    def epoch(e: int) -> None:
        state["carry"], losses = run(state["carry"], rows, jax.random.permutation(jax.random.key(e), x.shape[0]))
        losses.block_until_ready()

    return sae, epoch


def torch_epoch(name: str, sae: saes.SAE, x: np.ndarray, batch: int, device: str = "cpu"):
    model = ref.sae_from_state_dict(bridge.sae_to_state_dict(sae)).train().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = torch.from_numpy(x).to(device)
    cfg = CONFIGS[name]
    dead = torch.zeros(sae.dict_size, dtype=torch.bool, device=device)
    aux_k = min(4 * getattr(cfg, "k", 1), sae.dict_size)

    def loss_of(xb):
        return ref.training_loss(name, model, xb, dead, cfg, aux_k)

    def epoch(e: int) -> None:
        order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(e)).to(device)
        steps = rows.shape[0] // batch if not sae.arch.keep_partial_batch else -(-rows.shape[0] // batch)
        for s in range(steps):
            xb = rows[order[s * batch : (s + 1) * batch]]
            opt.zero_grad(set_to_none=True)
            loss_of(xb).backward()
            if sae.arch.unit_decoder:
                with torch.no_grad():
                    w, g = model.decoder.weight, model.decoder.weight.grad
                    g -= (g * w).sum(0, keepdim=True) * w
            opt.step()
            if sae.arch.unit_decoder:
                with torch.no_grad():
                    model.decoder.weight /= model.decoder.weight.norm(dim=0, keepdim=True)
        if device != "cpu":
            torch.cuda.synchronize()  # the epoch's kernels are queued asynchronously: time them, not their launch

    return epoch


def timed(fn, e: int) -> float:
    t0 = time.perf_counter()
    fn(e)
    return time.perf_counter() - t0


def streaming_rss(rows: int, width: int, chunk_rows: int) -> dict:
    """Peak RSS of a `train-sae` child process on a .npy of rows x width float32 streamed in chunk_rows chunks,
    beside the same child on a file that fits in one chunk (the baseline: interpreter, jax, torch)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
        rng = np.random.default_rng(0)
        for s in range(0, rows, 65536):
            array[s : s + 65536] = np.abs(rng.normal(size=(min(65536, rows - s), width))).astype(np.float32)
        array.flush()
        del array
        for label, chunk in (("streamed", chunk_rows), ("one_chunk_small_file", chunk_rows)):
            src = path if label == "streamed" else Path(tmp) / "small.npy"
            if label != "streamed":
                np.save(src, np.load(path, mmap_mode="r")[:chunk_rows])
            code = ("import resource, sys; from jax_impl.cli import main; "
                    f"rc = main(['train-sae', '--activations', '{src}', '--out', '{tmp}/o_{label}', '--variant', 'topk', "
                    f"'--dict-size', '256', '--k', '16', '--epochs', '1', '--chunk-rows', '{chunk}']); "
                    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out[f"{label}_peak_rss_mib"] = round(int(done.stdout.strip().splitlines()[-1]) / 1024, 1)
    out.update(file_mib=round(rows * width * 4 / 2**20, 1), chunk_mib=round(chunk_rows * width * 4 / 2**20, 1))
    return out


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--torch-device", default="cpu", help="where the torch loop runs: cpu (default) or cuda "
                        "(scripts/accelerator_check.sh; JAX uses its default device)")
    parser.add_argument("--no-streaming", action="store_true", help="skip the streaming peak-RSS measurement")
    args = parser.parse_args()
    rows, dict_size, batch, reps = (args.rows, 2048, 128, args.reps) if not args.quick else (512, 256, 128, 1)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = np.abs(np.random.default_rng(0).normal(size=(rows, 512))).astype(np.float32)
    results = {"rows": rows, "width": 512, "dict_size": dict_size, "batch_size": batch, "reps": reps, "archs": {},
               "jax_device": str(jax.devices()[0]), "torch_device": args.torch_device}
    for name in saes.NAMES:
        sae, jax_fn = jax_epoch(name, x, dict_size, batch)
        torch_fn = torch_epoch(name, sae, x, batch, args.torch_device)
        compile_s = timed(jax_fn, 0)
        jax_s, torch_s = [], []
        for r in range(reps):  # interleaved, so background load slows both alike
            jax_s.append(timed(jax_fn, r + 1))
            torch_s.append(timed(torch_fn, r + 1))
        j, t = statistics.median(jax_s), statistics.median(torch_s)
        results["archs"][name] = {"jax_epoch_s": j, "torch_epoch_s": t, "speedup": t / j, "jax_first_epoch_s": compile_s}
        print(f"{name:<11} jax {j:7.3f} s  torch {t:7.3f} s  speedup {t / j:5.2f}x  (first jax epoch {compile_s:.2f} s)", flush=True)
    if not (args.quick or args.no_streaming):
        results["streaming"] = streaming_rss(rows=2_000_000, width=128, chunk_rows=100_000)
        print("streaming:", results["streaming"], flush=True)
    results["self_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "saes.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| architecture | JAX epoch s | torch epoch s | speedup |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {a['jax_epoch_s']:.3f} | {a['torch_epoch_s']:.3f} | {a['speedup']:.2f}x |" for n, a in results["archs"].items()]
    (args.out / "saes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
