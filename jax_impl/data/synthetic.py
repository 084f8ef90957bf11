"""Synthetic activations built from planted features: a ground truth to score SAEs against.

Each row is x = sum_i a_i * direction_i (no bias), with `n_features` unit directions in `dim` dimensions
(orthonormal when n_features <= dim, random otherwise: superposition). Feature i fires with a Zipf-like
probability (a few often, most rarely); when it fires its magnitude is drawn around a per-feature mean.
Firing can be correlated (a Gaussian copula with a low-rank factor) and hierarchical: the first `parents`
features each have `children_per_parent` children, features that fire only on rows where their parent
fires, at most one child per row (the setting that provokes feature absorption: an SAE can save a latent
by folding the parent into each child).

Everything is numpy with one seed: the same config writes the same bytes. `write_synthetic` stores a
dataset folder that `monosem train-sae --activations DIR/activations.npy` trains on and that
jax_impl.evaluation.groundtruth scores against:

  activations.npy        (N, dim) float32
  ground_truth.npz       directions (F, dim) float32, firing_probability (F,), parent (F,) int32 (-1: none),
                         the feature activations as sparse triplets: row (nnz,) int64, feature (nnz,) int32,
                         value (nnz,) float32, sorted by row
  synthetic_config.json  the SyntheticConfig
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from jax_impl.checks import require_finite
from jax_impl.errors import UserError
from jax_impl.files import jsonfile
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import atomic_path, write_json_atomic
from jax_impl.files.locks import folder_lock, remove_stale_temporaries

ACTIVATIONS_FILE = "activations.npy"
TRUTH_FILE = "ground_truth.npz"
CONFIG_FILE = "synthetic_config.json"
_GENERATION_CHUNK = 1 << 16  # rows generated at once: memory is (chunk, n_features), not (rows, n_features)


@dataclass(frozen=True)
class SyntheticConfig:
    """The planted problem. Defaults: 256 features in 64 dimensions, about 5 active per row."""

    n_features: int = 256
    dim: int = 64
    rows: int = 100_000
    zipf_exponent: float = 1.0  # firing probability of the r-th most frequent feature ~ 1 / r**exponent ...
    max_prob: float = 0.3  # ... scaled into [min_prob, max_prob] (SAELens' zipfian defaults)
    min_prob: float = 0.01
    magnitude_low: float = 0.5  # each feature's mean magnitude, uniform in [low, high]
    magnitude_high: float = 2.0
    magnitude_cv: float = 0.25  # per-row magnitude: normal around the mean, this std / mean, clipped at 0
    correlation_rank: int = 4  # factors of the Gaussian copula that correlates firing (0: independent)
    correlation_strength: float = 0.3  # share of each feature's latent variance from the factors, in [0, 1)
    parents: int = 8  # features 0..parents-1 have children (the most frequent ones)
    children_per_parent: int = 3
    child_prob: float = 0.6  # P(one of its children fires | the parent fires); the child is uniform among them
    seed: int = 0

    def validate(self) -> SyntheticConfig:
        require_finite(self)  # NaN passes every comparison below
        for name in ("n_features", "dim", "rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.parents < 0 or self.children_per_parent < 0 or self.correlation_rank < 0 or self.seed < 0:
            raise ValueError("parents, children_per_parent, correlation_rank and seed must be >= 0")
        if self.parents * (1 + self.children_per_parent) > self.n_features:
            raise ValueError(
                f"parents x (1 + children_per_parent) = {self.parents * (1 + self.children_per_parent)} features "
                f"do not fit in n_features = {self.n_features}"
            )
        if not 0 < self.min_prob < self.max_prob < 1:
            raise ValueError(f"need 0 < min_prob < max_prob < 1, got {self.min_prob}, {self.max_prob}")
        if not 0 < self.magnitude_low <= self.magnitude_high or self.magnitude_cv < 0:
            raise ValueError("need 0 < magnitude_low <= magnitude_high and magnitude_cv >= 0")
        if not 0 <= self.correlation_strength < 1 or not 0 <= self.child_prob <= 1 or self.zipf_exponent <= 0:
            raise ValueError("need 0 <= correlation_strength < 1, 0 <= child_prob <= 1, zipf_exponent > 0")
        return self

    def memory_bytes(self) -> int:
        """A lower bound of what `generate` holds at once (jax_impl.checks.check_memory): the activations
        (rows x dim float32), the directions (float64 while drawn), and a chunk's latents and magnitudes
        (float64, chunk x n_features each)."""
        chunk = min(self.rows, _GENERATION_CHUNK)
        return 4 * self.rows * self.dim + 8 * self.n_features * self.dim + 2 * 8 * chunk * self.n_features


@dataclass(frozen=True)
class GroundTruth:
    """What was planted. directions (F, D) unit rows; firing_probability (F,) marginal; parent (F,) int32,
    -1 for a feature without one; row/feature/value: the non-zero feature activations, sorted by row."""

    directions: np.ndarray
    firing_probability: np.ndarray
    parent: np.ndarray
    row: np.ndarray
    feature: np.ndarray
    value: np.ndarray

    @property
    def n_features(self) -> int:
        return self.directions.shape[0]

    def activations(self, start: int, stop: int) -> np.ndarray:
        """The feature activations of rows start..stop-1, dense: (stop - start, F) float32."""
        lo, hi = np.searchsorted(self.row, [start, stop])
        dense = np.zeros((stop - start, self.n_features), np.float32)
        dense[self.row[lo:hi] - start, self.feature[lo:hi]] = self.value[lo:hi]
        return dense


def zipf_probabilities(cfg: SyntheticConfig, n: int) -> np.ndarray:
    """(n,) descending probabilities ~ 1 / rank**exponent, scaled into [min_prob, max_prob]."""
    raw = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** cfg.zipf_exponent
    if n == 1:
        return np.array([cfg.max_prob])
    return cfg.min_prob + (cfg.max_prob - cfg.min_prob) * (raw - raw.min()) / (raw.max() - raw.min())


def _directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    w = rng.standard_normal((n, dim))
    if n <= dim:  # orthonormal rows: no interference at all
        q, _ = np.linalg.qr(w.T)
        return np.ascontiguousarray(q.T[:n], np.float32)
    return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


def generate(cfg: SyntheticConfig) -> tuple[np.ndarray, GroundTruth]:
    """x (rows, dim) float32 and what was planted in it."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    f = cfg.n_features
    directions = _directions(rng, f, cfg.dim)
    n_children = cfg.parents * cfg.children_per_parent
    parent = np.full(f, -1, np.int32)
    children = np.arange(cfg.parents, cfg.parents + n_children).reshape(cfg.parents, cfg.children_per_parent)
    for p in range(cfg.parents):
        parent[children[p]] = p
    free = parent < 0  # fire on their own (parents included); children only through their parent
    prob = np.zeros(f)
    prob[free] = zipf_probabilities(cfg, int(free.sum()))  # parents are the first free features: the most frequent
    if cfg.children_per_parent:
        prob[children] = prob[:cfg.parents, None] * cfg.child_prob / cfg.children_per_parent
    threshold = np.array([NormalDist().inv_cdf(1.0 - p) for p in prob[free]])
    factors = rng.standard_normal((int(free.sum()), cfg.correlation_rank))
    if cfg.correlation_rank:  # each row's norm exactly sqrt(strength): every latent has unit variance
        factors *= np.sqrt(cfg.correlation_strength) / np.linalg.norm(factors, axis=1, keepdims=True)
    noise_scale = np.sqrt(1.0 - cfg.correlation_strength) if cfg.correlation_rank else 1.0
    mean_magnitude = rng.uniform(cfg.magnitude_low, cfg.magnitude_high, f)

    x = np.empty((cfg.rows, cfg.dim), np.float32)
    rows, feats, values = [], [], []
    for start in range(0, cfg.rows, _GENERATION_CHUNK):
        m = min(_GENERATION_CHUNK, cfg.rows - start)
        latent = rng.standard_normal((m, cfg.correlation_rank)) @ factors.T + noise_scale * rng.standard_normal(
            (m, int(free.sum())))
        fires = np.zeros((m, f), bool)
        fires[:, free] = latent > threshold  # unit-variance latent: P(fire) = prob
        if cfg.children_per_parent:
            pick = rng.random((m, cfg.parents))  # < child_prob: child number floor(pick / child_prob * C) fires
            which = np.minimum((pick / max(cfg.child_prob, 1e-12) * cfg.children_per_parent).astype(np.int64),
                               cfg.children_per_parent - 1)
            child_fires = (pick < cfg.child_prob) & fires[:, :cfg.parents]
            r, p = np.nonzero(child_fires)
            fires[r, children[p, which[r, p]]] = True
        magnitude = mean_magnitude * (1.0 + cfg.magnitude_cv * rng.standard_normal((m, f)))
        acts = np.where(fires, np.maximum(magnitude, 0.0), 0.0).astype(np.float32)
        x[start:start + m] = acts @ directions
        r, c = np.nonzero(acts)
        rows.append(r.astype(np.int64) + start)
        feats.append(c.astype(np.int32))
        values.append(acts[r, c])
    truth = GroundTruth(
        directions=directions, firing_probability=prob.astype(np.float32), parent=parent,
        row=np.concatenate(rows), feature=np.concatenate(feats), value=np.concatenate(values),
    )
    return x, truth


