"""Training checkpoints (issue 15, items 1-3; orbax-checkpoint since issue 27) in one process: the step folder and
its checksums, keep-two and fallback, identity
checks, the cadence, and bit-identical resumption of every trainer (the split and online MLP, every SAE
architecture in memory, the streamed-chunk SAE path with and without an epoch hook) after a real SIGINT /
SIGTERM delivered to this process mid-training, or after a crash between two checkpoints.

The cross-process SIGKILL chains (and a kill during a checkpoint write) are in tests/training/test_kill_resume.py.
"""

from __future__ import annotations

import json
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import saes
from jax_impl.data.activations import open_activations
from jax_impl.errors import Interrupted, UserError
from jax_impl.interop.bridge import mlp_to_state_dict
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.task.pointer import TaskShape, generate_splits
from jax_impl.training import checkpoints as ck
from jax_impl.training.checkpoints import CheckpointError, CheckpointPolicy, TrainingCheckpoints
from jax_impl.training.mlp_trainer import MLPConfig, fit_mlp
from jax_impl.training.online import fit_mlp_online
from jax_impl.training.sae_trainer import SAETrainConfig, fit

EVERY_EPOCH = CheckpointPolicy(epochs=1, seconds=None)


# --------------------------------------------------------------------------- the file


def _tree():
    return {
        "w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "count": jnp.zeros((), jnp.int32),
        "flags": jnp.asarray([True, False]), "key": jax.random.key(3), "nested": (jnp.ones(2), {"b": jnp.full((), 2.5)}),
        "empty": (),
    }


def test_a_pytree_round_trips_exactly_with_its_dtypes_shapes_and_prng_keys(tmp_path):
    tree = _tree()
    ck.save_tree(tmp_path / "t", tree, {"epoch": 1, "note": "x"})
    template = jax.tree.map(jnp.zeros_like, tree)
    restored, meta = ck.load_tree(tmp_path / "t", template)
    assert meta["epoch"] == 1 and meta["note"] == "x"
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
        if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
            assert jnp.array_equal(jax.random.key_data(a), jax.random.key_data(b))
            assert jax.random.key_impl(a) == jax.random.key_impl(b)
        else:
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    files = [p for p in (tmp_path / "t").rglob("*") if p.is_file()]
    assert all(not p.read_bytes().startswith(b"\x80") for p in files)  # no pickle protocol header anywhere
    # orbax's own layout: its StandardCheckpointer reads the arrays (by their slot), JSON the metadata
    import orbax.checkpoint as ocp

    state = ocp.StandardCheckpointer().restore((tmp_path / "t" / ck.STATE).absolute())
    names = [a["name"] for a in json.loads((tmp_path / "t" / ck.META / "metadata").read_text())["arrays"]]
    slot = names.index("['w']")
    assert np.array_equal(state[f"a{slot:05d}"], np.asarray(tree["w"]))


def test_a_template_of_another_structure_is_refused_naming_the_array(tmp_path):
    ck.save_tree(tmp_path / "t", _tree(), {})
    other = _tree() | {"w": jnp.zeros((4, 3), jnp.float32)}
    with pytest.raises(CheckpointError, match=r"/t: array \['w'\] has shape \(3, 4\).*expected \(4, 3\)"):
        ck.load_tree(tmp_path / "t", other)
    with pytest.raises(CheckpointError, match=r"holds other state than this training's"):
        ck.load_tree(tmp_path / "t", {"w": jnp.zeros((3, 4))})


def _largest_array_file(step):
    return max((p for p in (step / ck.STATE).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "flip", "append", "empty", "other", "meta", "removed", "added",
                                    "checksums", "no checksums", "not a folder"])
