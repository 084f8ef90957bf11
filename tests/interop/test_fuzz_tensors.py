"""Structure-aware fuzzing of tensors (issue 24, item 8): strides, storage offsets, dtypes, shapes and layouts
of state_dict tensors and activation matrices, and the headers that declare them.

tests/cli/test_fuzz.py mutates bytes and whole tensors of files at the CLI; here the mutations are of what a
tensor declares about itself: a view's strides (a transpose, every other element of a larger storage, stride 0
as `expand` makes, overlapping `as_strided` layouts), its storage offset, a storage shrunk below the view, zero
sizes, huge declared sizes (10**12 rows backed by four bytes, meta and sparse tensors with no data), dtypes and
layouts (sparse, quantized); in `.safetensors` and `.npy` files, the header's shapes, dtypes and data offsets.
Each mutated state_dict goes to the MLP and SAE loaders, in memory and through a file, and each activation
matrix to both activation readers. The property: a one-line UserError naming the file (and no warning), or
the values the tensor holds, exactly; never another exception, and never more than seconds (a declared size is
never allocated). HYPOTHESIS_PROFILE=long draws many more examples.
"""

from __future__ import annotations

import json
import os
import struct
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from jax_impl import saes
from jax_impl.data.activations import open_activations
from jax_impl.errors import UserError
from jax_impl.interop import bridge
from jax_impl.models.mlp import InterpretabilityMLP

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
HUGE_SHAPES = [(10**12, 512), (2**40,), (10**6, 10**6), (1, 2**59), (2**29, 2**29, 4)]  # numel * 8 < 2**63
DTYPES = [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool,
          torch.complex64]


def budget(ci: int, long: int = 1000) -> settings:
    return settings(max_examples=long if LONG else ci, deadline=None)


# --------------------------------------------------------------------------- mutating one tensor


@st.composite
def tensor_mutation(draw, t: torch.Tensor) -> tuple[object, str]:
    """(a changed tensor or object, the kind of change). Views that keep t's values keep them exactly."""
    kind = draw(st.sampled_from(["transpose_view", "offset_view", "strided_view", "expand", "expand_huge", "overlap",
                                 "shrunk_storage", "zero_size", "meta_huge", "sparse", "sparse_huge", "quantized",
                                 "dtype", "dtype_view", "shape", "not_a_tensor"]))
    n = t.numel()
    flat = t.reshape(-1)
    if kind == "transpose_view" and t.ndim == 2:
        return t.T.contiguous().T, kind  # strides (1, rows): a column-major tensor
    if kind == "offset_view":
        before, after = draw(st.integers(1, 9)), draw(st.integers(0, 9))
        big = torch.cat([torch.full((before,), 7, dtype=t.dtype), flat, torch.zeros(after, dtype=t.dtype)])
        return big[before : before + n].view(t.shape), kind
    if kind == "strided_view" and n:
        step = draw(st.integers(2, 4))
        big = torch.zeros(n * step + step, dtype=t.dtype)
        big[1 : 1 + n * step : step] = flat
        strides = tuple(step * s for s in t.contiguous().stride())
        return big.as_strided(t.shape, strides, 1), kind
    if kind == "expand" and t.ndim and n > 1:
        return flat[:1].expand(t.shape), kind  # the right shape, one element of data
    if kind == "expand_huge":
        return torch.zeros(1, dtype=t.dtype).expand(draw(st.sampled_from(HUGE_SHAPES))), kind
    if kind == "overlap" and t.ndim and n > 1:
        storage = torch.randn(n + 8).to(t.dtype)
        strides = draw(st.sampled_from([(1,) * t.ndim, (0,) * t.ndim, tuple(range(t.ndim, 0, -1))]))
        return storage.as_strided(t.shape, strides), kind
    if kind == "shrunk_storage" and n:
        view = t.clone()
        view.untyped_storage().resize_(draw(st.integers(0, n * t.element_size() - 1)))
        return view, kind
    if kind == "zero_size":
        shape = draw(st.sampled_from([(0,), (0, *t.shape[1:]), (0, 10**12), (10**12, 0)]))
        return torch.zeros(1, dtype=t.dtype).expand(*shape) if 0 in shape[1:] else torch.zeros(shape, dtype=t.dtype), kind
    if kind == "meta_huge":
        return torch.empty(draw(st.sampled_from(HUGE_SHAPES[:3])), device="meta"), kind
    if kind in ("sparse", "sparse_huge") and t.ndim:
        shape = draw(st.sampled_from(HUGE_SHAPES[:3])) if kind == "sparse_huge" else t.shape
        with warnings.catch_warnings():  # torch's note that it skips invariant checks when building one
            warnings.simplefilter("ignore")
            return torch.sparse_coo_tensor(torch.zeros(len(shape), 0, dtype=torch.int64), torch.zeros(0, dtype=t.dtype),
                                           shape), kind
    if kind == "quantized" and t.is_floating_point():
        with warnings.catch_warnings():  # torch's deprecation of quantized dtypes, warned when making one
            warnings.simplefilter("ignore")
            return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8), kind
    if kind in ("dtype", "dtype_view"):
        dtype = draw(st.sampled_from(DTYPES))
        changed = (t != 0) if dtype == torch.bool else t.to(dtype)
        return (changed.T.contiguous().T if kind == "dtype_view" and t.ndim == 2 else changed), kind
    if kind == "shape":
        how = draw(st.sampled_from(["flat", "unsqueeze", "transpose", "scalar"]))
        return {"flat": flat.clone(), "unsqueeze": t.unsqueeze(0).clone(), "transpose": t.T.contiguous() if t.ndim == 2
                else t.clone(), "scalar": torch.tensor(0.0)}[how], kind
    if kind == "not_a_tensor":
        return draw(st.sampled_from([[0.0], 1.0, None, "w", (t,)])), kind
    return t.clone(), "unchanged"


