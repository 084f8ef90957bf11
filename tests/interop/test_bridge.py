import jax
import numpy as np
import pytest
import torch
from flax import nnx

from jax_impl import saes
from jax_impl.data.activations import read_activations
from jax_impl.errors import UserError
from jax_impl.interop import bridge
from jax_impl.models.mlp import InterpretabilityMLP


def test_upstream_pth_round_trips_bit_exactly(upstream, tmp_path):
    path = upstream / "mlp" / "perfect_mlp.pth"
    original = torch.load(path, weights_only=True)
    model = bridge.load_mlp(path)
    bridge.save_mlp(model, tmp_path / "again.pth")
    again = torch.load(tmp_path / "again.pth", weights_only=True)
    assert list(again) == list(original)
    for key in original:
        assert again[key].dtype == original[key].dtype, key
        assert torch.equal(again[key], original[key]), key


def test_sae_round_trip(tmp_path):
    sae = saes.create("relu-l1", 512, 64, key=jax.random.key(1))
    bridge.save_sae(sae, tmp_path / "sae.pth")
    sd = torch.load(tmp_path / "sae.pth", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "encoder.weight": (64, 512), "encoder.bias": (64,), "decoder.weight": (512, 64), "decoder.bias": (512,)
    }
    back = bridge.load_sae(tmp_path / "sae.pth")
    assert back.arch.name == "relu-l1"
    np.testing.assert_array_equal(np.asarray(back.params()["w_dec"]), np.asarray(sae.params()["w_dec"]))


def _mlp_sd():
    return bridge.mlp_to_state_dict(InterpretabilityMLP(10, rngs=nnx.Rngs(0)))


def test_missing_and_extra_keys_are_named():
    sd = _mlp_sd()
    del sd["layers.bn2.running_var"]
    sd["layers.bn3.weight"] = torch.zeros(3)
    with pytest.raises(UserError) as e:
        bridge.mlp_from_state_dict(sd, source="m.pth")
    assert "missing keys ['layers.bn2.running_var']" in str(e.value)
    assert "unexpected keys ['layers.bn3.weight']" in str(e.value)


def test_wrong_shape_names_key_and_both_shapes():
    sd = _mlp_sd()
    sd["layers.hidden2.weight"] = torch.zeros(256, 500)
    with pytest.raises(UserError, match=r"m.pth: key 'layers.hidden2.weight' has shape \(256, 500\), expected \(256, 512\)"):
        bridge.mlp_from_state_dict(sd, source="m.pth")


def test_wrong_dtype_and_nan_are_refused():
    sd = _mlp_sd()
    sd["layers.input.bias"] = sd["layers.input.bias"].double()
    with pytest.raises(UserError, match="'layers.input.bias' has dtype float64, expected float32"):
        bridge.mlp_from_state_dict(sd)
    sd = _mlp_sd()
    sd["layers.output.weight"][0, 3] = float("nan")
    with pytest.raises(UserError, match="'layers.output.weight' contains NaN"):
        bridge.mlp_from_state_dict(sd)


def test_activations_round_trip_and_shape_check(tmp_path):
    acts = np.random.default_rng(0).random((20, 512), dtype=np.float32)
    bridge.save_activations(acts, tmp_path / "a.pt")
    t = torch.load(tmp_path / "a.pt", weights_only=True)
    assert t.dtype == torch.float32 and tuple(t.shape) == (20, 512)
    np.testing.assert_array_equal(read_activations(tmp_path / "a.pt", width=512), acts)
    torch.save(torch.zeros(20, 256), tmp_path / "b.pt")
    with pytest.raises(UserError, match=r"shape \(20, 256\), expected \(N, 512\)"):
        read_activations(tmp_path / "b.pt", width=512)


def test_non_torch_and_truncated_files(tmp_path, upstream):
    (tmp_path / "x.pth").write_text("hello")
    with pytest.raises(UserError, match="not a readable torch file"):
        bridge.load_mlp(tmp_path / "x.pth")
    data = (upstream / "mlp" / "perfect_mlp.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable torch file"):
        bridge.load_mlp(tmp_path / "cut.pth")
    with pytest.raises(UserError, match="file not found"):
        bridge.load_mlp(tmp_path / "absent.pth")
