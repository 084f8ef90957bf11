"""Tensors whose declared sizes their files do not hold (issue 24, items 4 and 7).

A 4 KB state_dict can declare a (10**12, 512) tensor: a stride-0 view (`torch.zeros(1).expand(...)`) of four
bytes of storage, a `.safetensors` header naming a shape its data offsets do not span, a `.npy` header of
(2**32, 2**32), a zip record that inflates a thousandfold, a SAELens cfg.json whose d_sae its weights do not
have. Each is refused with one line naming the file and key before anything is allocated or copied (the MLP
and SAE loaders used to abort the process, SIGABRT, and the activations reader to spin for minutes), and a
view that does hold its values (a transpose, a slice at an offset) loads them. bridge.check_tensor,
bridge.torch_load and bridge.safetensors_header are the one place each check lives.
"""

from __future__ import annotations

import json
import struct
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jax_impl import saes
from jax_impl.cli import main
from jax_impl.data.activations import open_activations, read_activations
from jax_impl.errors import UserError
from jax_impl.interop import bridge, saelens
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.task.pointer import Split, pointer_targets
from jax_impl.task.splits import write_split

HUGE = (10**12, 512)  # 2 PB of float32, declared by a few bytes


def _mlp_sd() -> OrderedDict:
    return bridge.mlp_to_state_dict(InterpretabilityMLP(10, rngs=nnx.Rngs(0)))


def _sae_sd(width: int = 512, dict_size: int = 16) -> OrderedDict:
    return bridge.sae_to_state_dict(saes.create("relu-l1", width, dict_size, key=jax.random.key(1)))


