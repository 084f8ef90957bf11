"""PyTorch <-> JAX: the one place that knows the upstream state_dict keys.

Each torch key maps to (nnx module path, variable name, transpose?). Torch's Linear stores weight as
(out, in) and flax's kernel is (in, out); everything else is copied as is. Shapes and dtypes are checked
in both directions and every error names the key. `.pth` / `.pt` files are read with
`torch.load(weights_only=True)`, which refuses to unpickle anything but tensors and plain containers.

Every file saved here also gets a `.safetensors` twin beside it (same name, same keys and tensors), which
loads with no unpickler at all; every loader takes either, with the same checks and messages.

A file's tensors declare their sizes, and a 4 KB file can declare terabytes: a view of a few bytes of storage
with stride 0 (`torch.zeros(1).expand(10**12, 512)`), or a `.safetensors` header whose shapes the file does
not hold. Every reader checks the declared sizes against the storage and against `file_budget()` before
anything is allocated or copied, in one place each: `check_tensor` for a loaded tensor (stride 0, overlapping
or interleaved views, views beyond their storage), `torch_load` for the sizes of a torch zip archive's records
(and check_tensor on all it returns), `safetensors_header` for a `.safetensors` header. The state_dict readers
also refuse sparse and meta tensors, and empty weights, before any shape sizes a model.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import pickle
import shutil
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from jax_impl import saes
from jax_impl.checks import file_budget, format_bytes, loaded_torch, require_torch
from jax_impl.errors import UserError
from jax_impl.files.atomic import atomic_path
from jax_impl.models.mlp import LAYER2_WIDTH, InterpretabilityMLP
from jax_impl.saes import SAE

if TYPE_CHECKING:  # torch is imported where a torch file or tensor is handled (checks.require_torch)
    import torch

# torch key -> (module attribute path, variable name, is a Linear weight to transpose)
# (in upstream's order: its nn.ModuleDict is input, bn1, hidden1, bn2, hidden2, output)
MLP_KEY_MAP: dict[str, tuple[str, str, bool]] = {}
for _layer in ("input", "bn1", "hidden1", "bn2", "hidden2", "output"):
    if _layer.startswith("bn"):
        for _name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            MLP_KEY_MAP[f"layers.{_layer}.{_name}"] = (_layer, _name, False)
    else:
        MLP_KEY_MAP[f"layers.{_layer}.weight"] = (_layer, "kernel", True)
        MLP_KEY_MAP[f"layers.{_layer}.bias"] = (_layer, "bias", False)

# num_batches_tracked is int64 in torch; JAX (without x64) keeps it as int32.
_INT_KEYS = {k for k in MLP_KEY_MAP if k.endswith("num_batches_tracked")}


def _numpy_state_dict(model: nnx.Module, key_map: Mapping[str, tuple[str, str, bool]]) -> OrderedDict[str, np.ndarray]:
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, (module, name, transpose) in key_map.items():
        value = np.asarray(getattr(getattr(model, module), name)[...])
        if transpose:
            value = value.T
        dtype = np.int64 if key in _INT_KEYS else np.float32
        out[key] = np.array(value, dtype=dtype, order="C")  # a writable copy
    return out


def _as_torch(state: Mapping[str, np.ndarray]) -> OrderedDict[str, torch.Tensor]:
    torch = require_torch("a torch state_dict")
    return OrderedDict((k, torch.from_numpy(v)) for k, v in state.items())


def _check_keys(sd: Mapping[str, object], key_map: Mapping[str, object], source: str) -> None:
    missing = [k for k in key_map if k not in sd]
    extra = [k for k in sd if k not in key_map]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if extra:
            parts.append(f"unexpected keys {extra}")
        raise UserError(f"{source}: {'; '.join(parts)} (expected exactly {list(key_map)})")


# --------------------------------------------------------------------------- declared sizes


def _dense_kind(value: torch.Tensor) -> str | None:
    """None for a dense tensor with data; else what it is ("sparse_coo", "meta", ...) for a message."""
    torch = loaded_torch()  # imported: `value` is one of its tensors
    if value.is_meta:
        return "meta"
    if value.layout != torch.strided:
        return str(value.layout).removeprefix("torch.")
    return None


def check_tensor(value: torch.Tensor, where: str) -> None:
    """Refuse a dense tensor whose declared sizes its storage does not back, or that exceeds file_budget().

    Reads metadata only (shape, strides, storage offset, storage size), never the data: a view whose elements
    overlap (stride 0, as `expand` makes, or any as_strided layout where two indices reach one element), one
    that reaches beyond its storage, and one claiming more than the memory budget are one-line UserErrors that
    begin with `where` ("PATH: key 'x'"). A non-contiguous view that does not overlap (a transpose, a slice)
    holds real values and passes. Sparse, meta and other non-strided tensors are left to the caller, whose
    message says what it expected (they are refused before their shape is used for anything).
    """
    if _dense_kind(value) is not None:
        return
    shape, strides = tuple(value.shape), tuple(value.stride())
    itemsize = value.element_size()
    claimed = math.prod(shape) * itemsize  # Python ints: no overflow, however large the claim
    if claimed == 0:
        return  # nothing to read, whatever the strides say
    storage = value.untyped_storage().nbytes()
    offset = value.storage_offset()
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))  # the furthest element, in items
    layout = f"shape {shape} with strides {strides}"
    if offset < 0 or any(s < 0 for s in strides) or (last + 1) * itemsize > storage:
        raise UserError(
            f"{where} declares {layout} at storage offset {offset}, reaching beyond its storage of {storage} bytes; "
            "expected a tensor backed by its data"
        )
    # Dimensions of size > 1 by increasing stride: each must step past all that the smaller ones reach, or
    # two indices land on one element (stride 0 is the extreme case). Interleaved layouts that happen not to
    # collide are refused too: no writer of real weights makes them.
    reach = 0
    for n, s in sorted(((n, s) for n, s in zip(shape, strides) if n > 1), key=lambda d: d[1]):
        if s <= reach:
            raise UserError(
                f"{where} is a view of {layout}: its {math.prod(shape)} elements ({format_bytes(claimed)}) overlap in "
                f"{format_bytes(storage)} of storage (an expanded or as_strided tensor); expected a tensor that holds its "
                "own data (save t.contiguous())"
            )
        reach += (n - 1) * s
    if claimed > file_budget():
        raise UserError(f"{where} declares {shape} {str(value.dtype).removeprefix('torch.')}, {format_bytes(claimed)}, more "
                        f"than the memory budget of {format_bytes(file_budget())} (half the physical memory)")


def _check_dense(value: torch.Tensor, key: str, source: str) -> None:
    """A state_dict entry: dense, with data, backed by its storage (check_tensor); one line naming the key."""
    kind = _dense_kind(value)
    if kind is not None:
        raise UserError(f"{source}: key {key!r} is a {kind} tensor, expected a dense tensor with data")
    check_tensor(value, f"{source}: key {key!r}")


def _check_state_dict(sd: Mapping[str, object], source: str) -> None:
    """Every tensor of `sd` checked (_check_dense) before any of its shapes sizes a model: a template built
    from a shape the file does not back would allocate what the file only claims."""
    for key, value in sd.items():
        if _is_tensor(value):
            _check_dense(value, str(key), source)


def _is_tensor(value: object) -> bool:
    """Whether `value` is a torch.Tensor (False, without importing torch, where nothing has imported it)."""
    torch = loaded_torch()
    return torch is not None and isinstance(value, torch.Tensor)


def _as_numpy(value: object, key: str, source: str) -> np.ndarray:
    if _is_tensor(value):
        _check_dense(value, key, source)
        try:
            return value.detach().cpu().numpy()
        except TypeError:  # bfloat16, quantized, ...: no numpy dtype
            expected = "int64" if key in _INT_KEYS else "float32"
            raise UserError(f"{source}: key {key!r} has dtype {str(value.dtype).removeprefix('torch.')}, expected {expected}") from None
    if isinstance(value, np.ndarray):
        return value
    raise UserError(f"{source}: key {key!r} holds a {type(value).__name__}, expected a tensor")


def _load_into(
    template: nnx.Module, sd: Mapping[str, object], key_map: Mapping[str, tuple[str, str, bool]], source: str
) -> nnx.Module:
    """Copy `sd` into `template` after checking keys, shapes (torch layout), dtypes and finiteness."""
    _check_keys(sd, key_map, source)
    for key, (module, name, transpose) in key_map.items():
        variable = getattr(getattr(template, module), name)
        expected_shape = tuple(variable.shape[::-1] if transpose else variable.shape)
        value = _as_numpy(sd[key], key, source)
        if value.shape != expected_shape:
            raise UserError(f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {expected_shape}")
        if key in _INT_KEYS:
            if value.dtype.kind not in "iu":
                raise UserError(f"{source}: key {key!r} has dtype {value.dtype}, expected int64")
            variable[...] = jnp.asarray(value, jnp.int32)
            continue
        if value.dtype != np.float32:
            raise UserError(f"{source}: key {key!r} has dtype {value.dtype}, expected float32")
        if not np.all(np.isfinite(value)):
            raise UserError(f"{source}: key {key!r} contains NaN or infinite values")
        variable[...] = jnp.asarray(value.T if transpose else value)
    return template


def mlp_to_state_dict(model: InterpretabilityMLP) -> OrderedDict[str, torch.Tensor]:
    """The upstream InterpretabilityMLP state_dict (load_state_dict(strict=True) works on it)."""
    return _as_torch(_numpy_state_dict(model, MLP_KEY_MAP))


def sae_to_state_dict(model: SAE) -> OrderedDict[str, torch.Tensor]:
    """The SAE's torch state_dict, in its architecture's key order (monosem_torch_ref.saes loads it strictly)."""
    return _as_torch(saes.base.numpy_state(model))


def _linear_in_out(sd: Mapping[str, object], key: str, source: str) -> tuple[int, int]:
    if key not in sd:
        raise UserError(f"{source}: missing key {key!r}")
    shape = tuple(getattr(sd[key], "shape", ()))
    if len(shape) != 2:
        raise UserError(f"{source}: key {key!r} has shape {shape}, expected a 2-D (out, in) weight")
    if 0 in shape:
        # An empty weight holds nothing, so its other size is backed by nothing either: (0, 10**12) would
        # size a model of 10**12 inputs.
        raise UserError(f"{source}: key {key!r} has shape {shape}, expected a 2-D (out, in) weight of at least one "
                        "row and one column")
    return shape[1], shape[0]


def mlp_from_state_dict(sd: Mapping[str, object], *, source: str = "state_dict") -> InterpretabilityMLP:
    """Build an eval-mode InterpretabilityMLP from upstream-keyed tensors; the input width is read off the file."""
    _check_state_dict(sd, source)
    input_dim, _ = _linear_in_out(sd, "layers.input.weight", source)
    model = _load_into(InterpretabilityMLP(input_dim, rngs=nnx.Rngs(0)), sd, MLP_KEY_MAP, source)
    model.eval()
    return model


def _known_key_sets() -> str:
    return "; ".join(f"{a.name}: {list(a.config_keys())}" for a in saes.REGISTRY.values())


def sae_from_state_dict(sd: Mapping[str, object], *, source: str = "state_dict", input_dim: int | None = LAYER2_WIDTH) -> SAE:
    """An SAE of any architecture of the family, told apart by its exact key set (saes.architecture_of_keys).

    Every tensor's shape (torch layout), dtype and finiteness is checked against the architecture's key map;
    the dictionary size and width are read off `encoder.weight`, which must read `input_dim` features
    (None accepts any width). Config keys (`k`, `group_ends`) restore the architecture's config.
    A transcoder (saes.base.numpy_state: the key TRANSCODER_KEY, int64 1, and a skip transcoder's SKIP_KEY
    (D_out, D_in)) is built as one, its output width read off `decoder.weight` (D_out, F).
    """
    arch = saes.architecture_of_keys(sd)
    if arch is None:
        raise UserError(f"{source}: keys {sorted(sd)} are not those of any SAE architecture ({_known_key_sets()})")
    _check_state_dict(sd, source)
    width, dict_size = _linear_in_out(sd, "encoder.weight", source)
    if input_dim is not None and width != input_dim:
        raise UserError(
            f"{source}: key 'encoder.weight' has shape ({dict_size}, {width}), expected ({dict_size}, {input_dim}): "
            f"the SAE must read the MLP's {input_dim}-wide activations"
        )
    transcoder = _transcoder_marker(sd, source)
    if saes.base.SKIP_KEY in sd and not transcoder:
        raise UserError(f"{source}: key {saes.base.SKIP_KEY!r} (a transcoder's skip connection) without the key "
                        f"{saes.base.TRANSCODER_KEY!r}: expected both or neither")
    # A template for the tensors' shapes only: the default config, unvalidated (its k may exceed dict_size);
    # the file's own config is restored and validated below.
    if transcoder:
        dict_in, output_dim = _linear_in_out(sd, "decoder.weight", source)
        if dict_in != dict_size:
            raise UserError(f"{source}: key 'decoder.weight' has shape ({output_dim}, {dict_in}), expected "
                            f"({output_dim}, {dict_size}): one column per feature of 'encoder.weight'")
        template_params, template_buffers = arch.init(jax.random.key(0), width, dict_size, arch.config(), output_dim)
        if saes.base.SKIP_KEY in sd:
            template_params = template_params | {"w_skip": jnp.zeros((width, output_dim), jnp.float32)}
        template = SAE(arch, arch.config(), template_params, template_buffers, transcoder=True)
    else:
        template = SAE(arch, arch.config(), *arch.init(jax.random.key(0), width, dict_size, arch.config()))
    expected = saes.base.numpy_state(template)
    params, buffers, config_values = template.params(), template.buffers(), {}
    for entry in arch.key_map:
        value = _as_numpy(sd[entry.torch_key], entry.torch_key, source)
        want = expected[entry.torch_key]
        if entry.source == "config":
            if value.dtype.kind not in "iu" or value.ndim != want.ndim:
                raise UserError(f"{source}: key {entry.torch_key!r} must be an integer tensor of rank {want.ndim}, "
                                f"got {value.dtype} {value.shape}")
            config_values[entry.name] = value.tolist()
            continue
        if value.shape != want.shape:
            raise UserError(f"{source}: key {entry.torch_key!r} has shape {tuple(value.shape)}, expected {want.shape}")
        if value.dtype != np.float32:
            raise UserError(f"{source}: key {entry.torch_key!r} has dtype {value.dtype}, expected float32")
        if not np.all(np.isfinite(value)):
            raise UserError(f"{source}: key {entry.torch_key!r} contains NaN or infinite values")
        (params if entry.source == "param" else buffers)[entry.name] = jnp.asarray(value.T if entry.transpose else value)
    if template.skip:
        key = saes.base.SKIP_KEY
        value = _as_numpy(sd[key], key, source)
        if value.shape != expected[key].shape:
            raise UserError(f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {expected[key].shape}")
        if value.dtype != np.float32:
            raise UserError(f"{source}: key {key!r} has dtype {value.dtype}, expected float32")
        if not np.all(np.isfinite(value)):
            raise UserError(f"{source}: key {key!r} contains NaN or infinite values")
        params["w_skip"] = jnp.asarray(value.T)
    cfg = arch.config_from_file(config_values)
    try:
        cfg.validate(dict_size)
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None
    return SAE(arch, cfg, params, buffers, transcoder=transcoder)


def _transcoder_marker(sd: Mapping[str, object], source: str) -> bool:
    """Whether `sd` is a transcoder's: its TRANSCODER_KEY, where present, must be the integer scalar 1."""
    key = saes.base.TRANSCODER_KEY
    if key not in sd:
        return False
    value = _as_numpy(sd[key], key, source)
    if value.shape != () or value.dtype.kind not in "iu" or int(value) != 1:
        raise UserError(f"{source}: key {key!r} is {value.dtype} {tuple(value.shape)}"
                        f"{f' = {value.item()}' if value.size == 1 else ''}, expected the int64 scalar 1 "
                        "(a transcoder's marker)")
    return True


