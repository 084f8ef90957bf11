"""Every `.pth` / `.pt` artifact has a `.safetensors` twin that loads with no unpickler, with the same checks."""

from __future__ import annotations

import hashlib

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file, save_file

from jax_impl import saes
from jax_impl.data.activations import read_activations
from jax_impl.errors import UserError
from jax_impl.interop import bridge
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, MLP_PATH, SAE_PATH
from jax_impl.models.mlp import InterpretabilityMLP


@pytest.mark.parametrize("path", [MLP_PATH, SAE_PATH, ACTIVATIONS_PATH])
def test_every_run_artifact_has_an_equal_safetensors_twin(tiny_run, path):
    original = torch.load(tiny_run / path, weights_only=True)
    twin = load_file(tiny_run / bridge.safetensors_twin(path))
    if isinstance(original, torch.Tensor):
        original = {bridge.ACTIVATIONS_KEY: original}
    assert sorted(twin) == sorted(original)
    for key, value in original.items():
        assert twin[key].dtype == value.dtype and torch.equal(twin[key], value), key


def test_loaders_read_the_twins_as_they_read_the_pth(tiny_run):
    mlp_pth, mlp_st = bridge.load_mlp(tiny_run / MLP_PATH), bridge.load_mlp(tiny_run / bridge.safetensors_twin(MLP_PATH))
    for key, value in bridge.mlp_to_state_dict(mlp_pth).items():
        assert torch.equal(bridge.mlp_to_state_dict(mlp_st)[key], value), key
    sae_pth, sae_st = bridge.load_sae(tiny_run / SAE_PATH), bridge.load_sae(tiny_run / bridge.safetensors_twin(SAE_PATH))
    assert sae_st.arch is sae_pth.arch and sae_st.cfg == sae_pth.cfg
    for key, value in sae_pth.params().items():
        np.testing.assert_array_equal(np.asarray(sae_st.params()[key]), np.asarray(value))
    np.testing.assert_array_equal(
        read_activations(tiny_run / bridge.safetensors_twin(ACTIVATIONS_PATH)),
        read_activations(tiny_run / ACTIVATIONS_PATH),
    )


def test_twins_are_deterministic(tmp_path):
    model = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    digests = []
    for name in ("a", "b"):
        bridge.save_mlp(model, tmp_path / name / "m.pth")
        digests.append(hashlib.sha256((tmp_path / name / "m.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def _mlp_safetensors(tmp_path, edit) -> object:
    sd = dict(bridge.mlp_to_state_dict(InterpretabilityMLP(10, rngs=nnx.Rngs(0))))
    edit(sd)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda sd: sd.pop("layers.bn2.running_var"), "missing keys ['layers.bn2.running_var']"),
    (lambda sd: sd.update({"layers.bn3.weight": torch.zeros(3)}), "unexpected keys ['layers.bn3.weight']"),
    (lambda sd: sd.update({"layers.hidden2.weight": torch.zeros(256, 500)}),
     "key 'layers.hidden2.weight' has shape (256, 500), expected (256, 512)"),
    (lambda sd: sd.update({"layers.input.bias": sd["layers.input.bias"].double()}),
     "key 'layers.input.bias' has dtype float64, expected float32"),
    (lambda sd: sd.update({"layers.input.bias": sd["layers.input.bias"].bfloat16()}),
     "key 'layers.input.bias' has dtype bfloat16, expected float32"),
    (lambda sd: sd["layers.output.weight"].fill_(float("inf")), "key 'layers.output.weight' contains NaN or infinite"),
])
def test_bad_safetensors_get_the_pth_messages(tmp_path, edit, message):
    path = _mlp_safetensors(tmp_path, edit)
    with pytest.raises(UserError) as e:
        bridge.load_mlp(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_an_sae_safetensors_with_foreign_keys_is_named(tmp_path):
    sae = saes.create("topk", 512, 64, key=jax.random.key(0))
    bridge.save_sae(sae, tmp_path / "s.pth")
    sd = load_file(tmp_path / "s.safetensors")
    sd["extra"] = torch.zeros(1)
    save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="are not those of any SAE architecture"):
        bridge.load_sae(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("content", [b"", b"garbage", b"\xff" * 8 + b"{}"])
def test_unreadable_safetensors_are_one_line(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    for load in (bridge.load_mlp, bridge.load_sae, read_activations):
        with pytest.raises(UserError) as e:
            load(path)
        assert "not a readable .safetensors file" in str(e.value) and "\n" not in str(e.value)


def test_activations_safetensors_must_hold_one_tensor(tmp_path):
    save_file({"a": torch.zeros(4, 512), "b": torch.zeros(4, 512)}, tmp_path / "two.safetensors")
    with pytest.raises(UserError, match="holds 2 tensors"):
        read_activations(tmp_path / "two.safetensors", width=512)
    save_file({"a": torch.zeros(4, 256)}, tmp_path / "narrow.safetensors")
    with pytest.raises(UserError, match=r"shape \(4, 256\), expected \(N, 512\)"):
        read_activations(tmp_path / "narrow.safetensors", width=512)