def test_every_kind_of_damage_is_detected_by_the_checksum(tmp_path, damage):
    path = tmp_path / "t"
    ck.save_tree(path, _tree(), {})
    target = _largest_array_file(path)
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) - 7] ^= 0x10
    elif damage == "append":
        data += b"\0"
    elif damage == "empty":
        data = b""
    elif damage == "other":
        data = b"PK\x03\x04" + bytes(100)
    elif damage == "meta":
        target = path / ck.META / "metadata"
        data = target.read_bytes().replace(b'"epoch"', b'"epocH"').replace(b"float32", b"float16")
    if damage == "removed":
        target.unlink()
    elif damage == "added":
        (path / ck.STATE / "stray").write_bytes(b"x")
    elif damage == "checksums":
        (path / ck.CHECKSUMS).write_bytes(b"garbage")
    elif damage == "no checksums":
        (path / ck.CHECKSUMS).unlink()
    elif damage == "not a folder":
        shutil.rmtree(path)
        path.write_bytes(b"MONOCKPT")
    else:
        target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"^" + str(path).replace(".", r"\.") + ": (damaged|not a monosem)"):
        ck.read_step(path)


# --------------------------------------------------------------------------- the hook


def _progress(epoch: int, value: float = 0.0) -> ck.Progress:
    carry = {"w": jnp.full((3,), value, jnp.float32), "n": jnp.asarray(epoch, jnp.int32)}
    return ck.Progress(carry, epoch, np.full((epoch, 2), value, np.float32), [f"line {i}" for i in range(epoch)],
                       np.arange(epoch, dtype=np.float64))


TEMPLATE = {"w": jnp.zeros((3,), jnp.float32), "n": jnp.zeros((), jnp.int32)}


def test_the_last_two_are_kept_and_the_newest_is_resumed(tmp_path):
    hook = TrainingCheckpoints(tmp_path / "c", {"seed": 1}, EVERY_EPOCH, log=lambda _: None)
    for e in range(1, 6):
        hook.save(_progress(e, float(e)))
    assert [p.name for _, p in ck.list_checkpoints(tmp_path / "c")] == ["ckpt_000005", "ckpt_000004"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ckpt_000004", "ckpt_000005"]  # orbax pruned
    lines = []
    resumed = TrainingCheckpoints(tmp_path / "c", {"seed": 1}, resume=True, log=lines.append).restore(TEMPLATE)
    assert resumed.epoch == 5 and float(resumed.carry["w"][0]) == 5.0 and resumed.log_lines[-1] == "line 4"
    assert resumed.step_losses.shape == (5, 2) and lines == [f"Resuming from {tmp_path / 'c' / 'ckpt_000005'} (epoch 5 done)"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_one_line(tmp_path):
    hook = TrainingCheckpoints(tmp_path / "c", {"seed": 1}, EVERY_EPOCH, log=lambda _: None)
    hook.save(_progress(3, 3.0))
    hook.save(_progress(4, 4.0))
    newest = tmp_path / "c" / "ckpt_000004"
    damaged = _largest_array_file(newest)
    damaged.write_bytes(damaged.read_bytes()[:-10])  # truncated
    lines = []
    resuming = TrainingCheckpoints(tmp_path / "c", {"seed": 1}, EVERY_EPOCH, resume=True, log=lines.append)
    resumed = resuming.restore(TEMPLATE)
    assert resumed.epoch == 3 and float(resumed.carry["w"][0]) == 3.0
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "damaged checkpoint" in warnings[0]
    assert "does not match its sha256" in warnings[0] and damaged.relative_to(newest).as_posix() in warnings[0]
    assert "resuming from the previous checkpoint ckpt_000003" in warnings[0]
    # the resumed training saves epoch 4 again over the damaged one
    resuming.save(_progress(4, 4.5))
    assert ck.read_step(newest)[0]["carry['w']"][0] == 4.5 and [e for e, _ in ck.list_checkpoints(tmp_path / "c")] == [4, 3]
    damaged = _largest_array_file(newest)
    damaged.write_bytes(damaged.read_bytes()[:-10])
    # both damaged: an error naming the newest, and how to start over
    older = tmp_path / "c" / "ckpt_000003"
    (older / ck.CHECKSUMS).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"ckpt_000004: damaged .*no valid checkpoint left in .*remove that folder"):
        TrainingCheckpoints(tmp_path / "c", {"seed": 1}, resume=True, log=lines.append).restore(TEMPLATE)


def test_a_checkpoint_of_another_training_is_refused_with_what_differs(tmp_path):
    TrainingCheckpoints(tmp_path / "c", {"seed": 1, "cfg": {"lr": 0.1}}, log=lambda _: None).save(_progress(2))
    with pytest.raises(CheckpointError, match=r"written by another training \(cfg\.lr: 0\.1 -> 0\.2\)"):
        TrainingCheckpoints(tmp_path / "c", {"seed": 1, "cfg": {"lr": 0.2}}, resume=True, log=print).restore(TEMPLATE)


def test_a_fresh_start_removes_old_checkpoints_and_resume_without_any_starts_at_epoch_one(tmp_path):
    TrainingCheckpoints(tmp_path / "c", {}, log=lambda _: None).save(_progress(2))
    assert TrainingCheckpoints(tmp_path / "c", {}, log=lambda _: None).restore(TEMPLATE) is None
    assert not (tmp_path / "c").exists()
    lines = []
    assert TrainingCheckpoints(tmp_path / "c", {}, resume=True, log=lines.append).restore(TEMPLATE) is None
    assert lines == [f"No checkpoint in {tmp_path / 'c'}; training from the first epoch."]


def test_a_killed_save_leaves_only_orbax_temporary_folder_which_the_next_run_sweeps(tmp_path, monkeypatch):
    hook = TrainingCheckpoints(tmp_path / "c", {"seed": 1}, EVERY_EPOCH, log=lambda _: None)
    hook.save(_progress(1, 1.0))

    def killed(tmp, final):  # the process dies after orbax wrote the step's files, before it commits them
        raise SystemExit("killed")

    monkeypatch.setattr(ck, "seal_step", killed)
    with pytest.raises(SystemExit):
        hook.save(_progress(2, 2.0))
    monkeypatch.undo()
    assert [e for e, _ in ck.list_checkpoints(tmp_path / "c")] == [1]
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("ckpt_000002")] == \
        ["ckpt_000002.orbax-checkpoint-tmp"]
    resuming = TrainingCheckpoints(tmp_path / "c", {"seed": 1}, EVERY_EPOCH, resume=True, log=lambda _: None)
    assert resuming.restore(TEMPLATE).epoch == 1
    resuming.save(_progress(2, 2.0))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ckpt_000001", "ckpt_000002"]


