"""Training curves (jax_impl.training.curves): every trainer writes metrics.jsonl, a point every --curve-every steps
and at each epoch's end, read back here and checked against what the training itself reports (metrics.json's
final_loss, the step count, the lr schedule of schedules.py), through TensorBoard's own reader for --log
tensorboard; curves change no artifact's bytes, and a resumed training appends without repeating a step.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_impl.cli import main
from jax_impl.jobs.sweep import run_sweep
from jax_impl.jobs.train_sae import LIVE_CURVES_DIR, TrainSAEConfig, train_sae
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.saes import topk
from jax_impl.training import curves as curves_module
from jax_impl.training.checkpoints import CheckpointPolicy
from jax_impl.training.curves import CURVES_FILE, TENSORBOARD_DIR, CurveConfig, Curves, read_curves
from jax_impl.training.mlp_trainer import MLPConfig, fit_mlp
from jax_impl.training.online import fit_mlp_online
from jax_impl.training.schedules import onecycle_tables

ROWS, WIDTH, BATCH = 400, 8, 32  # 12 full batches an epoch (topk drops the partial one)
CONFIG = TrainSAEConfig(variant="topk", dict_size=24, epochs=3, batch_size=BATCH, lr=2e-3,
                        architecture=topk.Config(k=3))


@pytest.fixture(scope="module")
def acts(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    codes = rng.random((ROWS, 12)) * (rng.random((ROWS, 12)) < 0.3)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, (codes @ rng.normal(size=(12, WIDTH))).astype(np.float32))
    return path


CURVES = CurveConfig(curve_every=5, log=("tensorboard",))  # 5 + 5 + 2 steps an epoch


@pytest.fixture(scope="module")
def trained(acts, tmp_path_factory) -> tuple[Path, dict]:
    """train-sae's folder with curves every 5 steps and TensorBoard's files, and its metrics."""
    out = tmp_path_factory.mktemp("trained") / "sae"
    return out, train_sae(acts, out, CONFIG, curves=CURVES, log=lambda s: None)


def _points(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / CURVES_FILE).read_text().splitlines()]


def _check_steps(points: list[dict], epochs: int, steps_per_epoch: int, every: int) -> None:
    """Steps strictly increase, each epoch's points close at its end and average `steps` steps."""
    steps = [p["step"] for p in points]
    assert steps == sorted(set(steps)) and steps[-1] == epochs * steps_per_epoch
    for e in range(1, epochs + 1):
        mine = [p for p in points if p["epoch"] == e]
        assert sum(p["steps"] for p in mine) == steps_per_epoch and mine[-1]["step"] == e * steps_per_epoch
        assert all(p["steps"] == every for p in mine[:-1]) and "epoch_loss" in mine[-1]
        assert all("epoch_loss" not in p for p in mine[:-1])


