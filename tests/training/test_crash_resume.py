"""SIGKILL in the middle of every stage, then `--resume` (issue 5, items 3 and 6).

One real `monosem run` process per stage (`-m slow`; `make test` takes the data stage and the last: kills
inside the two training stages are tests/training/test_kill_resume.py's), chained: each is frozen (SIGSTOP) as soon as its stdout shows
that the stage is under way, the run directory is inspected while it is frozen, then it is killed with
SIGKILL, and the next process resumes. After every kill:
  - every artifact present (.xlsx/.pth/.pt/.pt2/.json/.txt under a non-hidden name) loads completely;
  - the artifacts of the stages the manifest records as completed are byte-identical to before;
  - the manifest records only whole stages, and the next `--resume` skips exactly those.
The finished chain must equal an uninterrupted run with the same flags (the session's `tiny_run`),
byte for byte for the torch files. While one process is frozen, a second `monosem run` into the same
directory must be refused by the lock and change nothing.

Nothing here depends on timing: the stop is triggered by a line the stage prints, and every assertion
holds whether or not the kill landed during a write (the inspection records which it was).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import TINY_RUN_ARGS, xlsx_cells
from jax_impl.cli import _config_from_args, build_parser, main
from jax_impl.data.activations import read_activations
from jax_impl.interop import bridge
from jax_impl.jobs.pipeline import STAGES
from jax_impl.jobs.rundir import MANIFEST
from jax_impl.task.splits import read_split

MONOSEM = Path(sys.executable).with_name("monosem")
# The stages a TINY_RUN_ARGS run has (it leaves out the optional circuit stage), in order.
TINY_CONFIG = _config_from_args(build_parser().parse_args(["run", *TINY_RUN_ARGS]))
STAGE_NAMES = [s.name for s in STAGES if s.enabled(TINY_CONFIG)]
ALL_STAGE_NAMES = [s.name for s in STAGES]  # what the `[i/N]` lines count
ARTIFACT_SUFFIXES = {".xlsx", ".pth", ".pt", ".pt2", ".json", ".txt", ".html"}


def _flag(name: str) -> str:
    return TINY_RUN_ARGS[TINY_RUN_ARGS.index(name) + 1]


def _start_line(stage: str) -> str:
    return f"[{ALL_STAGE_NAMES.index(stage) + 1}/{len(STAGES)}]"


# A stdout line printed part-way through a stage (after some of its work is done, more to come).
MID_STAGE_LINES = {
    "data": f"Generating {_flag('--n-val')} rows for mlp_val.xlsx",  # mlp_train.xlsx is already written
    "mlp": "Epoch 1 | Val MSE",  # after the first of several epochs
    "sae": f"SAE Epoch [1/{_flag('--sae-epochs')}]",
}
# Every stage gets a kill point: its part-way line, else its start line `[i/N] ...`. The last stage is
# then also held until a temporary file exists (see _stop_at).
KILL_POINTS = [(name, MID_STAGE_LINES.get(name, _start_line(name))) for name in STAGE_NAMES]
# `make test` kills in the data stage (part-way) and the last one (each kill is a process start, about 6 s); the
# training stages are killed part-way in make test by tests/training/test_kill_resume.py (after a line, mid-write, by
# SIGTERM); `-m slow` kills here in every stage.
CORE_STAGES = {"data", STAGE_NAMES[-1]}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}  # stage lines must reach us as they are printed


def _artifacts(run_dir: Path) -> list[Path]:
    """The run's files (not its checkpoints: orbax's step folders hold .json and .txt files of their own, checked by
    tests/training/test_kill_resume.py through their checksums)."""
    return sorted(
        p for p in run_dir.rglob("*")
        if p.is_file() and p.suffix in ARTIFACT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(run_dir).parts)
        and p.relative_to(run_dir).parts[0] != "checkpoints"
    )


def _temporaries(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob(".*.tmp"))


def check_loads_completely(path: Path) -> None:
    """Raise if `path` is truncated or unreadable, with the reader a user of that file would use."""
    name = path.name
    if path.suffix == ".xlsx" and path.parent.name == "dataset":
        read_split(path)
    elif path.suffix == ".xlsx":  # a report workbook: every cell of every sheet
        assert xlsx_cells(path), path
    elif name == "perfect_mlp.pth":
        bridge.load_mlp(path)
    elif name == "sae_model.pth":
        bridge.load_sae(path)
    elif name == "mlp_activations.pt":
        read_activations(path)
    elif path.suffix in {".pt", ".pt2"}:
        with zipfile.ZipFile(path) as z:  # TorchScript / torch.export archives: every member's CRC
            assert z.testzip() is None, path
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".txt":
        text = path.read_text()
        assert text.endswith("\n") and text.strip(), path
    elif path.suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>"), path


def _completed(run_dir: Path) -> list[str]:
    path = run_dir / MANIFEST
    return list(json.loads(path.read_text())["stages"]) if path.exists() else []


def _stage_files(run_dir: Path, stages) -> dict[str, bytes]:
    by_name = {s.name: s for s in STAGES}
    return {str(rel): (run_dir / rel).read_bytes() for name in stages for rel in by_name[name].outputs}


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(MONOSEM), "run", "--run-dir", str(run_dir), *extra, *TINY_RUN_ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
    )


def _stop_at(proc: subprocess.Popen, fragment: str, run_dir: Path, *, in_a_write: bool = False) -> list[str]:
    """Read stdout until a line contains `fragment`, then SIGSTOP the process; returns the lines read.

    in_a_write: after the line, wait (up to 60 s) for a temporary file to appear and stop the process
    while it exists, i.e. in the middle of writing an artifact. Only for the last stage: if every write
    slips between two looks, the process simply finishes, which the caller's checks accept too.
    """
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if fragment in line:
            deadline = time.monotonic() + 60
            while in_a_write and not _temporaries(run_dir) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            proc.send_signal(signal.SIGSTOP)
            return lines
    proc.wait()
    pytest.fail(f"the run ended (rc {proc.returncode}) without printing {fragment!r}:\n{''.join(lines)}")


def _kill(proc: subprocess.Popen, *, may_have_finished: bool = False) -> None:
    finished = proc.poll() is not None
    proc.kill()  # SIGKILL: no finally blocks, no atexit, no flush
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == (0 if finished and may_have_finished else -signal.SIGKILL), proc.returncode


def _assert_refused_by_lock(run_dir: Path, holder_pid: int) -> None:
    """A second real `monosem run` into a directory whose owner is alive (frozen) is refused, changing nothing."""
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    second = subprocess.run(
        [str(MONOSEM), "run", "--run-dir", str(run_dir), *TINY_RUN_ARGS],
        capture_output=True, text=True, env=_env(), timeout=120,
    )
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert f"another monosem process (pid {holder_pid}) is using this run directory" in second.stderr
    assert "[1/" not in second.stdout  # not a single stage started
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_kill_points_cover_every_stage_part_way():
    assert set(MID_STAGE_LINES) <= set(STAGE_NAMES)
    assert _flag("--mlp-log-every") == "1" and int(_flag("--mlp-epochs")) > 1
    assert _flag("--sae-log-every") == "1" and int(_flag("--sae-epochs")) > 1


@pytest.mark.parametrize("stages", ["core", pytest.param("every", marks=pytest.mark.slow)])
def test_sigkill_in_every_stage_then_resume_matches_an_uninterrupted_run(stages, tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    completed: list[str] = []
    killed_mid_write = []
    for stage, fragment in (p for p in KILL_POINTS if stages == "every" or p[0] in CORE_STAGES):
        before = _stage_files(run_dir, completed)
        proc = _start(run_dir, *(["--resume"] if completed else []))
        last = stage == STAGE_NAMES[-1]
        lines = _stop_at(proc, fragment, run_dir, in_a_write=last)
        # frozen: what a SIGKILL now leaves behind is exactly what is on disk now
        temporaries = _temporaries(run_dir)
        if temporaries:
            killed_mid_write.append((stage, [p.name for p in temporaries]))
        if stage == "mlp":
            _assert_refused_by_lock(run_dir, proc.pid)
        _kill(proc, may_have_finished=last)

        # the resume skipped exactly the stages the previous manifest recorded
        skipped = [line for line in lines if "already completed, skipped (--resume)" in line]
        assert len(skipped) == len(completed), lines
        now = _completed(run_dir)
        assert now == STAGE_NAMES[: len(now)], now  # whole stages, in order
        assert set(STAGE_NAMES[: STAGE_NAMES.index(stage)]) <= set(now) <= set(STAGE_NAMES[: STAGE_NAMES.index(stage) + 1])
        # earlier artifacts untouched, everything present loads completely
        assert _stage_files(run_dir, completed) == before
        for path in _artifacts(run_dir):
            check_loads_completely(path)
        completed = now

        if stage == "mlp":
            # a resume must use the original flags; a changed flag is refused with what differs
            changed = [a if a != "512" else "256" for a in TINY_RUN_ARGS]  # --n-train / --dict-size
            assert main(["run", "--run-dir", str(run_dir), "--resume", *changed]) == 2
            err = capsys.readouterr().err
            assert "cannot resume with a different config" in err and "data.n_train: 512 -> 256" in err

    final = subprocess.run(
        [str(MONOSEM), "run", "--run-dir", str(run_dir), "--resume", *TINY_RUN_ARGS],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    assert final.stdout.count("already completed, skipped (--resume)") == len(completed)
    assert _temporaries(run_dir) == []  # what the kills left behind was swept under the lock
    assert _completed(run_dir) == STAGE_NAMES

    for path in _artifacts(run_dir):
        check_loads_completely(path)
    # the interrupted-and-resumed run is the uninterrupted run (seeded per stage, written deterministically)
    for rel in (rel for stage in STAGES if stage.enabled(TINY_CONFIG) for rel in stage.outputs):
        ours, reference = run_dir / rel, tiny_run / rel
        if rel.suffix == ".xlsx":
            assert xlsx_cells(ours) == xlsx_cells(reference), rel
        elif rel.suffix in {".json", ".html", ".txt"}:  # these may name their run directory
            assert ours.read_bytes().replace(bytes(run_dir), b"RUN") == reference.read_bytes().replace(bytes(tiny_run), b"RUN"), rel
        else:
            assert ours.read_bytes() == reference.read_bytes(), rel
    ours, reference = json.loads((run_dir / MANIFEST).read_text()), json.loads((tiny_run / MANIFEST).read_text())
    assert ours["config"] == reference["config"]
    assert ours["metrics"] == reference["metrics"]  # exact floats
    print("killed while a temporary file existed:", killed_mid_write or "never (all kills between writes)")


def test_stale_temporaries_are_swept_only_under_the_lock(tmp_path):
    """What SIGKILL leaves (`.NAME.monosem-<random>.tmp` files and folders, and `.NAME.<random>.tmp` of earlier
    versions' artifacts) goes at the next run, in the folders the run writes; real files stay."""
    from jax_impl.files.locks import remove_stale_temporaries

    (tmp_path / "mlp").mkdir()
    keep = [tmp_path / "mlp" / "perfect_mlp.pth", tmp_path / ".monosem.lock", tmp_path / "notes.tmp"]
    stale = [tmp_path / ".manifest.json.abc123de.tmp", tmp_path / "mlp" / ".perfect_mlp.pth.monosem-x1y2z3w4.tmp"]
    for p in keep + stale:
        p.write_bytes(b"x")
    staged = tmp_path / ".sae_model.pth.monosem-q9w8e7r6.tmp"
    staged.mkdir()
    (staged / "sae_model.pth").write_bytes(b"half")
    remove_stale_temporaries(tmp_path, ["mlp"])
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in [*stale, staged])


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    """The writer raising half-way (disk full, a bug) leaves the old artifact and no temporary behind."""
    from jax_impl.files.atomic import atomic_path

    target = tmp_path / "perfect_mlp.pth"
    target.write_bytes(b"old")
    for keep_name in (False, True):
        with pytest.raises(RuntimeError), atomic_path(target, keep_name=keep_name) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")
        assert target.read_bytes() == b"old"
        assert list(tmp_path.iterdir()) == [target]
