"""SAELens's on-disk format: a folder holding `cfg.json` and `sae_weights.safetensors`.

Every SAE a run trains is also written this way (`RUN_DIR/sae/saelens/`, and `OUT/saelens/` of
`monosem train-sae`), so `sae_lens.SAE.load_from_disk(folder)` loads it; `--sae FOLDER` of `monosem atlas`,
`probe`, `report` and `evaluate` reads one, so an SAE trained with SAELens on our activations works here.

SAELens keeps tensors in our layout under its own names: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec
(d_sae, d_in), b_dec (d_in,), and threshold (d_sae,) for "jumprelu". Which SAELens architecture each of ours
is written as, and which SAELens architectures it is read from, is its `Architecture.saelens`. Our own
architecture name and config go into cfg.json's free-form `metadata.monosem`, so a folder written here reads
back as exactly the SAE that was saved (a `batchtopk` stays a `batchtopk`, not the `jumprelu` SAELens sees).

Transcoders: SAELens has four (`TRANSCODERS`), a ReLU and a JumpReLU one, each with and without a linear skip,
which hold b_dec (d_out,), W_dec (d_sae, d_out), W_skip (d_out, d_in) and `d_out` in cfg.json, never subtract
b_dec from the input (apply_b_dec_to_input false, as ours do not), and compute
prediction = act(x @ W_enc + b_enc) @ W_dec + b_dec (+ x @ W_skip.T). Ours are written as the one of their
SAE's SAELens activation: relu-l1 and anthropic as `transcoder`, jumprelu, batchtopk and matryoshka (whose
thresholds spread over every feature, as for their SAEs) as `jumprelu_transcoder`; SAELens's JumpReLU
transcoder computes relu(pre) * (pre > threshold), ours pre * (pre > threshold), equal for the thresholds >= 0
written and read here. SAELens has no TopK transcoder: a topk transcoder is not written (our state_dict is its
only format), and save_saelens says so in one line. Read without our metadata, `transcoder` is a relu-l1
transcoder (the SAELens ReLU's free decoder norms) and `jumprelu_transcoder` a jumprelu one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl import saes
from jax_impl.checks import loaded_torch
from jax_impl.checks import section_from_dict as typed_section  # the one typed reading of a config dataclass
from jax_impl.errors import UserError
from jax_impl.files import jsonfile
from jax_impl.files.atomic import write_text_atomic
from jax_impl.interop import bridge
from jax_impl.models.mlp import LAYER2_WIDTH
from jax_impl.saes import SAE, Architecture

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# SAELens's feature log-densities (its constants.SPARSITY_FILENAME): one tensor under SPARSITY_KEY, (d_sae,)
# float32 log10(density + DENSITY_EPS), density = the share of rows on which the feature fires (activation != 0),
# as SAELens's trainer writes it (training.sae_trainer._log_feature_sparsity) and its loaders and dashboards read it.
SPARSITY_FILE = "sparsity.safetensors"
SPARSITY_KEY = "sparsity"
DENSITY_EPS = 1e-10
# The chunk feature_density encodes at a time when given one (N, d_in) array (bounded device memory).
DENSITY_CHUNK_ROWS = 65536
# The cfg.json layout written: SAELens 6's (`architecture`, `metadata`); older loaders rename pre-6 keys.
FORMAT_VERSION = "6.0.0"

# Our tensor names -> SAELens's (both in the same layout; no transposes).
TENSOR_NAMES = {"w_enc": "W_enc", "b_enc": "b_enc", "w_dec": "W_dec", "b_dec": "b_dec", "threshold": "threshold"}
# SAELens saves a training BatchTopK's running threshold under this name (one scalar).
TRAINING_THRESHOLD = "topk_threshold"
# SAELens config fields that are fields of our configs, by SAELens architecture: SAELens name -> ours.
CONFIG_FIELDS: dict[str, dict[str, str]] = {
    "topk": {"k": "k"},
    "batchtopk": {"k": "k"},
    "matryoshka_batchtopk": {"k": "k", "matryoshka_widths": "groups"},
}
# SAELens's transcoders, by the SAELens SAE architecture of the same activation: (without, with a skip connection).
TRANSCODERS: dict[str, tuple[str, str]] = {
    "standard": ("transcoder", "skip_transcoder"),
    "jumprelu": ("jumprelu_transcoder", "jumprelu_skip_transcoder"),
}
# SAELens transcoder architecture -> (the SAE architecture of its activation, has a skip connection)
_TRANSCODER_FORMS = {name: (family, bool(skip)) for family, names in TRANSCODERS.items() for skip, name in enumerate(names)}
# A skip transcoder's w_skip (D_in, D_out), which SAELens keeps transposed, in torch Linear layout (d_out, d_in).
SKIP_TENSOR = "W_skip"
# cfg.json settings we read with their only supported value (what our SAEs compute).
_PLAIN_SETTINGS = {"normalize_activations": "none", "reshape_activations": "none"}
# SAELens's TopK / BatchTopK option (its training BatchTopK's default): pre-activations scaled by each decoder
# row's norm, activations divided by it before decoding. Read by folding the norms into the weights.
RESCALE = "rescale_acts_by_decoder_norm"


def is_saelens_dir(path: Path | str) -> bool:
    return Path(path).is_dir()


def saelens_architecture(sae: SAE) -> str | None:
    """The SAELens architecture `sae` is written as (an SAE's, or a transcoder's of TRANSCODERS); None where
    SAELens has none (its architecture's SAE has no SAELens form, or a topk transcoder)."""
    fmt = sae.arch.saelens
    if fmt is None:
        return None
    if not sae.transcoder:
        return fmt.architecture
    names = TRANSCODERS.get(fmt.architecture)
    return None if names is None else names[sae.skip]


def saelens_state(sae: SAE, *, hook_name: str | None = "layer2") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(cfg.json's dict, the tensors by SAELens name) for `sae`. ValueError where SAELens has no form of it."""
    arch, fmt, architecture = sae.arch, sae.arch.saelens, saelens_architecture(sae)
    if architecture is None:
        kind = "transcoder" if sae.transcoder else "SAE"
        raise ValueError(f"SAELens has no form of a {arch.name} {kind}")
    values = sae.params() | sae.buffers()
    tensors = {TENSOR_NAMES[name]: np.asarray(values[name]) for name in ("w_enc", "b_enc", "w_dec", "b_dec")}
    if fmt.architecture == "jumprelu":
        # SAELens keeps one threshold per feature; a BatchTopK's single (possibly not yet set, < 0) threshold
        # is spread over every feature, as SAELens's own BatchTopK saves it.
        threshold = np.maximum(np.asarray(values["threshold"], np.float32), 0.0)
        tensors["threshold"] = np.broadcast_to(threshold, (sae.dict_size,))
    if sae.skip:
        tensors[SKIP_TENSOR] = np.asarray(values["w_skip"]).T
    cfg: dict[str, Any] = {
        "d_in": sae.input_dim,
        "d_sae": sae.dict_size,
        **({"d_out": sae.output_dim} if sae.transcoder else {}),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": arch.tied_bias and not sae.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": "monosemanticity-mlp",
            "hook_name": hook_name,
            "monosem": {"architecture": arch.name, "config": dataclasses.asdict(sae.cfg)},
        },
        "architecture": architecture,
    }
    for saelens_name, ours in CONFIG_FIELDS.get(architecture, {}).items():
        cfg[saelens_name] = getattr(sae.cfg, ours)
    if architecture == "topk":
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg, {k: np.array(v, dtype=np.float32, order="C") for k, v in tensors.items()}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@jax.jit
def _fire_counts(sae: SAE, x: jax.Array) -> jax.Array:
    _, features = sae(x)
    return jnp.sum(features != 0, axis=0, dtype=jnp.int32)


def feature_density(sae: SAE, activations: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """(d_sae,) float64: the share of rows on which each feature fires (activation != 0, as SAELens counts).
    activations: the SAE's input rows, one (N, d_in) float32 array (encoded DENSITY_CHUNK_ROWS at a time) or an
    iterable of (n, d_in) chunks (a file streamed chunk by chunk). ValueError for no rows or another width."""
    if isinstance(activations, np.ndarray | jax.Array):
        array = activations
        activations = (array[i:i + DENSITY_CHUNK_ROWS] for i in range(0, len(array), DENSITY_CHUNK_ROWS))
    counts = np.zeros(sae.dict_size, np.int64)  # int64 on the host: int32 per chunk cannot overflow
    n = 0
    for chunk in activations:
        if chunk.ndim != 2 or chunk.shape[1] != sae.input_dim:
            raise ValueError(f"activation chunk of shape {tuple(chunk.shape)}, expected (n, {sae.input_dim})")
        if len(chunk):
            counts += np.asarray(_fire_counts(sae, jnp.asarray(chunk, jnp.float32)))
            n += len(chunk)
    if n == 0:
        raise ValueError("no activation rows to measure feature densities on")
    return counts / n


def log_density(density: np.ndarray) -> np.ndarray:
    """(d_sae,) float32 log10(density + DENSITY_EPS): what SPARSITY_FILE holds (-10 for a feature that never fires)."""
    return np.log10(np.asarray(density, np.float64) + DENSITY_EPS).astype(np.float32)


def save_saelens(sae: SAE, folder: Path | str, *, hook_name: str | None = "layer2",
                 log: Callable[[str], object] = _stderr,
                 activations: np.ndarray | Iterable[np.ndarray] | None = None,
                 density: np.ndarray | None = None) -> Path | None:
    """Write `folder/sparsity.safetensors`, `folder/sae_weights.safetensors` then `folder/cfg.json`, each
    atomically; returns the folder. hook_name: the activation SAELens records it reads (None: none recorded).

    The feature log-densities (SPARSITY_FILE) are measured on `activations` (the SAE's input rows, as
    feature_density takes them: in practice its training activations) or given as `density` ((d_sae,) shares
    of rows, feature_density's value, where the caller measured them already); at most one of the two.
    With neither, no SPARSITY_FILE is written and one left by an earlier save is removed first (SAELens's
    loaders then return no sparsity, as for SAEs published without one): densities are never invented.

    A transcoder SAELens has no architecture for (topk) is not written: one line to `log` says so, and None is
    returned (its state_dict, jax_impl.interop.bridge's format, is then the only one it has)."""
    folder = Path(folder)
    if activations is not None and density is not None:
        raise ValueError("save_saelens takes activations or density, not both")
    if sae.transcoder and saelens_architecture(sae) is None:
        log(f"{folder}: not written: SAELens has no {sae.arch.name} transcoder (only {', '.join(_TRANSCODER_FORMS)}); "
            "this transcoder is saved in our state_dict format only")
        return None
    cfg, tensors = saelens_state(sae, hook_name=hook_name)
    if activations is not None:
        density = feature_density(sae, activations)
    if density is not None:
        density = np.asarray(density)
        if density.shape != (sae.dict_size,) or not np.all((density >= 0) & (density <= 1)):
            raise ValueError(f"density must be (d_sae,) = ({sae.dict_size},) shares in [0, 1]; got shape {density.shape}")
        sparsity = np.asarray(log_density(density), dtype=np.float32, order="C")
        bridge.write_safetensors({SPARSITY_KEY: sparsity}, folder / SPARSITY_FILE)
    else:  # never beside weights it was not measured for
        (folder / SPARSITY_FILE).unlink(missing_ok=True)
    bridge.write_safetensors(tensors, folder / WEIGHTS_FILE)
    write_text_atomic(folder / CFG_FILE, json.dumps(cfg, indent=2) + "\n")
    return folder


def read_sparsity(folder: Path | str, d_sae: int | None = None) -> np.ndarray | None:
    """(d_sae,) float32 log10 feature densities of a SAELens folder's SPARSITY_FILE (as SAELens writes and reads it);
    None where the folder has none. d_sae: the feature count it must have (None: any). One-line UserError naming
    the file for another key, shape or dtype, or values that are no log10 of a share (NaN, > 0)."""
    path = Path(folder) / SPARSITY_FILE
    if not path.is_file():
        return None
    tensors = bridge.read_safetensors(path)
    if SPARSITY_KEY not in tensors:
        raise UserError(f"{path}: no tensor {SPARSITY_KEY!r} (holds {sorted(tensors)}); expected SAELens's feature "
                        "log10 densities")
    array = _float32(tensors, SPARSITY_KEY, path)
    expected = "(d_sae,)" if d_sae is None else f"({d_sae},)"
    if array.ndim != 1 or (d_sae is not None and array.shape[0] != d_sae):
        raise UserError(f"{path}: tensor {SPARSITY_KEY!r} has shape {tuple(array.shape)}, expected {expected}")
    # -inf is a log10(0) written without SAELens's epsilon: a feature that never fired, still a density
    if np.isnan(array).any() or (array > 1e-6).any():
        raise UserError(f"{path}: tensor {SPARSITY_KEY!r} holds NaN or values > 0; expected log10 of shares of rows "
                        "(<= 0)")
    return array


# --------------------------------------------------------------------------- reading


# The largest d_in or d_sae read from a cfg.json (JAX indexes with int32); the tensors of the weights file must
# then have the shapes these describe.
MAX_WIDTH = 2**31 - 1


def _read_cfg(folder: Path) -> dict[str, Any]:
    """The values of folder's cfg.json that this reader uses, each checked (jax_impl.files.jsonfile) and with its
    SAELens default where the file has none: d_in, d_sae, architecture, apply_b_dec_to_input, RESCALE, the
    architecture's CONFIG_FIELDS present, a transcoder's d_out, and "monosem": our own (architecture name, config) from its metadata or
    None. UserError naming the file and the key otherwise."""
    path = folder / CFG_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {CFG_FILE}; expected a SAELens SAE folder ({CFG_FILE} + {WEIGHTS_FILE})")
    doc = jsonfile.read(path)
    doc.fields()
    for key, plain in _PLAIN_SETTINGS.items():
        if doc.get(key, plain).value != plain:
            raise UserError(f"{path}: key {key!r} is {jsonfile.describe(doc[key].value)}; only {plain!r} is supported here")
    architecture = doc.get("architecture", "standard").string()
    cfg: dict[str, Any] = {
        "d_in": doc["d_in"].integer(1, MAX_WIDTH),
        "d_sae": doc["d_sae"].integer(1, MAX_WIDTH),
        "architecture": architecture,
        "apply_b_dec_to_input": doc.get("apply_b_dec_to_input", architecture not in _TRANSCODER_FORMS).boolean(),
        RESCALE: doc.get(RESCALE, False).boolean(),
    }
    if architecture in _TRANSCODER_FORMS:  # SAELens's own files always record d_out (TranscoderConfig.to_dict)
        cfg["d_out"] = doc["d_out"].integer(1, MAX_WIDTH)
        if cfg["apply_b_dec_to_input"]:
            doc["apply_b_dec_to_input"].fail("false: a transcoder's b_dec is in the output's space (SAELens refuses true)")
    for saelens_name in CONFIG_FIELDS.get(architecture, {}):
        node = doc.get(saelens_name)
        if not node.present:
            continue
        if saelens_name == "k":  # SAELens's BatchTopK k is a float: an integral one reads as an int
            k = node.number()
            if isinstance(k, float) and not k.is_integer():
                node.fail("a whole number of features")
            cfg["k"] = int(k)
        else:
            cfg[saelens_name] = [element.integer() for element in node.elements()]
    cfg["monosem"] = _our_metadata(doc)
    return cfg


def _our_metadata(doc: jsonfile.Node) -> tuple[str, dict[str, Any]] | None:
    """(architecture, config) that a folder written here records in metadata.monosem; None for a file without
    them (SAELens's own), whose metadata is free-form."""
    metadata = doc.get("metadata", None).value
    ours = doc["metadata"].get("monosem", None) if isinstance(metadata, dict) else None
    if ours is None or not isinstance(ours.value, dict):
        return None
    name = ours.get("architecture", None).string(null=True)
    if name not in saes.REGISTRY:
        return None
    return name, ours["config"].object()  # its fields are typed by _config


def _architecture(cfg: dict[str, Any], path: Path) -> tuple[Architecture, dict[str, Any] | None]:
    """Our architecture for a SAELens cfg, and our own config when the file's metadata records it."""
    name, tied = cfg["architecture"], cfg["apply_b_dec_to_input"]
    if name in _TRANSCODER_FORMS:
        return _transcoder_architecture(cfg)
    if cfg["monosem"] is not None:
        arch = saes.get(cfg["monosem"][0])
        if arch.saelens is not None and arch.saelens.architecture == name and arch.tied_bias == tied:
            return arch, cfg["monosem"][1]
    for arch in saes.REGISTRY.values():
        if arch.saelens is not None and name in arch.saelens.reads and arch.tied_bias == tied:
            return arch, None
    known = sorted({(r, a.tied_bias) for a in saes.REGISTRY.values() if a.saelens for r in a.saelens.reads})
    shown = ", ".join(f"{r} (apply_b_dec_to_input {str(t).lower()})" for r, t in known)
    shown += ", " + ", ".join(_TRANSCODER_FORMS)
    raise UserError(
        f"{path}: SAELens architecture {name!r} with apply_b_dec_to_input {str(tied).lower()} is not one we read; "
        f"expected one of {shown}"
    )


def _transcoder_architecture(cfg: dict[str, Any]) -> tuple[Architecture, dict[str, Any] | None]:
    """Our architecture for a SAELens transcoder: the one our metadata names where it is written as this SAELens
    architecture; otherwise the one that reads SAELens's SAE of the same activation, without a pre-encoder bias
    where there is a choice (relu-l1 rather than anthropic: a transcoder has none, and relu-l1's free decoder
    norms are SAELens's)."""
    family, _ = _TRANSCODER_FORMS[cfg["architecture"]]
    if cfg["monosem"] is not None:
        arch = saes.get(cfg["monosem"][0])
        if arch.saelens is not None and arch.saelens.architecture == family:
            return arch, cfg["monosem"][1]
    readers = [a for a in saes.REGISTRY.values() if a.saelens is not None and family in a.saelens.reads]
    return min(readers, key=lambda a: a.tied_bias), None


def _config(arch: Architecture, cfg: dict[str, Any], ours: dict[str, Any] | None, path: Path) -> Any:
    """Our config of `arch` from the file: its fields typed as the config dataclass's (config.section_from_dict,
    as a manifest's are), then its own validate against d_sae."""
    values = dict(ours or {})
    if ours is None:
        for saelens_name, field in CONFIG_FIELDS.get(cfg["architecture"], {}).items():
            if saelens_name in cfg:
                values[field] = cfg[saelens_name]
    where = "metadata.monosem.config" if ours is not None else "config"
    try:
        config = typed_section(arch.config, values, where)
        config.validate(cfg["d_sae"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: the {arch.name} config {values} is not valid here ({e})") from None
    return arch.resolve(config, cfg["d_sae"]) if arch.resolve is not None else config


def _dtype_name(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.")  # torch.float32 and numpy's float32 both read "float32"


def _float32(tensors: dict[str, Any], name: str, path: Path) -> np.ndarray:
    """tensors[name] (a torch tensor or, without torch, a numpy array: bridge.read_safetensors) as a float32
    array; one-line UserError naming the file and tensor otherwise."""
    value = tensors[name]
    torch = loaded_torch()
    if torch is not None and isinstance(value, torch.Tensor):
        # read_safetensors checked the header's shapes against the file; this is the check every tensor reader
        # makes (a view backed by its storage, within the memory budget) before its data is touched.
        bridge.check_tensor(value, f"{path}: tensor {name!r}")
        if value.dtype != torch.float32:
            raise UserError(f"{path}: tensor {name!r} has dtype {_dtype_name(value)}, expected float32")
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype != np.float32:
        raise UserError(f"{path}: tensor {name!r} has dtype {_dtype_name(array)}, expected float32")
    return array


def _tensor(tensors: dict[str, Any], name: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """tensors[name] as a checked float32 array of `shape`, finite (a threshold also >= 0)."""
    array = _float32(tensors, name, path)
    if tuple(array.shape) != shape:
        raise UserError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise UserError(f"{path}: tensor {name!r} contains NaN or infinite values")
    if name == "threshold" and array.size and array.min() < 0:  # a negative one would let negative features through
        raise UserError(f"{path}: tensor 'threshold' holds {array.min():g}, expected thresholds >= 0 (SAELens keeps "
                        "exp(log_threshold))")
    return array


def load_saelens(folder: Path | str, *, input_dim: int | None = LAYER2_WIDTH, output_dim: int | None = None) -> SAE:
    """The SAE or transcoder in a SAELens folder, as one of our architectures (input_dim: the width it must read;
    output_dim: the width a transcoder must predict; None: any)."""
    folder = Path(folder)
    cfg = _read_cfg(folder)
    cfg_path, weights_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    d_in, d_sae, d_out = cfg["d_in"], cfg["d_sae"], cfg.get("d_out")
    if input_dim is not None and d_in != input_dim:
        raise UserError(f"{cfg_path}: d_in is {d_in}, expected {input_dim}: the SAE must read the MLP's {input_dim}-wide activations")
    if output_dim is not None and d_out != output_dim:
        got = "absent (not a transcoder)" if d_out is None else d_out
        raise UserError(f"{cfg_path}: d_out is {got}, expected {output_dim}: the transcoder must predict {output_dim}-wide activations")
    arch, ours = _architecture(cfg, cfg_path)
    config = _config(arch, cfg, ours, cfg_path)
    read_sparsity(folder, d_sae)  # checked where present: a damaged one is refused here, not by a later reader
    tensors = bridge.read_safetensors(weights_path)
    skip = d_out is not None and _TRANSCODER_FORMS[cfg["architecture"]][1]

    # The shapes we hold, from the SAE of cfg.json's size, traced (jax.eval_shape) rather than initialised:
    # d_in and d_sae are claims of the file, and nothing is allocated until the tensors' shapes match them.
    if d_out is None:
        params, buffers = jax.eval_shape(lambda: arch.init(jax.random.key(0), d_in, d_sae, config))
    else:
        params, buffers = jax.eval_shape(lambda: arch.init(jax.random.key(0), d_in, d_sae, config, d_out))
    wanted = {TENSOR_NAMES[name] for name in (*params, *buffers)} | ({SKIP_TENSOR} if skip else set())
    if "threshold" in wanted and "threshold" not in tensors and TRAINING_THRESHOLD in tensors:
        tensors = dict(tensors)  # a SAELens training BatchTopK's file: its scalar running threshold,
        threshold = tensors.pop(TRAINING_THRESHOLD)  # which SAELens keeps in float64
        if _dtype_name(threshold) == "float64":
            threshold = threshold.astype(np.float32) if isinstance(threshold, np.ndarray) else threshold.float()
        tensors["threshold"] = threshold
    missing, extra = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
    if missing or extra:
        parts = [f"missing tensors {missing}"] * bool(missing) + [f"unexpected tensors {extra}"] * bool(extra)
        raise UserError(f"{weights_path}: {'; '.join(parts)} (expected exactly {sorted(wanted)} for {cfg['architecture']!r})")

    def value(name: str, like: jax.ShapeDtypeStruct) -> jax.Array:
        saelens_name = TENSOR_NAMES[name]
        shape = tuple(like.shape)
        stored = tuple(tensors[saelens_name].shape)
        if shape == () and stored in ((d_sae,), ()):  # one threshold for every feature, as SAELens spreads it
            array = _tensor(tensors, saelens_name, stored, weights_path)
            if array.size and not np.all(array == array.reshape(-1)[0]):
                raise UserError(f"{weights_path}: tensor {saelens_name!r} differs between features; the {arch.name} "
                                "architecture has one threshold for all of them")
            return jnp.asarray(array.reshape(-1)[0] if array.size else array)
        return jnp.asarray(_tensor(tensors, saelens_name, shape, weights_path))

    params = {k: value(k, v) for k, v in params.items()}
    if skip:
        params["w_skip"] = jnp.asarray(_tensor(tensors, SKIP_TENSOR, (d_out, d_in), weights_path).T)
    if cfg[RESCALE]:
        params = _fold_decoder_norms(params, weights_path)
    return SAE(arch, config, params, {k: value(k, v) for k, v in buffers.items()}, transcoder=d_out is not None)


def _fold_decoder_norms(p: saes.base.Params, path: Path) -> saes.base.Params:
    """The same SAE with unit decoder rows: (x W_enc + b_enc) * n selects and scales as SAELens's rescaled
    pre-activations do, and (f / n) W_dec = f (W_dec / n)."""
    norms = jnp.linalg.norm(p["w_dec"], axis=1)
    if not bool(jnp.all(norms > 0)):
        raise UserError(f"{path}: tensor 'W_dec' has an all-zero row, which {RESCALE} divides by")
    return p | {"w_enc": p["w_enc"] * norms, "b_enc": p["b_enc"] * norms, "w_dec": p["w_dec"] / norms[:, None]}


def load_sae(path: Path | str, *, input_dim: int | None = LAYER2_WIDTH) -> SAE:
    """An SAE from a `.pth` / `.safetensors` state_dict (bridge.load_sae) or a SAELens folder at `path`, its
    architecture told by its keys. input_dim: the width D of the activations it must read (None: any)."""
    if is_saelens_dir(path):
        return load_saelens(path, input_dim=input_dim)
    return bridge.load_sae(path, input_dim=input_dim)