def holds(value: object) -> np.ndarray | None:
    """The values a dense tensor holds (None where it holds no dense data to compare with)."""
    if not isinstance(value, torch.Tensor) or value.is_meta or value.layout != torch.strided or value.is_quantized:
        return None
    try:
        return value.contiguous().numpy()
    except (TypeError, RuntimeError):  # bfloat16 (no numpy dtype), a storage shrunk below the view
        return None


def refusal(e: UserError, path: object) -> None:
    message = str(e)
    assert "\n" not in message and message.startswith(f"{path}: "), message


def quick(start: float) -> None:
    assert time.monotonic() - start < 10, "a reader took seconds: something was allocated or scanned at its declared size"


def read_quietly(where: object, read, *args):
    """read(*args), or None for a one-line UserError that starts with `where` (the file, or "sd" for a state_dict
    given in memory); a warning fails the test (a real process would print it before the one line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = read(*args)
        except UserError as e:
            refusal(e, where)
            result = None
    assert not [w for w in caught if not issubclass(w.category, DeprecationWarning)], [str(w.message) for w in caught]
    return result


# --------------------------------------------------------------------------- state_dicts


def _mlp_sd() -> OrderedDict:
    return bridge.mlp_to_state_dict(InterpretabilityMLP(10, rngs=nnx.Rngs(0)))


def _sae_sd(name: str) -> OrderedDict:
    arch = saes.get(name)
    return bridge.sae_to_state_dict(saes.create(name, 6, 12, arch.config(k=3), key=jax.random.key(1)))


BASES = {"mlp": _mlp_sd, "topk": lambda: _sae_sd("topk"), "batchtopk": lambda: _sae_sd("batchtopk")}


def _load(model: str, source):
    """The loaded model's state_dict, from a file path or an in-memory state_dict."""
    if model == "mlp":
        loaded = bridge.load_mlp(source) if isinstance(source, Path) else bridge.mlp_from_state_dict(source, source="sd")
        return bridge.mlp_to_state_dict(loaded)
    if isinstance(source, Path):
        return bridge.sae_to_state_dict(bridge.load_sae(source, input_dim=None))
    return bridge.sae_to_state_dict(bridge.sae_from_state_dict(source, source="sd", input_dim=None))


def _check_values(loaded: OrderedDict, sd: OrderedDict) -> None:
    """A state_dict that loaded holds, key for key, exactly what the (mutated) one held."""
    assert list(loaded) == list(sd) or set(loaded) == set(sd)
    for key, value in sd.items():
        held = holds(value)
        assert held is not None, key  # the loader refuses what holds no dense data
        assert tuple(loaded[key].shape) == held.shape and np.array_equal(loaded[key].numpy(), held), key


