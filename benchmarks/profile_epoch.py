"""Where one training epoch's time goes, per XLA kernel: matmuls against everything else.

Runs one warm MLP epoch and one warm SAE epoch of the seed recipes under `jax.profiler`, with XLA:CPU's
per-kernel trace events switched on, and sums the kernels' durations by kind. The kinds come from the
compiled HLO: a kernel is a matmul when it is a `dot` or a library fusion built around one.

    python benchmarks/profile_epoch.py            # prints JSON; benchmarks/bench.py runs it in a subprocess

It sets XLA_FLAGS itself (the trace events must be compiled in), so it runs in a process of its own.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import collections  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jax_impl.jobs.run_config import SAEConfig
from jax_impl.models.mlp import InterpretabilityMLP  # noqa: E402
from jax_impl.precision import highest_precision  # noqa: E402
from jax_impl.training import loop, mlp_trainer  # noqa: E402
from jax_impl.training.mlp_trainer import MLPConfig  # noqa: E402
from jax_impl.training.sae_trainer import sae_optimizer  # noqa: E402

N_ROWS = 8000
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")


def kernel_kinds(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> "matmul" or "other", for the instructions of the optimized module."""
    kinds = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            is_matmul = " dot(" in line or ("ynn_fusion" in match.group(1) and "dot_general" in line)
            kinds[match.group(1)] = "matmul" if is_matmul else "other"
    return kinds


def profile_epoch(model: nnx.Module, loss_fn, tx, arrays: tuple[jax.Array, ...], batch_size: int,
                  flops_per_epoch: float) -> dict:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    carry = (params, rest, tx.init(params))
    epoch = mlp_trainer.make_batched_epoch(mlp_trainer.make_train_step(graphdef, tx, loss_fn), batch_size)
    permutation = jnp.asarray(np.random.default_rng(0).permutation(N_ROWS))
    kinds = kernel_kinds(epoch.lower(carry, arrays, permutation).compile().as_text())
    carry, losses = epoch(carry, arrays, permutation)  # compile and warm up
    losses.block_until_ready()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            carry, losses = epoch(carry, arrays, permutation)
            losses.block_until_ready()
        (trace_file,) = Path(trace_dir).rglob("*.trace.json.gz")
        events = json.loads(gzip.open(trace_file).read())["traceEvents"]
    seconds: dict[str, float] = collections.defaultdict(float)
    launches: dict[str, int] = collections.defaultdict(int)
    wall = 0.0
    for event in events:
        if event.get("ph") != "X":
            continue
        if event["name"] == "ThunkExecutor::Execute (wait for completion)":
            wall += event["dur"] / 1e6
        elif event["name"] in kinds:
            seconds[kinds[event["name"]]] += event["dur"] / 1e6
            launches[kinds[event["name"]]] += 1
    steps = int(losses.shape[0])
    kernel_total = sum(seconds.values())
    return {
        "epoch_seconds": wall,
        "steps": steps,
        "kernels_per_step": {k: v / steps for k, v in launches.items()},
        "kernel_seconds": dict(seconds),
        "matmul_share_of_kernel_time": seconds["matmul"] / kernel_total,
        "matmul_kernel_gflops": flops_per_epoch / seconds["matmul"] / 1e9,
        "epoch_gflops": flops_per_epoch / wall / 1e9,
    }


@highest_precision  # float32 matmuls at full precision, as `monosem` computes them
def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import mlp_layers, sae_layers, training_flops_per_row

    from parity_tests.seed_sae import SparseAutoencoder, sae_loss

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 10, (N_ROWS, 10)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, (N_ROWS, 1)), jnp.float32)
    activations = jnp.asarray(np.maximum(rng.normal(size=(N_ROWS, 512)), 0), jnp.float32)
    mlp_cfg, sae_cfg = MLPConfig(), SAEConfig()
    total_steps = mlp_cfg.epochs * loop.steps_per_epoch(N_ROWS, mlp_cfg.batch_size)
    result = {
        "mlp": profile_epoch(InterpretabilityMLP(10, rngs=nnx.Rngs(0)), mlp_trainer.mlp_loss,
                             mlp_trainer.mlp_optimizer(mlp_cfg, total_steps), (x, y), mlp_cfg.batch_size,
                             training_flops_per_row(mlp_layers(10)) * N_ROWS),
        "sae": profile_epoch(SparseAutoencoder(512, sae_cfg.dict_size, rngs=nnx.Rngs(0)),
                             partial(sae_loss, l1_coeff=sae_cfg.architecture.l1_coeff), sae_optimizer(sae_cfg),
                             (activations,), sae_cfg.batch_size,
                             training_flops_per_row(sae_layers(sae_cfg.dict_size)) * N_ROWS),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