def write_synthetic(cfg: SyntheticConfig, out_dir: Path | str) -> Path:
    """Generate and write ACTIVATIONS_FILE, TRUTH_FILE and CONFIG_FILE into out_dir, one artifact set
    (jax_impl.files.artifact_set) under out_dir's lock (jax_impl.files.locks)."""
    x, truth = generate(cfg)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; --out must be a folder")
    with folder_lock(out_dir, flag="--out", what="output folder"):
        remove_stale_temporaries(out_dir)
        with artifact_set(out_dir, last=(CONFIG_FILE,)) as staging:
            with atomic_path(staging / ACTIVATIONS_FILE) as tmp, open(tmp, "wb") as f:
                np.save(f, x)  # a file object: np.save would append .npy to the temporary's name
            with atomic_path(staging / TRUTH_FILE) as tmp, open(tmp, "wb") as f:
                np.savez(f, **dataclasses.asdict(truth))
            write_json_atomic(staging / CONFIG_FILE, dataclasses.asdict(cfg))
    return out_dir


def load_synthetic(data_dir: Path | str) -> tuple[np.ndarray, GroundTruth, SyntheticConfig]:
    """Read a folder written by write_synthetic, every value checked before use (no pickles: allow_pickle=False).
    x is memory-mapped. UserError naming the file and the key otherwise."""
    from jax_impl.data.activations import open_activations  # torch and safetensors: only for a reader of the files

    data_dir = Path(data_dir)
    paths = [data_dir / name for name in (ACTIVATIONS_FILE, TRUTH_FILE, CONFIG_FILE)]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: not found; expected a folder written by `monosem synthetic`")
    cfg = read_config(paths[2])
    source = open_activations(paths[0])  # a 2-D float32 .npy, all finite
    if (source.n_rows, source.width) != (cfg.rows, cfg.dim):
        raise UserError(f"{paths[0]}: activations of shape ({source.n_rows}, {source.width}), expected "
                        f"({cfg.rows}, {cfg.dim}) as {CONFIG_FILE} says")
    x = np.load(paths[0], mmap_mode="r", allow_pickle=False)
    return x, read_truth(paths[1], cfg), cfg