def torch_load(path: Path | str) -> object:
    """torch.load that cannot execute code from the file, with one-line errors for the usual defects.

    Sizes are checked before and after: the archive's records (torch allocates each storage at its record's
    size, and a compressed record can inflate a thousandfold) against file_budget(), then every tensor in
    what was loaded against its storage (check_tensor), so a reader never sizes anything from a view that
    claims more than the file holds.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    torch = require_torch(f"{path}: reading a torch file")
    _check_record_sizes(path)
    try:
        # A hostile or damaged file makes torch warn (an unusual pickle protocol, storages) before it fails:
        # those lines would break the one-line error, and on success they say nothing about the tensors.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(
            f"{path}: refused to load: the file contains objects other than tensors and plain containers, "
            f"which could run code when unpickled ({first_line[:160]})"
        ) from None
    except Exception as e:  # noqa: BLE001 - garbage input makes the unpickler fail in many ways
        raise UserError(
            f"{path}: not a readable torch file (truncated or another format: {e.__class__.__name__} {str(e).strip()[:100]})"
        ) from None
    _check_loaded_tensors(loaded, path)
    return loaded


def _check_record_sizes(path: Path) -> None:
    """Refuse a torch zip archive whose records' declared (uncompressed) sizes exceed file_budget()."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except Exception:  # noqa: BLE001 - not a zip (torch's legacy format, garbage): torch.load judges it
        return
    if declared > file_budget():
        raise UserError(f"{path}: its records declare {format_bytes(declared)} of tensor data, more than the memory budget of "
                        f"{format_bytes(file_budget())} (half the physical memory); refused before reading")