def test_train_sae_curves_agree_with_its_metrics_and_tensorboard_reads_them(trained):
    out, metrics = trained
    points = _points(out)
    _check_steps(points, epochs=3, steps_per_epoch=ROWS // BATCH, every=5)
    assert len(points) == 3 * 3  # 5 + 5 + 2 steps an epoch
    assert points[-1]["epoch_loss"] == metrics["final_loss"]  # the same float32 mean
    last_epoch = [p for p in points if p["epoch"] == 3]
    weighted = sum(p["loss"] * p["steps"] for p in last_epoch) / sum(p["steps"] for p in last_epoch)
    assert weighted == pytest.approx(metrics["final_loss"], rel=1e-6)
    for p in points:
        assert p["lr"] == CONFIG.lr
        assert p["loss"] == pytest.approx(p["mse"] + CONFIG.architecture.aux_coeff * p["aux"], rel=1e-6)
        assert 0 < p["l0"] <= 3 and 0 <= p["dead_fraction"] <= 1 and p["explained_variance"] < 1
    # the training learns: the batches' explained variance rises towards the final model's on every row
    assert points[0]["explained_variance"] < points[-1]["explained_variance"]
    assert points[-1]["explained_variance"] == pytest.approx(metrics["explained_variance"], abs=0.1)
    assert points[-1]["l0"] == pytest.approx(metrics["l0"], abs=0.5)
    assert [p["seconds"] for p in points] == sorted(p["seconds"] for p in points)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    assert {"loss", "mse", "aux", "l0", "explained_variance", "dead_fraction", "lr", "epoch_loss"} <= set(
        events.Tags()["scalars"])
    for tag in ("loss", "l0", "lr"):
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert read == [(p["step"], pytest.approx(p[tag], rel=1e-6)) for p in points]
    assert events.Scalars("epoch_loss")[-1].value == pytest.approx(metrics["final_loss"], rel=1e-7)


def test_curves_change_no_artifact_and_zero_writes_none(acts, trained, tmp_path):
    on_dir, _ = trained
    train_sae(acts, tmp_path / "off", CONFIG, curves=CurveConfig(curve_every=0), log=lambda s: None)
    assert not (tmp_path / "off" / CURVES_FILE).exists()
    for name in ("sae.safetensors", "sae.pth", "sae_config.json", "saelens/sae_weights.safetensors"):
        assert (on_dir / name).read_bytes() == (tmp_path / "off" / name).read_bytes(), name
    on, off = (json.loads((d / "metrics.json").read_text()) for d in (on_dir, tmp_path / "off"))
    assert {k: v for k, v in on.items() if k != "train_seconds"} == {k: v for k, v in off.items() if k != "train_seconds"}


class _Stop(BaseException):
    """Ends the training as a kill or signal would: not an error, so its curves stay for --resume."""


def test_a_resumed_training_appends_after_its_checkpoint_without_repeating_a_step(acts, trained, tmp_path):
    (full, _), out = trained, tmp_path / "resumed"
    curves = CurveConfig(curve_every=CURVES.curve_every)

    def stop_in_epoch_3(line: str) -> None:  # after epoch 3's points are written, before its checkpoint
        if line.startswith("SAE Epoch [3/"):
            raise _Stop

    with pytest.raises(_Stop):
        train_sae(acts, out, CONFIG, curves=curves, checkpoint_every=CheckpointPolicy(epochs=1, seconds=None),
                  log=stop_in_epoch_3)
    live = out / LIVE_CURVES_DIR  # the curves of the training in progress
    assert _points(live)[-1]["epoch"] == 3  # written, but its checkpoint is epoch 2's
    assert not (out / CURVES_FILE).exists()
    with open(live / CURVES_FILE, "a") as f:
        f.write('{"step": 99, "epo')  # and a torn line, as a kill mid-write leaves
    train_sae(acts, out, CONFIG, curves=curves, resume=True, log=lambda s: None)
    assert not live.exists()  # moved into the finished set
    drop = {"seconds"}
    assert ([{k: v for k, v in p.items() if k not in drop} for p in _points(out)]
            == [{k: v for k, v in p.items() if k not in drop} for p in _points(full)])


@pytest.mark.slow  # the tiny run's MLP stage (test_a_runs_training_stages_write_their_curves) checks the same, for free
@pytest.mark.parametrize("data", ["split", "online"])
def test_mlp_curves_follow_the_onecycle_schedule_of_schedules_py(data, tmp_path):
    rng = np.random.default_rng(0)
    inputs, targets = rng.integers(0, 10, (200, 10)), rng.random(200)
    cfg = MLPConfig(epochs=4, batch_size=32, log_every=100)  # 7 steps an epoch, the last one partial
    lr = onecycle_tables(4 * 7, cfg.max_lr, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
                         final_div_factor=cfg.final_div_factor)[0]
    model, curves = InterpretabilityMLP(10, rngs=_rngs()), Curves(tmp_path, CurveConfig(curve_every=3))
    if data == "split":
        result = fit_mlp(model, inputs, targets, cfg, key=jax.random.key(1), log=lambda s: None, curves=curves)
    else:
        result = fit_mlp_online(model, cfg, _shape(), n_train=200, key=jax.random.key(1), log=lambda s: None,
                                curves=curves)
    points = _points(tmp_path)
    _check_steps(points, epochs=4, steps_per_epoch=7, every=3)
    assert [p["lr"] for p in points] == [float(lr[p["step"] - 1]) for p in points]
    assert [p["epoch_loss"] for p in points if "epoch_loss" in p] == [float(v) for v in result.epoch_losses]
    assert points[0]["loss"] == pytest.approx(float(result.step_losses[0, :3].mean()), rel=1e-6)


def _rngs():
    from flax import nnx

    return nnx.Rngs(jax.random.key(0))


def _shape():
    from jax_impl.task.pointer import TaskShape

    return TaskShape()


def test_a_runs_training_stages_write_their_curves(tiny_run):
    """`monosem run` (the default curves): RUN_DIR/mlp/metrics.jsonl and RUN_DIR/sae/metrics.jsonl, beside the
    stages' files, agree with the manifest's metrics; the MLP's lr is schedules.py's OneCycle."""
    from jax_impl.jobs.rundir import MLP_PATH, SAE_PATH, run_config

    config, manifest = run_config(tiny_run), json.loads((tiny_run / "manifest.json").read_text())
    mlp, sae = _points(tiny_run / MLP_PATH.parent), _points(tiny_run / SAE_PATH.parent)
    steps = -(-512 // config.mlp.batch_size)  # TINY_RUN_ARGS: 512 training rows
    _check_steps(mlp, epochs=config.mlp.epochs, steps_per_epoch=steps, every=CurveConfig().curve_every)
    lr = onecycle_tables(config.mlp.epochs * steps, config.mlp.max_lr, pct_start=config.mlp.pct_start,
                         div_factor=config.mlp.div_factor, final_div_factor=config.mlp.final_div_factor)[0]
    assert [p["lr"] for p in mlp] == [float(lr[p["step"] - 1]) for p in mlp]
    assert mlp[-1]["epoch_loss"] == manifest["metrics"]["mlp"]["final_train_loss"]
    assert sae[-1]["epoch"] == config.sae.epochs and sae[-1]["epoch_loss"] == manifest["metrics"]["sae"]["final_loss"]
    assert all(p["lr"] == config.sae.lr for p in sae) and {"mse", "l0", "dead_fraction"} <= set(sae[-1])


def test_a_sweep_writes_one_run_per_configuration(acts, tmp_path):
    train = CONFIG.train_config()
    doc = run_sweep(tmp_path / "sweep", {"k": [3], "aux_coeff": [0.0, 0.1]}, activations=acts, variants=["topk"],
                    dict_size=24, train=train, curves=CurveConfig(curve_every=6, log=("tensorboard",)),
                    log=lambda s: None)
    assert len(doc["configurations"]) == 2 and len(doc["groups"]) == 1  # one vmapped program
    for row in doc["configurations"]:
        folder = tmp_path / "sweep" / row["name"]
        points = _points(folder)
        _check_steps(points, epochs=train.epochs, steps_per_epoch=ROWS // BATCH, every=6)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert points[-1]["epoch_loss"] == metrics["final_loss"]
        assert max(p["l0"] for p in points) <= 3
        assert all(p["loss"] == pytest.approx(p["mse"] + row["aux_coeff"] * p["aux"], rel=1e-6) for p in points)
        assert len(list((folder / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_wandb_logs_an_offline_run(acts, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_sae(acts, tmp_path / "w", CONFIG, curves=CurveConfig(curve_every=6, log=("wandb",)), log=lambda s: None)
    (run,) = (tmp_path / "w" / curves_module.WANDB_DIR).glob("offline-run-*")
    assert list(run.glob("*.wandb"))  # the run's records, for `wandb sync`


def test_a_torn_last_line_ends_the_curves(tmp_path):
    path = tmp_path / CURVES_FILE
    path.write_text('{"step": 4, "epoch": 1, "loss": 1.0}\n{"step": 8, "epoch": 2, "loss": 0.5}\n{"step": 1')
    assert [p["step"] for p in read_curves(path)] == [4, 8]
    assert [p["step"] for p in read_curves(path, before_epoch=2)] == [4]


def test_tfrecord_frames_carry_crc32c():
    assert curves_module._masked_crc32c(b"") == 0xA282EAD8  # crc32c("") = 0, masked
    crc = 0xE3069283  # crc32c("123456789"), the standard check value
    assert curves_module._masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.mark.parametrize(("argv", "message"), [
    (["--log", "mlflow"], "--log: unknown backend 'mlflow'; expected one of tensorboard, wandb"),
    (["--curve-every", "-1"], "--curve-every must be an integer >= 0, got -1"),
    (["--curve-every", "0", "--log", "tensorboard"], "--log tensorboard needs curves: --curve-every must be >= 1"),
])
def test_bad_curve_flags_are_one_line_exit_2(argv, message, acts, tmp_path, capsys):
    assert main(["train-sae", "--activations", str(acts), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"monosem: error: {message}" and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