def read_config(path: Path) -> SyntheticConfig:
    """A CONFIG_FILE: its keys typed as SyntheticConfig's fields (integers within 64 bits: jsonfile), then its
    validate."""
    from jax_impl.checks import section_from_dict as typed_section  # the one typed reading of a config dataclass

    doc = jsonfile.read(path, unreadable="not a synthetic config")
    try:
        cfg = typed_section(SyntheticConfig, doc.value, "config")
    except ValueError as e:
        raise UserError(f"{path}: not a synthetic config ({e})") from None
    try:
        return cfg.validate()
    except ValueError as e:
        raise UserError(f"{path}: not a synthetic config ({e})") from None


# TRUTH_FILE's arrays: dtype and number of dimensions (GroundTruth's fields).
_TRUTH_ARRAYS = {"directions": ("float32", 2), "firing_probability": ("float32", 1), "parent": ("int32", 1),
                 "row": ("int64", 1), "feature": ("int32", 1), "value": ("float32", 1)}


def read_truth(path: Path, cfg: SyntheticConfig) -> GroundTruth:
    """A TRUTH_FILE of the set `cfg` describes, checked before use: exactly its six arrays, each of its dtype and
    of the shape the config implies (every header read before any array, and no array larger than the archive),
    then their values: finite directions, probabilities in [0, 1], parents and feature ids in range, rows in
    range and in ascending order (the scorer searches them), positive activations. UserError naming the file and
    the key otherwise."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable synthetic data (not an .npz archive: {e})") from None
    with archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        missing, extra = sorted(set(_TRUTH_ARRAYS) - set(members)), sorted(set(members) - set(_TRUTH_ARRAYS))
        if missing or extra:
            raise UserError(f"{path}: holds the arrays {sorted(members)[:8]}, expected exactly {sorted(_TRUTH_ARRAYS)}")
        size = path.stat().st_size
        headers = {name: _npz_header(path, archive, members[name], size) for name in _TRUTH_ARRAYS}
        for name, (dtype, ndim) in _TRUTH_ARRAYS.items():
            shape, found = headers[name]
            if found.kind != np.dtype(dtype).kind or found.itemsize != np.dtype(dtype).itemsize or found.fields:
                raise UserError(f"{path}: key {name!r} has dtype {found}, expected {dtype}")
            if len(shape) != ndim:
                raise UserError(f"{path}: key {name!r} has shape {shape}, expected a {ndim}-D array")
        nnz = headers["row"][0][0]  # the stored activations: row, feature and value of one length
        expected_shapes = {"directions": (cfg.n_features, cfg.dim), "firing_probability": (cfg.n_features,),
                           "parent": (cfg.n_features,), "feature": (nnz,), "value": (nnz,)}
        for name, shape in expected_shapes.items():
            if headers[name][0] != shape:
                source = "as key 'row'" if name in ("feature", "value") else f"for the {CONFIG_FILE} it comes with"
                raise UserError(f"{path}: key {name!r} has shape {headers[name][0]}, expected {shape} {source}")
        if nnz > cfg.rows * cfg.n_features:
            raise UserError(f"{path}: key 'row' has {nnz} entries, more than rows x n_features = "
                            f"{cfg.rows * cfg.n_features} activations")
        arrays = {}
        for name, (dtype, _) in _TRUTH_ARRAYS.items():
            try:
                with archive.open(members[name]) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False).astype(dtype, copy=False)
            except Exception as e:  # noqa: BLE001 - a damaged member fails in zipfile's or numpy's reader variously
                raise UserError(f"{path}: unreadable synthetic data (key {name!r}: {_first_line(e)})") from None
    _check_truth_values(path, arrays, cfg)
    return GroundTruth(**arrays)


def _npz_header(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one .npy member of an .npz, read from its header; refused where its data would be larger
    than the member, or the member larger than the archive (so nothing is allocated beyond the file's size)."""
    name = info.filename.removesuffix(".npy")
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
        raise UserError(f"{path}: key {name!r} is compressed or larger than the archive; expected the uncompressed "
                        "arrays np.savez writes")
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f".npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
            shape, _fortran, dtype = readers[version](f)
            header = f.tell()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy parses the header as Python literals: ValueError, SyntaxError, ...
        raise UserError(f"{path}: unreadable synthetic data (key {name!r}: {_first_line(e)})") from None
    dtype = np.dtype(dtype)
    if any(int(n) < 0 for n in shape):
        raise UserError(f"{path}: key {name!r} claims shape {tuple(shape)}, expected sizes >= 0")
    if dtype.hasobject:
        raise UserError(f"{path}: key {name!r} has dtype {dtype}, expected {_TRUTH_ARRAYS[name][0]}")
    count = 1
    for n in shape:
        count *= int(n)
    if header + count * dtype.itemsize > info.file_size:
        raise UserError(f"{path}: key {name!r} claims shape {tuple(shape)} ({count * dtype.itemsize} bytes), more "
                        f"than its {info.file_size} bytes in the archive hold")
    return tuple(int(n) for n in shape), dtype