def _check_loaded_tensors(loaded: object, path: Path) -> None:
    """check_tensor on every tensor in what torch.load returned (nested mappings, lists and tuples), in file
    order; iterative, so a deeply nested container is no recursion."""
    pending: list[tuple[object, str | None]] = [(loaded, None)]
    while pending:
        value, name = pending.pop()
        if _is_tensor(value):
            check_tensor(value, f"{path}: key {name!r}" if name is not None else f"{path}: the tensor")
        elif isinstance(value, Mapping):
            items = [(v, f"{name}.{k}" if name is not None else str(k)) for k, v in value.items()]
            pending.extend(reversed(items))
        elif isinstance(value, (list, tuple)):
            items = [(v, f"{name or ''}[{i}]") for i, v in enumerate(value)]
            pending.extend(reversed(items))


SAFETENSORS = ".safetensors"
ACTIVATIONS_KEY = "activations"  # the one tensor of an activations .safetensors file


def safetensors_twin(path: Path | str) -> Path:
    """The `.safetensors` file written beside a `.pth` / `.pt` (same stem)."""
    return Path(path).with_suffix(SAFETENSORS)


# safetensors' dtype codes and their item sizes in bytes (the sub-byte float formats are not listed: a header
# naming one has its offsets checked, and safetensors checks the rest).
SAFETENSORS_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
_SAFETENSORS_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def _is_count(value: object) -> bool:
    """A JSON value that is a size or an offset: a non-negative integer (not a boolean, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def safetensors_header(path: Path | str, *, in_memory: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's (dtype code, shape) from a `.safetensors` header, checked before any data is read.

    The header is JSON after an 8-byte length; each tensor declares a dtype, a shape and the [start, end)
    byte range of its data. Checked: the header fits the file, each entry is well-formed, each range lies in
    the file's data and spans exactly shape x item size bytes (a shape the file does not hold is refused
    here, naming the key), and, with in_memory=True (a file read whole), that the data fits file_budget().
    Any defect is a one-line UserError, "PATH: not a readable .safetensors file (...)".
    """
    path = Path(path)

    def refuse(problem: str) -> UserError:
        return UserError(f"{path}: not a readable .safetensors file ({problem})")

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise refuse(f"{size} bytes, shorter than the 8-byte header length")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(size - 8, _SAFETENSORS_MAX_HEADER):
                raise refuse(f"its header claims {header_len} bytes, but the file has {size}")
            raw = fh.read(header_len)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: thousands of nested brackets
        raise refuse(f"its header is not JSON: {str(e)[:80] or e.__class__.__name__}") from None
    if not isinstance(header, dict):
        raise refuse(f"its header is a JSON {type(header).__name__}, expected an object")
    data_size = size - 8 - header_len
    tensors, total = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise refuse(f"tensor {name!r} is described by {str(entry)[:40]}, expected an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or not isinstance(shape, list) or not all(map(_is_count, shape)):
            raise refuse(f"tensor {name!r} has dtype {str(dtype)[:20]} and shape {str(shape)[:40]}, expected a dtype code "
                         "and a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
                and offsets[0] <= offsets[1] <= data_size):
            raise refuse(f"tensor {name!r} has data offsets {str(offsets)[:40]}, expected [start, end] within the "
                         f"file's {data_size} bytes of data")
        span = offsets[1] - offsets[0]
        if dtype in SAFETENSORS_ITEMSIZE:
            claimed = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
            if claimed != span:
                raise refuse(f"tensor {name!r} declares shape {tuple(shape)} of {dtype}, {format_bytes(claimed)}, but its data "
                             f"offsets hold {format_bytes(span)}")
        total += span
        tensors[name] = (dtype, tuple(shape))
    if in_memory and total > file_budget():
        raise UserError(f"{path}: its tensors take {format_bytes(total)}, more than the memory budget of "
                        f"{format_bytes(file_budget())} (half the physical memory); refused before reading")
    return tensors


def read_safetensors(path: Path | str) -> dict[str, torch.Tensor] | dict[str, np.ndarray]:
    """All tensors of a `.safetensors` file, by name, read whole after safetensors_header's checks; one-line
    UserError for a missing or unreadable file. torch tensors where torch is installed (they carry every dtype,
    bfloat16 included, into the readers' dtype messages); numpy arrays without it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    safetensors_header(path, in_memory=True)
    try:
        require_torch(str(path))
    except UserError:
        reader = safetensors.numpy.load_file
    else:
        from safetensors.torch import load_file  # safetensors' torch half imports torch: only here

        reader = functools.partial(load_file, device="cpu")
    try:
        return reader(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ... for garbage or truncated files
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path}: not a readable .safetensors file (truncated or another format: {detail})") from None


def write_safetensors(tensors: Mapping[str, torch.Tensor | np.ndarray], path: Path | str) -> None:
    """Write `tensors` (torch tensors or numpy arrays: the same bytes either way) as `.safetensors`, atomically.
    Deterministic: the header lists names in sorted order.

    The bytes are made in memory and written into atomic_path's temporary: safetensors' save_file would write
    a file of its own (mode 0600, whatever the umask) and rename it over ours."""
    metadata = {"format": "pt"}  # "pt": HF's loaders expect it
    if any(_is_tensor(v) for v in tensors.values()):
        from safetensors.torch import save  # torch's dtypes (bfloat16, ...) have no numpy form

        data = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    else:
        # np.asarray, not np.ascontiguousarray: that makes a 0-d array (a TopK's k) 1-d
        data = safetensors.numpy.save({k: np.asarray(v, order="C") for k, v in tensors.items()}, metadata=metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _load_state_dict_file(path: Path | str) -> Mapping[str, object]:
    if Path(path).suffix == SAFETENSORS:
        return read_safetensors(path)
    sd = torch_load(path)
    if not isinstance(sd, Mapping):
        raise UserError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(sd).__name__}")
    return sd


def load_mlp(path: Path | str) -> InterpretabilityMLP:
    """The MLP of a `.pth` or `.safetensors` state_dict with the upstream keys (read with weights_only=True);
    UserError naming the file and key when it is not one."""
    return mlp_from_state_dict(_load_state_dict_file(path), source=str(path))


def load_sae(path: Path | str, input_dim: int | None = LAYER2_WIDTH) -> SAE:
    return sae_from_state_dict(_load_state_dict_file(path), source=str(path), input_dim=input_dim)


def _save(obj: object, path: Path | str) -> None:
    torch = require_torch(f"{path}: writing a torch file")
    # keep_name: torch.save names the zip's records after the file it writes ("perfect_mlp/data.pkl", as in
    # upstream's files); written under a random temporary name, that name would make every run's bytes differ.
    with atomic_path(path, keep_name=True) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # torch's C++ zip writer reports a failed write (ENOSPC, EIO) as a RuntimeError ("file write
            # failed", "basic_ios::clear: iostream error"): an OSError naming the artifact, like any other write.
            code = errno.ENOSPC if shutil.disk_usage(Path(path).parent).free < 1 << 20 else errno.EIO
            raise OSError(code, f"{os.strerror(code)} ({str(e).splitlines()[0]})", str(path)) from None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _save_state(state: OrderedDict[str, np.ndarray], path: Path | str, log: Callable[[str], object]) -> None:
    """`state` at `path` (.pth) where torch is installed, and always at its `.safetensors` twin; without torch one
    line to `log` says the .pth was left out."""
    try:
        require_torch(Path(path).name)
    except UserError:
        # Named by file name: `path` may lie in an artifact set's staging folder.
        log(f"{Path(path).name} not written: PyTorch is not installed (pip install torch); "
            f"{safetensors_twin(path).name} holds the same tensors")
    else:
        _save(_as_torch(state), path)
    write_safetensors(state, safetensors_twin(path))


def save_mlp(model: InterpretabilityMLP, path: Path | str, *, log: Callable[[str], object] = _stderr) -> None:
    """The MLP's state_dict at `path` (.pth; where torch is installed) and at its `.safetensors` twin."""
    _save_state(_numpy_state_dict(model, MLP_KEY_MAP), path, log)


def save_sae(model: SAE, path: Path | str, *, log: Callable[[str], object] = _stderr) -> None:
    """The SAE's state_dict at `path` (.pth; where torch is installed) and at its `.safetensors` twin."""
    _save_state(OrderedDict(saes.base.numpy_state(model)), path, log)


def save_activations(activations: np.ndarray, path: Path | str) -> None:
    """One float32 tensor (N, 512), as upstream's mlp_activations.pt, and its `.safetensors` twin (one tensor
    named "activations")."""
    array = np.array(activations, dtype=np.float32, order="C")
    _save(require_torch(f"{path}: writing a torch file").from_numpy(array), path)
    write_safetensors({ACTIVATIONS_KEY: array}, safetensors_twin(path))
