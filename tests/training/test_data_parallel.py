"""`--devices N`: each batch split over N devices (jax.sharding), parameters replicated. On 4 CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4, in a subprocess: the flag must precede JAX's start)
every architecture trains to the same SAE as on one device, within float32 reduction-order tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Same weights up to the order of float32 sums (a batch's gradient is reduced across devices): after 3 epochs
# of Adam the largest difference measured here is ~1e-6; 1e-4 leaves room without hiding a wrong gradient.
TOLERANCE = 1e-4

SCRIPT = r"""
import dataclasses, json, sys
from pathlib import Path
import jax, numpy as np, torch
from jax_impl import saes
from jax_impl.jobs.train_sae import TrainSAEConfig, train_sae
from jax_impl.errors import UserError

assert jax.device_count() == 4, jax.devices()
tmp = Path(sys.argv[1])
rng = np.random.default_rng(0)
codes = rng.random((1000, 24)) * (rng.random((1000, 24)) < 0.15)
np.save(tmp / "acts.npy", (codes @ rng.normal(size=(24, 20))).astype(np.float32))
configs = {"relu-l1": {}, "anthropic": {"resample_every": 1}, "topk": {"k": 4}, "batchtopk": {"k": 4},
           "matryoshka": {"k": 4, "groups": (8, 16, 32)}, "jumprelu": {"l0_coeff": 1e-3}}
configs = {name: configs[name] for name in sys.argv[2].split(",")}
base = TrainSAEConfig(dict_size=32, epochs=3, batch_size=64, log_every=3)
report = {}
for name, fields in configs.items():
    weights, cfg_files = [], []
    for devices in (None, 4):
        out = tmp / f"{name}-{devices}"
        config = dataclasses.replace(base, variant=name, architecture=saes.get(name).config(**fields), devices=devices)
        train_sae(tmp / "acts.npy", out, config, log=lambda line: None)
        weights.append(torch.load(out / "sae.pth", weights_only=True))
        cfg_files.append(json.loads((out / "sae_config.json").read_text()))
    diff = max(float((weights[0][k].double() - weights[1][k].double()).abs().max()) for k in weights[0])
    report[name] = {"diff": diff, "devices": [c["devices"] for c in cfg_files]}
# The step really is partitioned: its compiled program reduces across the devices.
import jax.numpy as jnp
from jax_impl.training.devices import data_mesh, replicate
from jax_impl.training.sae_trainer import make_sae_step
from jax_impl.training.sae_trainer import sae_optimizer
sae = saes.create("topk", 20, 32, saes.topk.Config(k=4), key=jax.random.key(0))
mesh, tx = data_mesh(4, batch_size=64), sae_optimizer(base.train_config())
carry = replicate((sae.params(), sae.buffers(), tx.init(sae.params()), jnp.zeros(32, jnp.int32)), mesh)
step = make_sae_step(sae.arch, sae.cfg, tx, dead_after=10, mesh=mesh)
compiled = jax.jit(step).lower(carry, replicate(jnp.zeros((64, 20)), mesh)).compile().as_text()
all_reduce = "all-reduce" in compiled
errors = []
for bad in ("8", "0", "two"):
    try:
        train_sae(tmp / "acts.npy", tmp / "bad", dataclasses.replace(base, devices=bad))
    except UserError as e:
        errors.append(str(e))
try:
    train_sae(tmp / "acts.npy", tmp / "bad", dataclasses.replace(base, devices=3, epochs=1))
except UserError as e:
    errors.append(str(e))
print(json.dumps({"report": report, "all_reduce": all_reduce, "errors": errors, "bad_written": (tmp / "bad").exists()}))
"""


# make test: one architecture per kind of step (the seed's partial last batch; AuxK's switch and batch-wide
# top-k; a custom VJP and a post-update clip); -m slow: all six.
ARCHITECTURES = [
    pytest.param("relu-l1,batchtopk,jumprelu", id="three-kinds"),
    pytest.param("anthropic,topk,matryoshka", id="the-others", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("architectures", ARCHITECTURES)
def test_four_devices_train_what_one_device_trains(architectures, tmp_path):
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), architectures], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["report"]) == set(architectures.split(","))
    for name, r in result["report"].items():
        assert r["devices"] == [1, 4], (name, r)
        assert r["diff"] <= TOLERANCE, (name, r)
    assert result["all_reduce"]
    errors = result["errors"]
    assert len(errors) == 4 and "sees 4 cpu device(s)" in errors[0] and "--devices 0" in errors[1]
    assert "must be a number or 'all'" in errors[2] and "not divisible by --devices 3" in errors[3]
    assert not result["bad_written"]
