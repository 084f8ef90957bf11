"""A run directory's layout: where each artifact lives, its manifest, and `Run`, its artifacts loaded on
first use; beside it the layout of an SAE folder (train-sae's output) and the PRNG streams every job derives
from a seed. `pipeline` writes run directories; `export`, `parity`, `cli` and `scripts/` read them through
this module only.

    RUN_DIR/manifest.json               config, versions, completed stages and their metrics
    RUN_DIR/dataset/mlp_{split}.xlsx    the task rows
    RUN_DIR/mlp/perfect_mlp.pth         the MLP (and perfect_mlp.safetensors: the same tensors, no pickle)
    RUN_DIR/mlp/metrics.jsonl           its training curves (jax_impl.training.curves; sae/metrics.jsonl the SAE's)
    RUN_DIR/mlp_activations.pt          the harvested activations at the run's hook (N, d) float32 (and .safetensors)
    RUN_DIR/sae/sae_model.pth           the SAE (any architecture of jax_impl.saes; and .safetensors)
    RUN_DIR/sae/saelens/                the SAE in SAELens's format (cfg.json + sae_weights.safetensors)
    RUN_DIR/probe.txt                   the feature probe
    RUN_DIR/checkpoints/STAGE/          an unfinished training stage's checkpoints (gone once it completes)

An SAE folder (what `monosem train-sae` writes into --out; also each SAE configuration's folder of a sweep, and
causal/saes/HOOK/ of a run):

    DIR/sae.pth                         the SAE's state_dict (and sae.safetensors: the same tensors)
    DIR/saelens/                        the SAE in SAELens's format
    DIR/sae_config.json                 architecture, its config, the training, the data
    DIR/metrics.json                    what the training measured
    DIR/metrics.jsonl                   the training curves (jax_impl.training.curves), written as it trains
    DIR/checkpoints/                    an unfinished training's checkpoints (a sweep's: checkpoints/group-NNN/)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import jax
import numpy as np

from jax_impl import saes
from jax_impl.checks import MAX_SEED
from jax_impl.data.activations import read_activations
from jax_impl.errors import UserError
from jax_impl.files import jsonfile
from jax_impl.files.locks import LOCK_FILE
from jax_impl.interop import bridge, saelens
from jax_impl.jobs.run_config import RECIPES, RunConfig
from jax_impl.models.mlp import HOOK_WIDTHS, HOOKS, InterpretabilityMLP
from jax_impl.task.pointer import SPLITS, Split, TaskShape, concat_splits
from jax_impl.task.splits import read_split, split_filename
from jax_impl.training.mlp_trainer import MLP_DATA

Log = Callable[[str], None]

MANIFEST = "manifest.json"
START_OVER = "remove it to start the run over"  # how a user gets past a damaged manifest (messages end with it)
LOCK = LOCK_FILE
MLP_PATH = Path("mlp/perfect_mlp.pth")
ACTIVATIONS_PATH = Path("mlp_activations.pt")
# An SAE folder's files (the module docstring); SAELENS_NAME is an SAE's SAELens folder wherever it is written.
SAE_FILE = "sae.pth"
SAE_CONFIG_FILE = "sae_config.json"
METRICS_FILE = "metrics.json"
SAELENS_NAME = "saelens"

SAE_PATH = Path("sae/sae_model.pth")
SAELENS_DIR = SAE_PATH.parent / SAELENS_NAME
PROBE_PATH = Path("probe.txt")
# Training state of an unfinished training (jax_impl.training.checkpoints), in a run directory, an SAE folder and
# a sweep's folder alike; removed when the training completes.
CHECKPOINTS_DIR = Path("checkpoints")
# Every folder of a run directory (or of an --out folder of `causal`) that monosem's writers write into: the
# only places jax_impl.files.locks.remove_stale_temporaries looks for what a killed writer left (a glob per component).
WRITTEN_FOLDERS = ("dataset", "mlp", "sae", str(SAELENS_DIR), "export", "dashboard", "dashboard/dashboard_data",
                   "causal", "causal/saes/*",
                   f"causal/saes/*/{SAELENS_NAME}", "circuit", "circuit/transcoders/*", str(CHECKPOINTS_DIR),
                   f"{CHECKPOINTS_DIR}/*")

# Independent PRNG streams per purpose, each derived from one user seed (stream_key): a run's from its --seed
# (`Run.key(stream)`) ...
KEY_DATA, KEY_MLP_INIT, KEY_MLP_SHUFFLE, KEY_SAE_INIT, KEY_SAE_SHUFFLE = range(5)
# ... and train-sae's from its --seed (a sweep's SAE configuration from its seed: it trains as train-sae would).
KEY_TRAIN_SAE_INIT, KEY_TRAIN_SAE_SHUFFLE = range(2)


def stream_key(seed: int, stream: int) -> jax.Array:
    """The PRNG key of one of the streams above, derived from a user's seed."""
    return jax.random.fold_in(jax.random.key(seed), stream)


