"""Same seed, same config, same machine (CPU) -> the same files (issue 5, item 5).

`.pth` / `.pt` / `.pt2` byte for byte, xlsx cell for cell (an xlsx also stores its creation time),
`probe.txt` and the manifest's metrics exactly. test_crash_resume.py checks the same across processes
and across SIGKILL + --resume; docs/devices.md says what is and is not guaranteed on GPU.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import TINY_RUN_ARGS, xlsx_cells
from jax_impl.cli import main
from jax_impl.interop import bridge
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.task.pointer import generate_splits
from jax_impl.task.splits import write_split


@pytest.fixture(scope="module")
def second_run(tiny_run, tmp_path_factory) -> Path:
    """A second run with exactly tiny_run's flags, in the same process, into another directory."""
    run_dir = tmp_path_factory.mktemp("second_run")
    assert main(["run", "--run-dir", str(run_dir), *TINY_RUN_ARGS]) == 0
    return run_dir


def _files(run_dir: Path, *patterns: str) -> list[Path]:
    return sorted(p.relative_to(run_dir) for pattern in patterns for p in run_dir.rglob(pattern))


def test_torch_files_are_byte_identical(tiny_run, second_run):
    names = _files(tiny_run, "*.pth", "*.pt2", "mlp_activations.pt")
    assert {str(n) for n in names} >= {"mlp/perfect_mlp.pth", "sae/sae_model.pth", "mlp_activations.pt"}
    assert names == _files(second_run, "*.pth", "*.pt2", "mlp_activations.pt")
    for rel in names:
        assert (tiny_run / rel).read_bytes() == (second_run / rel).read_bytes(), rel


def test_torchscript_files_are_byte_identical(tiny_run, second_run):
    # torch.jit.save names its archive after the file too: export.py writes through atomic_path(keep_name=True)
    names = _files(tiny_run, "*.torchscript.pt")
    assert names and names == _files(second_run, "*.torchscript.pt")
    for rel in names:
        assert (tiny_run / rel).read_bytes() == (second_run / rel).read_bytes(), rel


def test_xlsx_cells_probe_and_metrics_are_identical(tiny_run, second_run):
    for rel in _files(tiny_run, "*.xlsx"):
        assert xlsx_cells(tiny_run / rel) == xlsx_cells(second_run / rel), rel
    assert (tiny_run / "probe.txt").read_bytes() == (second_run / "probe.txt").read_bytes()
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (tiny_run, second_run))
    assert first["config"] == second["config"]
    assert first["metrics"] == second["metrics"]  # floats compared exactly


def test_causal_map_is_byte_identical(tiny_run, second_run):
    for rel in ("causal/causal.json", "causal/causal.html"):
        assert (tiny_run / rel).read_bytes() == (second_run / rel).read_bytes(), rel


def test_torch_save_bytes_do_not_depend_on_the_temporary_name_or_folder(tmp_path):
    """The defect this guards against: torch.save names its zip records after the file it writes, and the
    file it writes is the atomic temporary `.perfect_mlp.pth.<random>.tmp`; every save then differed."""
    model = InterpretabilityMLP(10, rngs=nnx.Rngs(0))
    paths = [tmp_path / d / "perfect_mlp.pth" for d in ("a", "b/c")]
    for path in paths:
        bridge.save_mlp(model, path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with zipfile.ZipFile(paths[0]) as z:
        # the same record names as `torch.save(sd, "perfect_mlp.pth")`, as in upstream's published file
        assert {name.split("/")[0] for name in z.namelist()} == {"perfect_mlp"}
    # no temporary left: the .pth and its safetensors twin, nothing else
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["perfect_mlp.pth", "perfect_mlp.safetensors"]
    assert paths[0].with_suffix(".safetensors").read_bytes() == paths[1].with_suffix(".safetensors").read_bytes()
    acts = np.arange(6 * 512, dtype=np.float32).reshape(6, 512)
    for d in ("x", "y"):
        bridge.save_activations(acts, tmp_path / d / "mlp_activations.pt")
    assert (tmp_path / "x" / "mlp_activations.pt").read_bytes() == (tmp_path / "y" / "mlp_activations.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "x" / "mlp_activations.pt", weights_only=True), torch.from_numpy(acts))


def test_the_comparison_can_tell_runs_apart(tmp_path):
    """Another seed gives other data (so the identity checks above are not comparing constants)."""
    sizes = {"train": 32}
    a = generate_splits(jax.random.key(7), sizes)["train"]
    b = generate_splits(jax.random.key(8), sizes)["train"]
    write_split(tmp_path / "a.xlsx", a)
    write_split(tmp_path / "b.xlsx", b)
    write_split(tmp_path / "a2.xlsx", generate_splits(jax.random.key(7), sizes)["train"])
    assert xlsx_cells(tmp_path / "a.xlsx") == xlsx_cells(tmp_path / "a2.xlsx")
    assert xlsx_cells(tmp_path / "a.xlsx") != xlsx_cells(tmp_path / "b.xlsx")