def test_checkpoints_of_the_format_before_orbax_are_refused_in_one_line(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ckpt-000003.ckpt").write_bytes(b"MONOCKPT")
    with pytest.raises(CheckpointError, match=r"/c: holds checkpoints of an earlier version's format .*start over "
                                              r"without --resume$"):
        TrainingCheckpoints(tmp_path / "c", {}, resume=True, log=print).restore(TEMPLATE)


def test_cadence_by_epochs_by_seconds_and_never_after_the_last_epoch():
    by_epochs = TrainingCheckpoints("unused", {}, CheckpointPolicy(epochs=3, seconds=None))
    assert [e for e in range(1, 11) if by_epochs.due(e, 10)] == [3, 6, 9]
    now = [0.0]
    by_time = TrainingCheckpoints("unused", {}, CheckpointPolicy(epochs=None, seconds=60), clock=lambda: now[0])
    assert not by_time.due(1, 10)
    now[0] = 59.9
    assert not by_time.due(2, 10)
    now[0] = 60.0
    assert by_time.due(3, 10) and not by_time.due(10, 10)
    off = TrainingCheckpoints("unused", {}, CheckpointPolicy(epochs=None, seconds=None))
    assert not any(off.due(e, 10) for e in range(1, 10))


@pytest.mark.parametrize("text, expected", [
    ("5", CheckpointPolicy(epochs=5, seconds=None)), ("60s", CheckpointPolicy(epochs=None, seconds=60.0)),
    ("2.5m", CheckpointPolicy(epochs=None, seconds=150.0)), ("off", CheckpointPolicy(epochs=None, seconds=None)),
])
def test_checkpoint_every_parses_epochs_seconds_minutes_and_off(text, expected):
    assert CheckpointPolicy.parse(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "5x", "s", "0s", "-3s", "nans", "", "1.5"])