def dataset_path(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / "dataset" / split_filename(split)


def read_manifest(run_dir: Path | str) -> dict | None:
    """The run's manifest, or None when there is none; UserError naming the file when it cannot be read or
    does not have a manifest's shape (an object with `config`, and where present `stages` of {seconds, ...}
    and `metrics`)."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    manifest = jsonfile.read(path, unreadable="not a readable manifest", hint=START_OVER)
    manifest.get("config").fields()  # only config is needed to read a run; the others when present
    manifest.get("metrics", {}).fields()
    for entry in manifest.get("stages", {}).fields().values():
        entry.get("seconds").number(lo=0)
    return manifest.value


def run_config(run_dir: Path | str) -> RunConfig:
    """The config a finished (or partial) run was written with; UserError naming the manifest when its config
    is not one this version can run."""
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise UserError(f"{run_dir}: no {MANIFEST}; is this a run directory written by `monosem run`?")
    return config_from_manifest(manifest, Path(run_dir) / MANIFEST)


MAX_INPUT_DIM = 65536  # a task row's width a reader accepts from a manifest (the seed's is 10)
MAX_COUNT = 2**31 - 1  # a size, count or period from a manifest (JAX indexes with int32)


def config_from_manifest(manifest: dict, path: Path) -> RunConfig:
    """The RunConfig of a manifest read by read_manifest (path: where it came from, for messages): every key of
    its type (RunConfig.from_dict) and every value in its range, so a reader can use it (the seed seeds a PRNG,
    the hook names an activation, sizes are positive). The training-only rules of RunConfig.validate (batch
    sizes against the split, ...) are not applied: reading a run does not train."""
    try:
        config = RunConfig.from_dict(manifest["config"])
    except ValueError as e:
        raise UserError(f"{path}: not a valid manifest: {e}; {START_OVER}") from None
    _check_values(config, path)
    return config


def _check_values(config: RunConfig, path: Path) -> None:
    """UserError naming the manifest and the key of the first value of `config` out of its range."""
    def value(key: str, v: object) -> jsonfile.Node:
        return jsonfile.Node(v, str(path), f"config.{key}", START_OVER)

    value("seed", config.seed).integer(0, MAX_SEED)
    value("recipe", config.recipe).string(RECIPES)
    value("hook", config.hook).string(HOOKS)
    value("mlp.data", config.mlp.data).string(MLP_DATA)
    for section in ("data", "mlp", "sae"):  # every number of these sections is positive (as RunConfig.validate)
        for f in dataclasses.fields(getattr(config, section)):
            v = getattr(getattr(config, section), f.name)
            if isinstance(v, int):
                value(f"{section}.{f.name}", v).integer(1, MAX_COUNT)
            elif isinstance(v, float):
                value(f"{section}.{f.name}", v).number(above=0)
    value("mlp.pct_start", config.mlp.pct_start).number(above=0, below=1)
    # a task row is x_dim * y_dim wide: at least one value and one pointer per column
    value("data.y_dim", config.data.y_dim).integer(1, MAX_INPUT_DIM // 2)
    value("data.x_dim", config.data.x_dim).integer(2, MAX_INPUT_DIM // config.data.y_dim)
    try:  # what the sections' own classes require of their values
        config.causal.validate()
    except UserError as e:
        raise UserError(f"{path}: not a valid manifest: config.causal: {e}; {START_OVER}") from None
    try:
        config.sae.architecture.validate(config.sae.dict_size)
    except ValueError as e:
        raise UserError(f"{path}: not a valid manifest: config.sae.architecture: {e}; {START_OVER}") from None


class Run:
    """One run directory: its config and its artifacts, loaded from disk on first use when a stage did not
    just compute them (which is what makes `--resume` work).

    sae_path: another SAE to use with the run's MLP (a `.pth`, a `.safetensors` or a SAELens folder) instead
    of the run's own; out_dir: where the atlas and reports are written (default the run directory).
    """

    def __init__(
        self, run_dir: Path | str, config: RunConfig, log: Log = print, *,
        sae_path: Path | str | None = None, out_dir: Path | str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.config = config
        self.log = log
        self.sae_path = self.run_dir / SAE_PATH if sae_path is None else Path(sae_path)
        self.out_dir = self.run_dir if out_dir is None else Path(out_dir)
        self.shape = TaskShape(config.data.x_dim, config.data.y_dim)

    @property
    def atlas_matches_sae(self) -> bool:
        """Whether an atlas in out_dir describes this run's SAE (not so for another SAE with the run's atlas)."""
        return self.sae_path == self.run_dir / SAE_PATH or self.out_dir != self.run_dir

    def key(self, stream: int) -> jax.Array:
        """The key of one of the run's streams (KEY_DATA, ...)."""
        return stream_key(self.config.seed, stream)

    @cached_property
    def splits(self) -> dict[str, Split]:
        try:
            return {s: read_split(dataset_path(self.run_dir, s), self.shape) for s in SPLITS}
        except UserError as e:
            if self.shape == TaskShape():
                raise
            # the shape the rows are checked against comes from the manifest, which may be what is wrong
            raise UserError(f"{e} (read as the {self.shape.x_dim}x{self.shape.y_dim} task that "
                            f"{self.run_dir / MANIFEST} records)") from None

    def rows(self, names: tuple[str, ...] = SPLITS) -> Split:
        """The rows of the named splits (by default train + val + test, 10,000 rows), in that order."""
        return concat_splits([self.splits[s] for s in names])

    @cached_property
    def mlp(self) -> InterpretabilityMLP:
        return bridge.load_mlp(self.run_dir / MLP_PATH)

    @property
    def hook(self) -> str:
        """The MLP activation the run's SAE decomposes (config.hook: layer1, layer2 or layer3)."""
        return self.config.hook

    @property
    def hook_width(self) -> int:
        return HOOK_WIDTHS[self.config.hook]

    @cached_property
    def activations(self) -> np.ndarray:
        return read_activations(self.run_dir / ACTIVATIONS_PATH, width=self.hook_width)

    @cached_property
    def sae(self) -> saes.SAE:
        return saelens.load_sae(self.sae_path, input_dim=self.hook_width)


def load_run(run_dir: Path | str, log: Log = print) -> Run:
    """A finished run directory (what `monosem run` / run_pipeline wrote at `run_dir`), its config read from its
    manifest; its mlp, sae, splits and activations are read on first use. log: where messages go."""
    return Run(run_dir, run_config(run_dir), log)
