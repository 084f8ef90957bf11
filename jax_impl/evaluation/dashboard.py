"""What `monosem dashboard` shows of each feature of any SAE, measured over an activation matrix in JAX.

Two streamed passes over the rows, one chunk of `chunk_rows` rows on the device at a time (memory: one chunk's
(chunk_rows, F) features, whatever N), then one pass over the decoder:

1. per feature: how many rows it fires on (activation != 0: its density, as SAELens counts it,
   interop.saelens.feature_density), the sum and the largest of its activations, and its `top_k` top-activating
   rows (a running top-k, merged chunk by chunk);
2. per feature: a histogram of its non-zero activations in `bins` equal bins over (0, its largest];
3. per feature: its `neighbours` nearest features by the cosine of their decoder rows (blocks of rows against
   the whole unit-normed decoder, never the (F, F) matrix at once).

Every number depends only on the SAE and the rows (not on chunk_rows, up to float32 summation order in `sums`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.saes import SAE

# The device memory one chunk's (chunk_rows, F) float32 features may take when chunk_rows is automatic (0).
CHUNK_BYTES = 256 << 20
# Features whose decoder rows are compared with all others at once (a (block, F) float32 matrix).
NEIGHBOUR_BLOCK = 1024


@dataclass(frozen=True)
class DashboardConfig:
    """The dashboard's settings (`monosem dashboard`'s flags)."""

    top_k: int = field(default=20, metadata={"help": "top-activating rows shown per feature"})
    neighbours: int = field(default=10, metadata={"help": "nearest features by decoder cosine shown per feature"})
    bins: int = field(default=24, metadata={"help": "activation histogram bins per feature"})
    features_per_page: int = field(default=256, metadata={"help": "features per data file the page loads on demand"})
    chunk_rows: int = field(default=0, metadata={"help": "activation rows encoded at a time (0: as many as keep "
                                                         "one chunk's features within 256 MiB)"})

    def validate(self) -> None:
        """ValueError naming the field for a value out of range."""
        for name, low, high in (("top_k", 1, 1000), ("neighbours", 0, 1000), ("bins", 1, 1000),
                                ("features_per_page", 1, 65536), ("chunk_rows", 0, 1 << 24)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")

    def rows_per_chunk(self, dict_size: int) -> int:
        return self.chunk_rows or max(1, min(65536, CHUNK_BYTES // (4 * dict_size)))


class Rows(Protocol):
    """An (n_rows, width) float32 matrix read a row range at a time (data.activations.ActivationFile, ArrayRows)."""

    n_rows: int
    width: int

    def rows(self, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayRows:
    """An (N, d) float32 array in memory as Rows."""

    array: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop], np.float32)


@dataclass(frozen=True)
class FeatureStatistics:
    """Per feature of an SAE over `rows` activation rows (F features)."""

    rows: int
    fires: np.ndarray  # (F,) int64: rows with activation != 0
    sums: np.ndarray  # (F,) float64: sum of activations
    max: np.ndarray  # (F,) float32: the largest activation (0 for a feature that never fires)
    top_rows: np.ndarray  # (F, top_k) int64: its top-activating rows, strongest first; -1 past those that fire
    top_values: np.ndarray  # (F, top_k) float32: their activations (0 past those that fire)
    histogram: np.ndarray  # (F, bins) int64: non-zero activations in equal bins over (0, max]
    neighbours: np.ndarray  # (F, m) int64: nearest features by decoder cosine, nearest first (m = min(neighbours, F-1))
    cosines: np.ndarray  # (F, m) float32: their cosines

    @property
    def density(self) -> np.ndarray:
        """(F,) float64: the share of rows each feature fires on."""
        return self.fires / self.rows

    @property
    def mean_active(self) -> np.ndarray:
        """(F,) float64: the mean activation over the rows it fires on (0 where none)."""
        return np.divide(self.sums, self.fires, out=np.zeros(len(self.sums)), where=self.fires > 0)


@partial(jax.jit, static_argnames="k")
def _first_pass(sae: SAE, x: jax.Array, first: jax.Array, top_v: jax.Array, top_i: jax.Array, k: int
                ) -> tuple[jax.Array, ...]:
    f = sae.encode(x)  # (n, F)
    active = f != 0
    fires, row_l0 = jnp.sum(active, axis=0, dtype=jnp.int32), jnp.max(jnp.sum(active, axis=1, dtype=jnp.int32))
    sums, largest = jnp.sum(f, axis=0), jnp.max(f, axis=0)
    v, i = jax.lax.top_k(f.T, min(k, x.shape[0]))  # (F, k') of this chunk
    values = jnp.concatenate([top_v, v], axis=1)
    rows = jnp.concatenate([top_i, (i + first).astype(top_i.dtype)], axis=1)
    best, where = jax.lax.top_k(values, k)  # the running top-k, merged
    return fires, row_l0, sums, largest, best, jnp.take_along_axis(rows, where, axis=1)


@partial(jax.jit, static_argnames=("bins", "per_row"))
def _histogram(sae: SAE, x: jax.Array, largest: jax.Array, bins: int, per_row: int) -> jax.Array:
    """(F, bins) int32 counts of this chunk's non-zero activations. per_row > 0: at most that many features fire
    on any row (the first pass's largest L0), so only each row's per_row largest are binned (a sparse SAE's
    (n, L0), not (n, F), scattered); 0: every entry is."""
    f = sae.encode(x)  # (n, F)
    n_features = f.shape[1]
    if per_row:
        values, features = jax.lax.top_k(f, per_row)  # (n, per_row): every non-zero of each row among them
    else:
        values, features = f, jnp.broadcast_to(jnp.arange(n_features, dtype=jnp.int32), f.shape)
    top = largest[features]
    b = jnp.clip(jnp.floor(values / jnp.where(top > 0, top, 1.0) * bins), 0, bins - 1).astype(jnp.int32)
    flat = (features * bins + b).ravel()
    counts = jnp.zeros(n_features * bins, jnp.int32).at[flat].add((values > 0).ravel().astype(jnp.int32))
    return counts.reshape(n_features, bins)


@partial(jax.jit, static_argnames="m")
def _nearest(unit: jax.Array, start: jax.Array, block: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    cos = block @ unit.T  # (b, F)
    own = start + jnp.arange(block.shape[0])
    cos = cos.at[jnp.arange(block.shape[0]), own].set(-jnp.inf)  # a feature is not its own neighbour
    return jax.lax.top_k(cos, m)


def decoder_neighbours(w_dec: np.ndarray | jax.Array, m: int) -> tuple[np.ndarray, np.ndarray]:
    """((F, m) int64 neighbours, (F, m) float32 cosines): each decoder row's (w_dec (F, D)) m nearest other rows by
    cosine, nearest first. An all-zero row has cosine 0 with every row."""
    w = jnp.asarray(w_dec, jnp.float32)
    n_features = w.shape[0]
    m = min(m, n_features - 1)
    if m <= 0:
        return np.zeros((n_features, 0), np.int64), np.zeros((n_features, 0), np.float32)
    norms = jnp.linalg.norm(w, axis=1, keepdims=True)
    unit = w / jnp.where(norms > 0, norms, 1.0)
    found, cosines = [], []
    for start in range(0, n_features, NEIGHBOUR_BLOCK):
        c, i = _nearest(unit, jnp.int32(start), unit[start:start + NEIGHBOUR_BLOCK], m)
        found.append(np.asarray(i, np.int64))
        cosines.append(np.asarray(c, np.float32))
    return np.concatenate(found), np.concatenate(cosines)


def feature_statistics(sae: SAE, source: Rows, config: DashboardConfig | None = None,
                       progress: Callable[[int, int], object] | None = None) -> FeatureStatistics:
    """FeatureStatistics of `sae` over every row of `source` ((N, sae.input_dim) float32; a transcoder's: its
    input rows), streamed config.rows_per_chunk rows at a time (config: the defaults where None). progress: called
    with (pass 1 or 2, rows done so far) after each chunk."""
    config = DashboardConfig() if config is None else config
    config.validate()
    if source.width != sae.input_dim:
        raise ValueError(f"rows of width {source.width}, expected the SAE's input width {sae.input_dim}")
    n, n_features, k = source.n_rows, sae.dict_size, min(config.top_k, source.n_rows)
    chunk = config.rows_per_chunk(n_features)
    fires = np.zeros(n_features, np.int64)
    sums = np.zeros(n_features, np.float64)
    largest = np.zeros(n_features, np.float32)
    top_v = jnp.full((n_features, k), -jnp.inf, jnp.float32)
    top_i = jnp.full((n_features, k), -1, jnp.int32 if n < 2**31 else jnp.int64)
    row_l0 = 0  # the most features firing on one row
    for start in range(0, n, chunk):
        x = jnp.asarray(source.rows(start, min(start + chunk, n)))
        f, l0, s, mx, top_v, top_i = _first_pass(sae, x, jnp.asarray(start, top_i.dtype), top_v, top_i, k)
        fires += np.asarray(f, np.int64)
        row_l0 = max(row_l0, int(l0))
        sums += np.asarray(s, np.float64)
        largest = np.maximum(largest, np.asarray(mx))
        if progress is not None:
            progress(1, min(start + chunk, n))
    histogram = np.zeros((n_features, config.bins), np.int64)
    device_largest = jnp.asarray(largest)
    # sparse binning where few features fire per row (rounded up to a power of two: few compiled shapes)
    per_row = 1 << max(row_l0 - 1, 0).bit_length() if 0 < row_l0 <= n_features // 8 else 0
    for start in range(0, n, chunk):
        x = jnp.asarray(source.rows(start, min(start + chunk, n)))
        histogram += np.asarray(_histogram(sae, x, device_largest, config.bins, per_row), np.int64)
        if progress is not None:
            progress(2, min(start + chunk, n))
    top_values, top_rows = np.asarray(top_v, np.float32), np.asarray(top_i, np.int64)
    fired = top_values > 0
    neighbours, cosines = decoder_neighbours(sae.params()["w_dec"], config.neighbours)
    return FeatureStatistics(
        rows=n, fires=fires, sums=sums, max=largest,
        top_rows=np.where(fired, top_rows, -1), top_values=np.where(fired, top_values, 0.0).astype(np.float32),
        histogram=histogram, neighbours=neighbours, cosines=cosines,
    )