@pytest.mark.parametrize("model", sorted(BASES))
@budget(12, long=600)
@given(data=st.data())
def test_fuzzed_state_dict_tensors(model, tmp_path_factory, data):
    original = BASES[model]()
    sd, keys = OrderedDict(original), list(original)
    for _ in range(data.draw(st.integers(1, 2), label="edits")):
        key = keys[data.draw(st.integers(0, len(keys) - 1), label="key")]
        # from the original tensor: a second edit of a shrunk storage would read beyond it (a segfault, in torch)
        sd[key], kind = data.draw(tensor_mutation(original[key]), label="mutation")
        event(f"{model}: {kind}")
    start = time.monotonic()
    loaded = read_quietly("sd", _load, model, sd)
    quick(start)
    if loaded is not None:
        _check_values(loaded, sd)
    path = tmp_path_factory.mktemp("sd") / "model.pth"
    try:
        torch.save(sd, path)
    except (RuntimeError, TypeError, ValueError, AttributeError):
        event("torch.save refuses it")
        return
    start = time.monotonic()
    from_file = read_quietly(path, _load, model, path)
    quick(start)
    event(f"file {'loaded' if from_file is not None else 'refused'}")
    if from_file is not None:
        _check_values(from_file, bridge.torch_load(path))


# --------------------------------------------------------------------------- activation matrices

ACTS = np.random.default_rng(4).standard_normal((12, 6)).astype(np.float32)


def _activation_readers(path: Path) -> list[tuple[str, np.ndarray | None]]:
    """Each reader's (name, rows) for `path`, None where it refused with one line."""
    out = []
    source = read_quietly(path, open_activations, path)
    out.append(("open_activations", None if source is None else source.rows(0, source.n_rows)))
    return out


@budget(20, long=800)
@given(data=st.data())
def test_fuzzed_activation_tensors(tmp_path_factory, data):
    """A .pt holding a mutated (12, 6) matrix: refused with one line, or its values read exactly."""
    value, kind = data.draw(tensor_mutation(torch.from_numpy(ACTS.copy())), label="mutation")
    event(kind)
    path = tmp_path_factory.mktemp("acts") / "acts.pt"
    try:
        torch.save(value, path)
    except (RuntimeError, TypeError, ValueError, AttributeError):
        event("torch.save refuses it")
        return
    start = time.monotonic()
    results = _activation_readers(path)
    quick(start)
    for reader, rows in results:
        event(f"{reader} {'read' if rows is not None else 'refused'}")
        if rows is not None:
            held = holds(bridge.torch_load(path))
            assert held is not None and held.dtype == np.float32 and np.array_equal(rows, held), reader


# --------------------------------------------------------------------------- headers: .safetensors and .npy


def _split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


@st.composite
def header_mutation(draw, header: dict) -> tuple[object, str]:
    """An edited safetensors header: a tensor's shape, dtype or data offsets, or the header's structure."""
    header = json.loads(json.dumps(header))
    names = [k for k in header if k != "__metadata__"]
    entry = header[names[draw(st.integers(0, len(names) - 1))]]
    kind = draw(st.sampled_from(["shape", "dtype", "offsets", "structure"]))
    shape, (start, end) = entry["shape"], entry["data_offsets"]
    if kind == "shape":
        how = draw(st.sampled_from(["huge", "double", "swap", "drop_dim", "add_dim", "negative", "float", "string",
                                    "zero", "same_bytes"]))
        entry["shape"] = {
            "huge": [10**12, *shape[1:]], "double": [2 * shape[0], *shape[1:]] if shape else [2], "swap": shape[::-1],
            "drop_dim": shape[1:], "add_dim": [1, *shape], "negative": [-1, *shape[1:]], "float": [float(s) for s in shape],
            "string": [str(s) for s in shape], "zero": [0, *shape[1:]],
            "same_bytes": [shape[0] // 2, shape[1] * 2] if len(shape) == 2 and shape[0] % 2 == 0 else shape,
        }[how]
        return header, f"shape {how}"
    if kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(["F64", "F16", "BF16", "I32", "U8", "BOOL", "F8_E4M3", "f32", "Q4", "", 4, None]))
        return header, f"dtype {entry['dtype']}"
    if kind == "offsets":
        how = draw(st.sampled_from(["shift", "beyond", "reversed", "negative", "float", "short", "long", "overlap_next"]))
        entry["data_offsets"] = {
            "shift": [start + 4, end + 4], "beyond": [start, end + 10**12], "reversed": [end, start],
            "negative": [-4, end - 4], "float": [float(start), float(end)], "short": [start], "long": [start, end, end],
            "overlap_next": [max(0, start - 4), end - 4],
        }[how]
        return header, f"offsets {how}"
    how = draw(st.sampled_from(["entry_not_object", "drop_metadata", "metadata_not_strings", "nested", "extra_key"]))
    if how == "entry_not_object":
        header[names[0]] = [1, 2]
    elif how == "drop_metadata":
        header.pop("__metadata__", None)
    elif how == "metadata_not_strings":
        header["__metadata__"] = {"format": 1}
    elif how == "nested":
        return "[" * 3000 + "]" * 3000, "structure nested"
    else:
        entry["extra"] = 1
    return header, f"structure {how}"