def test_a_bad_checkpoint_every_names_the_flag(text):
    with pytest.raises(UserError, match=r"^--checkpoint-every .*expected a number of epochs"):
        CheckpointPolicy.parse(text)


# --------------------------------------------------------------------------- bit-identical resumption


class _StopAt:
    """A `log` that delivers `signum` to this very process when the line of epoch `epoch` is printed, or
    raises (a crash: nothing saved for that epoch) when `crash`."""

    def __init__(self, fragment: str, signum: int | None = signal.SIGTERM):
        self.fragment, self.signum, self.lines = fragment, signum, []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.fragment in line:
            if self.signum is None:
                raise RuntimeError("crash")
            signal.raise_signal(self.signum)


def _interrupt_then_resume(train, folder, fragment, signum):
    """train(log, checkpoints) interrupted at the line with `fragment`, then resumed; returns the result."""
    stop = _StopAt(fragment, signum)
    if signum is None:
        with pytest.raises(RuntimeError, match="crash"):
            train(stop, TrainingCheckpoints(folder, {"t": 1}, EVERY_EPOCH, log=stop))
    else:
        with pytest.raises(Interrupted) as interrupted:
            train(stop, TrainingCheckpoints(folder, {"t": 1}, EVERY_EPOCH, log=stop))
        assert interrupted.value.exit_code == 128 + signum
        assert "to continue, run the same command with --resume" in str(interrupted.value)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the previous handlers are back
    saved = ck.list_checkpoints(folder)
    assert saved, "nothing was saved"
    lines = []
    result = train(lines.append, TrainingCheckpoints(folder, {"t": 1}, EVERY_EPOCH, resume=True, log=lines.append))
    assert any(line.startswith("Resuming from") for line in lines)
    return result, saved[0][0]


def _same_training(a, b) -> None:
    assert np.array_equal(a.step_losses, b.step_losses)  # every step's loss, bit for bit
    assert a.log_lines == b.log_lines


@pytest.fixture(scope="module")
def task_rows():
    return generate_splits(jax.random.key(0), {"train": 256, "val": 64}, TaskShape())


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(None, marks=pytest.mark.slow)], ids=["SIGINT", "crash"])
def test_mlp_on_the_split_resumes_bit_identically(task_rows, tmp_path, signum):
    cfg = MLPConfig(epochs=4, batch_size=64, log_every=1)
    train, val = task_rows["train"], task_rows["val"]

    def run(log, checkpoints=None):
        model = InterpretabilityMLP(10, rngs=nnx.Rngs(1))
        return fit_mlp(model, train.inputs, train.targets, cfg, key=jax.random.key(2), val=(val.inputs, val.targets),
                       log=log, checkpoints=checkpoints)

    reference = run(lambda _: None)
    resumed, at = _interrupt_then_resume(run, tmp_path / "c", "Epoch 2 |", signum)
    assert at == (2 if signum is not None else 1)  # a signal saves the epoch it finished; a crash loses it
    _same_training(reference, resumed)
    for k, v in mlp_to_state_dict(reference.model).items():
        assert mlp_to_state_dict(resumed.model)[k].numpy().tobytes() == v.numpy().tobytes(), k


def test_online_mlp_resumes_bit_identically(task_rows, tmp_path):
    cfg = MLPConfig(epochs=4, batch_size=64, log_every=1, data="online")
    val = task_rows["val"]

    def run(log, checkpoints=None):
        model = InterpretabilityMLP(10, rngs=nnx.Rngs(1))
        return fit_mlp_online(model, cfg, TaskShape(), n_train=256, key=jax.random.key(2), val=(val.inputs, val.targets),
                              log=log, checkpoints=checkpoints)

    reference = run(lambda _: None)
    resumed, _ = _interrupt_then_resume(run, tmp_path / "c", "Epoch 3 |", signal.SIGTERM)
    _same_training(reference, resumed)
    for k, v in mlp_to_state_dict(reference.model).items():
        assert mlp_to_state_dict(resumed.model)[k].numpy().tobytes() == v.numpy().tobytes(), k


