"""Data parallelism on one host: a 1-D device mesh over which each batch is split, parameters replicated.

The trainer marks each batch as sharded along its rows (`shard_batch`) and places the carry and the rows
replicated (`replicate`); XLA's partitioner (GSPMD) then runs each device's share of the rows and reduces
the gradients itself, so the step's code is the same on 1 or N devices. On a CPU, N devices for testing:
`XLA_FLAGS=--xla_force_host_platform_device_count=N`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_impl.errors import UserError

AXIS = "data"


def data_mesh(devices: int | str | None, *, batch_size: int) -> Mesh | None:
    """The mesh for `--devices N|all` (None or 1: no mesh, the plain one-device program).

    Refuses (UserError) more devices than there are, and a batch size that the devices do not divide.
    """
    if devices is None:
        return None
    available = jax.devices()
    if devices == "all":
        n = len(available)
    else:
        try:
            n = int(devices)
        except ValueError:
            raise UserError(f"--devices must be a number or 'all', got {devices!r}") from None
        if not 1 <= n <= len(available):
            raise UserError(f"--devices {n}: this process sees {len(available)} {jax.default_backend()} device(s)")
    if n == 1:
        return None
    if batch_size % n:
        raise UserError(f"--batch-size {batch_size} is not divisible by --devices {n}: every device takes an equal share")
    return Mesh(np.array(available[:n]), (AXIS,))


def shard_batch(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Inside jit: x (B, ...) split along B over the mesh (unchanged without a mesh or when B does not divide)."""
    if mesh is None or x.shape[0] % mesh.size:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(AXIS)))


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Every array of the tree on every device of the mesh (unchanged without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def place_rows(rows: Any, mesh: Mesh | None) -> jax.Array:
    """In-memory training rows (N, D) float32 on the mesh: replicated, or left as they are when they already are
    a global array spread over several processes (jax_impl.training.distributed: each process holds only its shard)."""
    if isinstance(rows, jax.Array) and not rows.is_fully_addressable:
        return rows
    return replicate(jnp.asarray(rows, jnp.float32), mesh)