def _write_header(path: Path, header: object, data: bytes, length_delta: int = 0) -> None:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + data)


def _reference(path: Path) -> dict | None:
    """safetensors' own reading of the file (the oracle), or None where it cannot read it."""
    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001 - SafetensorError and friends
        return None


@pytest.mark.parametrize("what", ["mlp", "activations"])
@budget(12, long=600)
@given(data=st.data())
def test_fuzzed_safetensors_headers(what, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("st")
    good = folder / "good.safetensors"
    tensors = dict(_mlp_sd()) if what == "mlp" else {"activations": torch.from_numpy(ACTS.copy())}
    save_file(tensors, str(good), metadata={"format": "pt"})
    header, payload = _split_safetensors(good.read_bytes())
    mutated, kind = data.draw(header_mutation(header), label="header")
    length_delta = data.draw(st.sampled_from([0, 0, 0, 1, -1, 10**6]), label="length delta")
    event(kind if not length_delta else f"header length {length_delta:+d}")
    path = folder / "x.safetensors"
    _write_header(path, mutated, payload, length_delta)
    start = time.monotonic()
    if what == "mlp":
        results = [("load_mlp", read_quietly(path, bridge.load_mlp, path))]
    else:
        results = _activation_readers(path)
    quick(start)
    for reader, result in results:
        event(f"{reader} {'read' if result is not None else 'refused'}")
        if result is None:
            continue
        reference = _reference(path)
        assert reference is not None, (kind, reader)  # we read only what safetensors itself reads
        if what == "mlp":
            for key, value in bridge.mlp_to_state_dict(result).items():
                assert np.array_equal(value.numpy(), reference[key].numpy()), key
        else:
            assert np.array_equal(result, reference["activations"].numpy()), reader


@st.composite
def npy_header_mutation(draw) -> tuple[str, str]:
    """A .npy header dict for the (12, 6) float32 payload: shape, dtype or order edited."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (12, 6)}
    kind = draw(st.sampled_from(["shape", "descr", "order", "text"]))
    if kind == "shape":
        header["shape"] = draw(st.sampled_from([(2**32, 2**32), (2**62, 2**62), (10**12, 6), (6, 12), (72,), (12, 6, 1),
                                                (13, 6), (0, 6), (12, 0), (-1, 6), (24, 6), (12, 5)]))
    elif kind == "descr":
        header["descr"] = draw(st.sampled_from([">f4", "<f8", "<f2", "<i4", "|b1", "|O", "<c8", "V4", "<f4" * 2]))
    elif kind == "order":
        header["fortran_order"] = True
    else:
        return draw(st.sampled_from(["{'descr': '<f4', 'fortran_order': False, 'shape': (12, 6)", "{}", "[1, 2]",
                                     "{'descr': '<f4', 'fortran_order': False, 'shape': (1e3, 6), }",
                                     "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 200 + ")}"])), "text"
    return repr(header), f"{kind} {header[{'shape': 'shape', 'descr': 'descr', 'order': 'fortran_order'}[kind]]}"


@budget(15, long=600)
@given(data=st.data())
def test_fuzzed_npy_headers(tmp_path_factory, data):
    """A .npy header claiming what its payload is not: one line (never numpy's overflow warnings), or the rows."""
    text, kind = data.draw(npy_header_mutation(), label="header")
    version = data.draw(st.sampled_from([1, 2, 3]), label="version")
    event(f"{kind} (v{version})")
    length_bytes = 2 if version == 1 else 4
    body = text.encode("latin1") + b" "
    pad = -(6 + 2 + length_bytes + len(body) + 1) % 64
    body += b" " * pad + b"\n"
    path = tmp_path_factory.mktemp("npy") / "acts.npy"
    path.write_bytes(b"\x93NUMPY" + bytes([version, 0]) + len(body).to_bytes(length_bytes, "little") + body + ACTS.tobytes())
    start = time.monotonic()
    ((_, rows),) = _activation_readers(path)
    quick(start)
    event("read" if rows is not None else "refused")
    if rows is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            reference = np.load(path, allow_pickle=False)
        assert np.array_equal(rows, reference.astype(np.float32)) and reference.dtype.itemsize == 4