ARCH_CONFIGS = {
    "relu-l1": {}, "anthropic": {"resample_every": 1}, "topk": {"k": 4}, "batchtopk": {"k": 4},
    "matryoshka": {"k": 4, "groups": (8, 16, 32)}, "jumprelu": {},
}


def _sae_rows(n=384, d=16):
    rng = np.random.default_rng(5)
    codes = rng.random((n, 12)) * (rng.random((n, 12)) < 0.2)
    return (codes @ rng.normal(size=(12, d))).astype(np.float32)


def _sae_run(variant, rows, chunk_rows=None, epochs=4):
    arch = saes.get(variant)
    cfg = arch.config(**ARCH_CONFIGS[variant])
    width = rows.width if hasattr(rows, "width") else rows.shape[1]

    def run(log, checkpoints=None):
        sae = saes.create(variant, width, 32, cfg, key=jax.random.key(4))
        return fit(sae, rows, SAETrainConfig(epochs=epochs, batch_size=32, log_every=1), key=jax.random.key(6),
                   chunk_rows=chunk_rows, log=log, checkpoints=checkpoints)

    return run


def _same_sae(a, b) -> None:
    _same_training(a, b)
    sa, sb = saes.base.numpy_state(a.model), saes.base.numpy_state(b.model)
    assert sa.keys() == sb.keys() and all(sa[k].tobytes() == sb[k].tobytes() for k in sa)


@pytest.mark.parametrize("variant", saes.NAMES)
def test_every_sae_architecture_resumes_bit_identically_from_an_earlier_checkpoint(variant, tmp_path):
    """A checkpoint every epoch during the reference run itself; resuming from its epoch-1 checkpoint (as after a
    crash that lost the newer one) must end exactly where the reference ended."""
    run = _sae_run(variant, _sae_rows(), epochs=3)
    reference = run(lambda _: None, TrainingCheckpoints(tmp_path / "c", {"t": 1}, EVERY_EPOCH, log=print))
    assert [e for e, _ in ck.list_checkpoints(tmp_path / "c")] == [2, 1]
    shutil.rmtree(ck.checkpoint_path(tmp_path / "c", 2))
    lines = []
    resumed = run(lines.append, TrainingCheckpoints(tmp_path / "c", {"t": 1}, EVERY_EPOCH, resume=True, log=lines.append))
    assert lines[0].endswith("(epoch 1 done)") and len(resumed.log_lines) == 3
    _same_sae(reference, resumed)


@pytest.mark.parametrize("variant", ["anthropic", pytest.param("topk", marks=pytest.mark.slow)])
def test_streamed_chunks_resume_bit_identically_after_a_signal(variant, tmp_path):
    """The .npy path: chunk order from fold_in(key, e), the epoch hook's rows from the epoch; topk's dead-latent
    counters and anthropic's resampling are in the carry."""
    np.save(tmp_path / "acts.npy", _sae_rows(n=500))
    source = open_activations(tmp_path / "acts.npy")
    run = _sae_run(variant, source, chunk_rows=128)
    reference = run(lambda _: None)
    assert reference.step_losses.shape == (4, 3 * 4 + 3)  # 4 chunks (128, 128, 128, 116), full batches only
    resumed, at = _interrupt_then_resume(run, tmp_path / "c", "SAE Epoch [2/4]", signal.SIGTERM)
    assert at == 2
    _same_sae(reference, resumed)
    if variant == "anthropic":
        assert all("resampled" in line for line in resumed.log_lines[:3])


def test_checkpoint_metadata_is_json_and_names_no_absolute_path(tmp_path):
    hook = TrainingCheckpoints(tmp_path / "c", {"seed": 1}, log=lambda _: None)
    path = hook.save(_progress(2))
    meta = ck.read_meta(path)
    assert meta["epoch"] == 2 and meta["identity"] == {"seed": 1}
    # orbax's commit markers (commit_success.txt) name the folder they were committed to; nothing read does
    for p in path.rglob("*"):
        if p.is_file() and p.name != "commit_success.txt":
            assert str(tmp_path).encode() not in p.read_bytes(), p
    json.dumps(meta)
