"""`train-sae --coordinator ... --resume` (issue 27): two processes on 127.0.0.1 (CPU, gloo collectives) checkpoint
every epoch through orbax into the one folder both reach; process 1 is killed after a checkpoint (process 0's
watchdog ends it with one line), both are started again with --resume and write the bytes of an uninterrupted
two-process run. Each process is a `monosem train-sae` of its own, as on two hosts.
"""

from __future__ import annotations

import json
import re

import pytest
from test_distributed import errors, free_port, launch

from jax_impl.training import checkpoints as ck

EPOCHS = 12
FILES = ("sae.pth", "sae.safetensors", "saelens/sae_weights.safetensors", "saelens/cfg.json", "sae_config.json")


def _run_pair(activations, out, *extra):
    port = free_port()
    procs = [launch(activations, out, i, port, epochs=EPOCHS, timeout=5, extra=["--log-every", "1",
                                                                                "--checkpoint-every", "1", *extra])
             for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    return outs


# Three pairs of processes, each a minute on 2 shared cores: -m slow.
@pytest.mark.slow
def test_two_processes_killed_after_a_checkpoint_resume_to_the_uninterrupted_bytes(activations, tmp_path):
    reference = tmp_path / "reference"
    _run_pair(activations, reference)
    assert not (reference / "checkpoints").exists()

    out = tmp_path / "out"
    port = free_port()
    procs = [launch(activations, out, i, port, epochs=EPOCHS, timeout=5,
                    extra=["--log-every", "1", "--checkpoint-every", "1"]) for i in (0, 1)]
    try:
        for line in procs[0].stdout:  # epoch 4's line: epochs 1..3 are checkpointed (by both processes)
            if line.startswith(f"SAE Epoch [4/{EPOCHS}]"):
                break
        procs[1].kill()
        _, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode == 2 and len(errors(err)) == 1 and "process 1 of 2" in errors(err)[0], err[-2000:]
    saved = ck.list_checkpoints(out / "checkpoints")
    assert saved and 3 <= saved[0][0] < EPOCHS and len(saved) <= ck.KEEP + 1, saved
    for _, step in saved:
        ck.read_step(step)  # complete, checksums valid
    assert not (out / "sae.pth").exists()

    outs = _run_pair(activations, out, "--resume")
    resumed = re.search(r"Resuming from .*/checkpoints/ckpt_(\d+) \(epoch (\d+) done\)", outs[0][0])
    assert resumed and int(resumed.group(2)) >= 3, outs[0][0][-2000:]
    assert "Resuming" not in outs[1][0]  # process 0 alone prints
    for name in FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    assert {k: v for k, v in ours.items() if k != "train_seconds"} == {k: v for k, v in theirs.items()
                                                                      if k != "train_seconds"}
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_resume_of_two_processes_with_no_checkpoint_trains_from_the_first_epoch(activations, tmp_path):
    outs = _run_pair(activations, tmp_path / "out", "--resume")
    assert "No checkpoint in" in outs[0][0] and (tmp_path / "out" / "sae.pth").exists()
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_processes_given_checkpoint_folders_of_their_own_end_with_one_line(activations, tmp_path):
    """orbax's saves are collective over one folder: process 1 with another --out would wait forever."""
    port = free_port()
    every = ["--checkpoint-every", "1"]
    procs = [launch(activations, tmp_path / "zero", 0, port, extra=every),
             launch(activations, tmp_path / "one", 1, port, extra=every)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], [o[1][-2000:] for o in outs]
    assert errors(outs[1][1]) == [f"monosem: error: {tmp_path / 'one' / 'checkpoints'}: process 1's checkpoint folder "
                                  "is not process 0's; a multi-process run checkpoints into one folder that every "
                                  "process reaches under the same path: give every process the same output folder (on "
                                  "a shared file system), or turn checkpoints off"]
    assert len(errors(outs[0][1])) == 1 and "process 1 of 2 failed" in errors(outs[0][1])[0]
    assert not (tmp_path / "zero" / "sae.pth").exists()
