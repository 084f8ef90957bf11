"""`monosem train-sae`: train any SAE architecture of the family on any (N, d) float32 activations.

Reads a `.pt` (one tensor, weights_only), a `.npy` (memory-mapped and streamed in shuffled chunks, so peak
memory is set by `chunk_rows`, not the file) or a `.safetensors` file (one tensor), and writes into `out_dir`:

  sae.pth           the SAE's torch state_dict (torch_ref.saes loads it strictly)
  sae.safetensors   the same tensors, loadable without an unpickler
  saelens/          the SAE in SAELens's format (cfg.json + sae_weights.safetensors; sae_lens.SAE.load_from_disk)
  sae_config.json   architecture, its config, the training config, widths, seed, the activation file
  metrics.json      explained variance, L0, dead fraction and MSE over every row, training seconds
  checkpoints/      the training state while it runs (jax_impl.checkpoints); removed once the files above exist

each written atomically (temporary file, then rename), the JSONs after the weights. `resume=True`
(`--resume`) continues from the newest valid checkpoint in checkpoints/.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jax_impl import bridge, sae_training, saelens, saes
from jax_impl.activations import ActivationFile, open_activations
from jax_impl.atomic import write_json_atomic
from jax_impl.checkpoints import TrainingCheckpoints
from jax_impl.config import CheckpointPolicy
from jax_impl.devices import data_mesh
from jax_impl.errors import TrainingDiverged, UserError
from jax_impl.locks import folder_lock, remove_stale_temporaries
from jax_impl.sae_training import SAETrainConfig
from jax_impl.train import Log

SAE_FILE = "sae.pth"
SAELENS_DIR = "saelens"
CONFIG_FILE = "sae_config.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS_DIR = "checkpoints"
DEFAULT_CHUNK_ROWS = 1 << 18  # 262,144 rows: 512 MiB of float32 at d = 512

_KEY_INIT, _KEY_SHUFFLE = range(2)


@jax.jit
def _chunk_sums(sae: saes.SAE, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    reconstruction, features = sae(x)
    active = features > 0
    return (
        jnp.sum(jnp.square(reconstruction - x), dtype=jnp.float32),
        jnp.sum(active, dtype=jnp.float32),
        jnp.any(active, axis=0),
        jnp.sum(x, axis=0),
        jnp.sum(jnp.square(x), axis=0),
    )


def reconstruction_metrics(sae: saes.SAE, source: ActivationFile, chunk_rows: int) -> dict[str, float]:
    """Over every row, chunk by chunk: mse (per element), explained_variance (1 - SSE / centred SS), l0 (mean
    active features per row), dead_fraction (features active on no row). explained_variance is None where
    every row is the same (nothing to explain)."""
    sse = active = 0.0
    fired = np.zeros(sae.dict_size, bool)
    col_sum = np.zeros(source.width, np.float64)
    col_sq = np.zeros(source.width, np.float64)
    for start in range(0, source.n_rows, chunk_rows):
        x = jnp.asarray(source.rows(start, min(start + chunk_rows, source.n_rows)))
        s, a, f, cs, cq = _chunk_sums(sae, x)
        sse, active = sse + float(s), active + float(a)
        fired |= np.asarray(f)
        col_sum += np.asarray(cs, np.float64)
        col_sq += np.asarray(cq, np.float64)
    n = source.n_rows
    centred = float(np.sum(col_sq - col_sum**2 / n))
    return {
        "rows": n,
        "mse": sse / (n * source.width),
        "explained_variance": 1.0 - sse / centred if centred > 0 else None,
        "l0": active / n,
        "dead_fraction": float(1.0 - fired.mean()),
    }


def train_sae(
    activations: Path | str,
    out_dir: Path | str,
    *,
    variant: str = "topk",
    dict_size: int = 2048,
    arch_config: Any = None,
    train: SAETrainConfig = SAETrainConfig(),
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    devices: int | str | None = None,
    resume: bool = False,
    checkpoint_every: CheckpointPolicy = CheckpointPolicy(),
    log: Log = print,
) -> dict[str, Any]:
    """Train a `variant` SAE of `dict_size` features on the (N, d) float32 rows of `activations`; write
    SAE_FILE, CONFIG_FILE and METRICS_FILE into out_dir. Returns the metrics.

    devices: data parallel over this many local devices, or "all" (jax_impl.devices; None: one device).
    arch_config: the architecture's config (None: its defaults). Bad input raises UserError naming the file
    or the setting; nothing but out_dir's lock file (jax_impl.locks: a second process writing into the same
    out_dir is refused) and the training's checkpoints (out_dir/checkpoints, every `checkpoint_every`) is
    written before the activations are validated and the training has finished. resume: continue from the
    newest valid checkpoint there (one written by a training with the same settings and data shape);
    without it, old checkpoints in out_dir are removed and training starts at the first epoch.
    """
    try:
        arch = saes.get(variant)
    except ValueError as e:
        raise UserError(f"--variant: {e}") from None
    cfg = arch.config() if arch_config is None else arch_config
    try:
        cfg.validate(dict_size)
        train.validate()
    except ValueError as e:
        raise UserError(f"--variant {variant}: {e}") from None
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    source = open_activations(activations)
    if train.batch_size > min(source.n_rows, chunk_rows):
        raise UserError(
            f"--batch-size {train.batch_size} is larger than {'the file' if source.n_rows <= chunk_rows else 'a chunk'} "
            f"({min(source.n_rows, chunk_rows)} rows of {source.path})"
        )
    mesh = data_mesh(devices, batch_size=train.batch_size)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; --out must be a folder")
    with folder_lock(out_dir, flag="--out", what="output folder"):
        remove_stale_temporaries(out_dir)
        checkpoints = TrainingCheckpoints(out_dir / CHECKPOINTS_DIR, {
            "architecture": variant, "config": dataclasses.asdict(cfg), "training": dataclasses.asdict(train),
            "dict_size": dict_size, "seed": seed, "chunk_rows": chunk_rows, "devices": 1 if mesh is None else mesh.size,
            "activations": {"file": source.path.name, "rows": source.n_rows, "width": source.width},
        }, checkpoint_every, resume=resume, log=log)
        metrics = _train_and_write(source, out_dir, variant, cfg, dict_size, train, seed, chunk_rows, mesh, log, checkpoints)
        checkpoints.clear()  # every file is written: nothing left to resume
        return metrics


def _train_and_write(source: ActivationFile, out_dir: Path, variant: str, cfg: Any, dict_size: int,
                     train: SAETrainConfig, seed: int, chunk_rows: int, mesh: Mesh | None, log: Log,
                     checkpoints: TrainingCheckpoints) -> dict[str, Any]:
    """train_sae's work once the inputs are checked and out_dir's lock is held."""
    root = jax.random.key(seed)
    sae = saes.create(variant, source.width, dict_size, cfg, key=jax.random.fold_in(root, _KEY_INIT))
    log(f"Training a {variant} SAE ({dict_size} features) on {source.n_rows} x {source.width} activations from {source.path}")
    in_memory = source.n_rows <= chunk_rows
    rows = source.rows(0, source.n_rows) if in_memory else source
    started = time.perf_counter()
    try:
        result = sae_training.fit(
            sae, rows, train, key=jax.random.fold_in(root, _KEY_SHUFFLE), chunk_rows=None if in_memory else chunk_rows,
            log=log, mesh=mesh, checkpoints=checkpoints,
        )
    except TrainingDiverged as e:  # here the data is the user's: name the file (huge values diverge too)
        raise TrainingDiverged(f"{source.path}: {e}") from None
    seconds = time.perf_counter() - started
    metrics = reconstruction_metrics(result.model, source, chunk_rows) | {
        "final_loss": float(result.epoch_losses[-1]), "train_seconds": round(seconds, 3),
    }
    bridge.save_sae(result.model, out_dir / SAE_FILE)
    saelens.save_saelens(result.model, out_dir / SAELENS_DIR, hook_name=None)
    write_json_atomic(out_dir / CONFIG_FILE, {
        "architecture": variant,
        "config": dataclasses.asdict(result.model.cfg),
        "training": dataclasses.asdict(train),
        "input_dim": source.width,
        "dict_size": dict_size,
        "seed": seed,
        "chunk_rows": chunk_rows,
        "devices": 1 if mesh is None else mesh.size,
        "activations": {"file": source.path.name, "rows": source.n_rows, "width": source.width},
    })
    write_json_atomic(out_dir / METRICS_FILE, metrics)
    ev = metrics["explained_variance"]
    log(
        f"explained variance {'n/a' if ev is None else f'{ev:.4f}'} | L0 {metrics['l0']:.1f} | "
        f"dead {metrics['dead_fraction']:.1%} | MSE {metrics['mse']:.6g} | {seconds:.1f} s -> {out_dir / SAE_FILE}"
    )
    return metrics