@pytest.fixture(scope="module")
def split_file(tmp_path_factory) -> Path:
    """A four-row test split (no JAX program compiled to make it)."""
    inputs = np.array([[8, 9, 5, 1, 3, 2, 9, 4, 7, 1], [1, 2, 3, 4, 0, 5, 6, 7, 8, 2]] * 2, np.int32)
    path = tmp_path_factory.mktemp("split") / "mlp_test.xlsx"
    write_split(path, Split(inputs, pointer_targets(inputs).astype(np.float32)))
    return path


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "mlp.pth"
    bridge.save_mlp(InterpretabilityMLP(10, rngs=nnx.Rngs(0)), path)
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    """main(argv) in-process: (exit code, stderr); a warning raised on the way fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert not shown, [str(w.message) for w in shown]
    assert "Traceback" not in captured.err + captured.out
    return rc, captured.err


def refused(capsys, path: Path, *argv, fragments=()) -> str:
    rc, err = run_cli(capsys, *argv)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("monosem: error: "), (rc, err)
    assert str(path) in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# --------------------------------------------------------------------------- the cases, at the CLI


def test_an_expanded_mlp_tensor_is_one_line(tmp_path, split_file, capsys):
    path = tmp_path / "mlp.pth"
    torch.save(_mlp_sd() | {"layers.hidden1.weight": torch.zeros(1).expand(*HUGE)}, path)
    assert path.stat().st_size < 1 << 20
    refused(capsys, path, "evaluate", "--mlp", path, "--data", split_file,
            fragments=["key 'layers.hidden1.weight' is a view of shape (1000000000000, 512) with strides (0, 0)",
                       "overlap in 4 bytes of storage", "save t.contiguous()"])


@pytest.mark.parametrize("key", ["encoder.weight", "decoder.bias"])
def test_an_expanded_sae_tensor_is_one_line_not_an_abort(key, tmp_path, split_file, mlp_file, capsys):
    # encoder.weight's declared rows were the SAE's dictionary size: a template of 10**12 x 512 floats, SIGABRT.
    path = tmp_path / "sae.pth"
    shape = HUGE if key == "encoder.weight" else (10**12,)
    torch.save(_sae_sd() | {key: torch.zeros(1).expand(*shape)}, path)
    refused(capsys, path, "evaluate", "--mlp", mlp_file, "--sae", path, "--data", split_file,
            fragments=[f"key {key!r} is a view of shape", "with strides (0"])


@pytest.mark.parametrize("declared", ["meta", "sparse"])
def test_a_huge_tensor_without_data_never_sizes_a_model(declared, tmp_path, split_file, mlp_file, capsys):
    """A meta or sparse tensor holds no dense data, but its shape sized the SAE template before it was refused."""
    path = tmp_path / "sae.pth"
    if declared == "meta":
        weight = torch.empty(*HUGE, device="meta")
    else:
        with warnings.catch_warnings():  # torch's note that it skips the invariant checks: the test's, not ours
            warnings.simplefilter("ignore")
            weight = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0), HUGE)
    torch.save(_sae_sd() | {"encoder.weight": weight}, path)
    refused(capsys, path, "evaluate", "--mlp", mlp_file, "--sae", path, "--data", split_file,
            fragments=[f"key 'encoder.weight' is a {declared if declared == 'meta' else 'sparse_coo'} tensor"])


def test_expanded_activations_are_refused_at_once(tmp_path, capsys):
    # open_activations used to scan 10**12 rows for NaN, 65,536 at a time: minutes of spinning.
    path = tmp_path / "acts.pt"
    torch.save(torch.zeros(1).expand(*HUGE), path)
    start = time.monotonic()
    refused(capsys, path, "train-sae", "--activations", path, "--out", tmp_path / "out",
            fragments=["the tensor is a view of shape (1000000000000, 512)"])
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out" / "sae.pth").exists()


def test_npy_header_claiming_2_32_squared_is_one_line_without_warnings(tmp_path, capsys):
    path = tmp_path / "acts.npy"
    np.save(path, np.zeros((2, 3), np.float32))
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    header = data[:header_end].decode("latin1").replace("(2, 3)", f"({2**32}, {2**32})")
    header = header[:-1].rstrip(" ")
    path.write_bytes((header + " " * (header_end - len(header) - 1) + "\n").encode("latin1") + data[header_end:])
    refused(capsys, path, "train-sae", "--activations", path, "--out", tmp_path / "out",
            fragments=["truncated .npy file", f"({2**32}, {2**32}) float32"])


# --------------------------------------------------------------------------- check_tensor, one layout at a time


def test_views_that_hold_their_values_load_them(tmp_path):
    """A transposed (non-contiguous) weight and a weight at an offset into a larger storage are real data."""
    sd = _mlp_sd()
    weight = sd["layers.hidden1.weight"]
    sd["layers.hidden1.weight"] = weight.T.contiguous().T  # strides (1, 512)
    big = torch.cat([torch.full((7,), 5.0), sd["layers.output.weight"].reshape(-1)])
    sd["layers.output.weight"] = big[7:].view(1, -1)  # storage offset 7
    torch.save(sd, tmp_path / "views.pth")
    loaded = bridge.mlp_to_state_dict(bridge.load_mlp(tmp_path / "views.pth"))
    for key, value in _mlp_sd().items():
        assert torch.equal(loaded[key], value), key
    activations = torch.randn(6, 4)
    torch.save(activations.T.contiguous().T, tmp_path / "acts.pt")
    np.testing.assert_array_equal(open_activations(tmp_path / "acts.pt").rows(0, 6), activations.numpy())
    np.testing.assert_array_equal(read_activations(tmp_path / "acts.pt", width=4), activations.numpy())


def test_overlapping_and_interleaved_views_are_refused():
    storage = torch.arange(64.0)
    for view in (storage.as_strided((4, 4), (1, 1)), storage.as_strided((4, 4), (2, 3)), storage[:1].expand(4, 4)):
        with pytest.raises(UserError, match=r"^f: key 'w' is a view of shape \(4, 4\) with strides"):
            bridge.check_tensor(view, "f: key 'w'")
    for fine in (storage.as_strided((4, 4), (1, 4)), storage.as_strided((4, 4), (16, 2)), storage[:0].view(0, 1).expand(0, 9),
                 storage[:1].expand(1, 1), storage.as_strided((3, 1), (5, 0))):
        bridge.check_tensor(fine, "f")


def test_a_view_beyond_its_storage_is_refused():
    view = torch.arange(16.0)[4:].view(3, 4)
    bias = view[2, :1]  # element 12 of the storage
    view.untyped_storage().resize_(32)  # 8 floats left; the view reaches element 15, the bias element 12
    with pytest.raises(UserError, match=r"declares shape \(3, 4\) with strides \(4, 1\) at storage offset 4, reaching "
                                        r"beyond its storage of 32 bytes"):
        bridge.check_tensor(view, "f: key 'w'")
    with pytest.raises(UserError, match="f: key 'layers.output.bias' declares shape .* reaching beyond its storage"):
        bridge.mlp_from_state_dict(_mlp_sd() | {"layers.output.bias": bias}, source="f")


def test_the_memory_budget(monkeypatch, tmp_path):
    sd = _mlp_sd()
    torch.save(sd, tmp_path / "mlp.pth")
    monkeypatch.setattr(bridge, "file_budget", lambda: 100_000)
    with pytest.raises(UserError, match=r"its records declare .* more than the memory budget of 97.7 KiB"):
        bridge.torch_load(tmp_path / "mlp.pth")
    with pytest.raises(UserError, match=r"key 'layers.hidden1.weight' declares \(512, 256\) float32, 512.0 KiB, more than "
                                        r"the memory budget"):
        bridge.mlp_from_state_dict(sd, source="f")
    bridge.write_safetensors(sd, tmp_path / "mlp.safetensors")
    with pytest.raises(UserError, match="its tensors take .* more than the memory budget"):
        bridge.load_mlp(tmp_path / "mlp.safetensors")


def test_the_real_memory_budget_is_half_the_physical_memory():
    import os

    assert bridge.file_budget() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def test_a_compressed_record_that_inflates_past_the_budget(monkeypatch, tmp_path):
    """torch.load inflates deflated zip records: 4 MB of storage from a 5 KB file, refused by its declared size."""
    plain = tmp_path / "plain.pt"
    torch.save(torch.zeros(1_000_000, 1), plain)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(deflated, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, data)
    assert deflated.stat().st_size < 20_000
    assert bridge.torch_load(deflated).shape == (1_000_000, 1)  # torch reads it: the check is ours
    monkeypatch.setattr(bridge, "file_budget", lambda: 1 << 20)
    with pytest.raises(UserError, match=r"deflated.pt: its records declare 3.8 MiB of tensor data, more than the memory "
                                        r"budget of 1.0 MiB .* refused before reading"):
        open_activations(deflated)


# --------------------------------------------------------------------------- .safetensors headers


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


HEADER_CASES = {
    # id: (header entries for tensor "x" over 16 bytes of data, fragment of the one line)
    "shape_beyond_the_file": ({"dtype": "F32", "shape": list(HUGE), "data_offsets": [0, 16]},
                              "tensor 'x' declares shape (1000000000000, 512) of F32, 1.8 PiB, but its data offsets hold 16 bytes"),
    "shape_overflowing_int64": ({"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}, "declares shape"),
    "offsets_beyond_the_file": ({"dtype": "F32", "shape": [4, 2**40], "data_offsets": [0, 2**42 * 4]},
                                "data offsets [0, 17592186044416], expected [start, end] within the file's 16 bytes"),
    "negative_size": ({"dtype": "F32", "shape": [-4, 1], "data_offsets": [0, 16]}, "expected a dtype code and a list of sizes"),
    "float_size": ({"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}, "a list of sizes"),
    "boolean_offset": ({"dtype": "F32", "shape": [4], "data_offsets": [False, 16]}, "data offsets"),
    "offsets_reversed": ({"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}, "data offsets [16, 0]"),
    "dtype_not_a_string": ({"dtype": 4, "shape": [4], "data_offsets": [0, 16]}, "has dtype 4"),
    "entry_not_an_object": ([1, 2], "tensor 'x' is described by [1, 2]"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_safetensors_headers_are_checked_before_reading(case, tmp_path):
    entry, fragment = HEADER_CASES[case]
    path = _safetensors(tmp_path / "x.safetensors", {"x": entry}, bytes(16))
    for read in (bridge.read_safetensors, open_activations):
        with pytest.raises(UserError) as e:
            read(path)
        message = str(e.value)
        assert message.startswith(f"{path}: not a readable .safetensors file (") and "\n" not in message, message
        assert fragment in message, (fragment, message)


def test_safetensors_header_length_and_json(tmp_path):
    path = tmp_path / "x.safetensors"
    for raw, fragment in [(struct.pack("<Q", 2**63) + b"{}", "its header claims 9223372036854775808 bytes"),
                          (b"\x05\x00", "2 bytes, shorter than the 8-byte header length"),
                          (struct.pack("<Q", 4000) + b"[" * 4000, "its header is not JSON"),
                          (struct.pack("<Q", 2) + b"[]", "its header is a JSON list, expected an object")]:
        path.write_bytes(raw)
        with pytest.raises(UserError, match="not a readable .safetensors file") as e:
            bridge.safetensors_header(path, in_memory=False)
        assert fragment in str(e.value)
    good = tmp_path / "good.safetensors"
    save_file({"b": torch.zeros(2, 3, dtype=torch.float16), "a": torch.ones(5)}, str(good), metadata={"k": "v"})
    assert bridge.safetensors_header(good, in_memory=True) == {"a": ("F32", (5,)), "b": ("F16", (2, 3))}


def test_a_saelens_folder_whose_cfg_claims_a_huge_dictionary_allocates_nothing(tmp_path):
    """d_sae of cfg.json sized a freshly initialised SAE before the weights were compared with it."""
    sae = bridge.sae_from_state_dict(_sae_sd(), input_dim=512)
    folder = saelens.save_saelens(sae, tmp_path / "saelens")
    cfg = json.loads((folder / saelens.CFG_FILE).read_text())
    cfg["d_sae"] = 10**9
    cfg["metadata"]["monosem"]["config"] = {}
    (folder / saelens.CFG_FILE).write_text(json.dumps(cfg))
    start = time.monotonic()
    with pytest.raises(UserError, match=r"sae_weights.safetensors: tensor .\w+. has shape \(16,?.*\), expected \((512, )?1000000000,?\)"):
        saelens.load_saelens(folder)
    assert time.monotonic() - start < 30


def test_a_saelens_weights_header_beyond_its_file(tmp_path):
    sae = bridge.sae_from_state_dict(_sae_sd(), input_dim=512)
    folder = saelens.save_saelens(sae, tmp_path / "saelens")
    weights = folder / saelens.WEIGHTS_FILE
    header = {name: {"dtype": dtype, "shape": list(shape)} for name, (dtype, shape) in
              bridge.safetensors_header(weights, in_memory=True).items()}
    offset = 0
    for name in sorted(header):
        size = 4 * int(np.prod(header[name]["shape"]))
        header[name]["data_offsets"] = [offset, offset + size]
        offset += size
    header["W_enc"]["shape"] = [512, 10**9]
    _safetensors(weights, header, bytes(offset))
    with pytest.raises(UserError, match=r"not a readable .safetensors file \(tensor 'W_enc' declares shape \(512, 1000000000\)"):
        saelens.load_saelens(folder)


@pytest.mark.parametrize("shape", [(0, 10**12), (10**12, 0)])
@pytest.mark.parametrize("model", ["mlp", "sae"])
def test_an_empty_weight_with_a_huge_other_size_sizes_nothing(model, shape):
    """Zero elements, so no storage to check, but its other size was the model's width (found by the fuzzer)."""
    key = "layers.input.weight" if model == "mlp" else "encoder.weight"
    sd = (_mlp_sd() if model == "mlp" else _sae_sd()) | {key: torch.zeros(1).expand(*shape) if shape[1] == 0 else torch.zeros(shape)}
    load = bridge.mlp_from_state_dict if model == "mlp" else bridge.sae_from_state_dict
    with pytest.raises(UserError, match=rf"f: key '{key}' has shape \({shape[0]}, {shape[1]}\), expected a 2-D \(out, in\) "
                                        "weight of at least one row and one column"):
        load(sd, source="f")