def _check_truth_values(path: Path, a: dict[str, np.ndarray], cfg: SyntheticConfig) -> None:
    f = cfg.n_features

    def first_bad(name: str, ok: np.ndarray, expected: str) -> None:
        if not ok.all():
            i = int(np.argmin(ok.reshape(-1)))
            raise UserError(f"{path}: key {name!r} holds {a[name].reshape(-1)[i]} at flat index {i}, expected {expected}")

    first_bad("directions", np.isfinite(a["directions"]), "finite values")
    p = a["firing_probability"]
    first_bad("firing_probability", np.isfinite(p) & (p >= 0) & (p <= 1), "probabilities in [0, 1]")
    parent = a["parent"]
    first_bad("parent", (parent >= -1) & (parent < f) & (parent != np.arange(f)),
              f"-1 (no parent) or another feature's id in 0..{f - 1}")
    first_bad("row", (a["row"] >= 0) & (a["row"] < cfg.rows), f"row numbers in 0..{cfg.rows - 1}")
    first_bad("row", np.diff(a["row"], prepend=0) >= 0, "row numbers in ascending order")
    first_bad("feature", (a["feature"] >= 0) & (a["feature"] < f), f"feature ids in 0..{f - 1}")
    value = a["value"]
    first_bad("value", np.isfinite(value) & (value > 0), "positive activations (the non-zero ones are stored)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]
