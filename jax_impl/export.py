"""`monosem export`: the run's models as self-contained PyTorch programs.

For each model two files under `RUN_DIR/export/`: a TorchScript module (`*.torchscript.pt`, for
`torch.jit.load`) and a `torch.export` program (`*.pt2`, for `torch.export.load`) whose batch
dimension is dynamic. Both carry their own code, so they load in a process that cannot import this
project. The MLP returns `(prediction (N, 1), layer2 (N, 512))`, the SAE `(reconstruction, features)`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from jax_impl import bridge, saelens
from jax_impl.atomic import atomic_path
from jax_impl.rundir import MLP_PATH, SAE_PATH, SAELENS_DIR
from jax_impl.models import InterpretabilityMLP
from jax_impl.saes import SAE
from torch_ref.models import mlp_from_state_dict
from torch_ref.saes import sae_from_state_dict  # any SAE architecture, told apart by its keys

EXPORT_DIR = Path("export")
EXPORT_FILES = {
    "mlp_torchscript": EXPORT_DIR / "mlp.torchscript.pt",
    "mlp_pt2": EXPORT_DIR / "mlp.pt2",
    "sae_torchscript": EXPORT_DIR / "sae.torchscript.pt",
    "sae_pt2": EXPORT_DIR / "sae.pt2",
}

# torch 2.13 deprecates TorchScript in favour of torch.export; we ship both formats on purpose, so only
# that one message, from torch.jit itself, is silenced.
_TORCHSCRIPT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"

# An example batch of 4 rows: torch.export specialises sizes 0 and 1, so the example must be larger.
_EXAMPLE_ROWS = 4


def _write_torchscript(module: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=_TORCHSCRIPT_DEPRECATED, category=DeprecationWarning, module=r"torch\.jit\."
        )
        scripted = torch.jit.script(module)
        # keep_name: the archive's records are named after the file, so the bytes must not depend on
        # the random temporary name.
        with atomic_path(path, keep_name=True) as tmp:
            torch.jit.save(scripted, str(tmp))


def _write_pt2(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    # keep_name also gives torch.export.save the `.pt2` name it expects (it warns about any other).
    with atomic_path(path, keep_name=True) as tmp:
        torch.export.save(program, tmp)


def _export(module: torch.nn.Module, in_features: int, torchscript_path: Path, pt2_path: Path) -> None:
    # An inference artifact: eval-mode BatchNorm and no autograd bookkeeping on the outputs.
    module = module.eval().requires_grad_(False)
    _write_torchscript(module, torchscript_path)
    _write_pt2(module, torch.zeros(_EXAMPLE_ROWS, in_features), pt2_path)


def export_models(mlp: InterpretabilityMLP, sae: SAE, run_dir: Path | str) -> dict[str, Path]:
    """Write the four EXPORT_FILES under `run_dir` (each atomically); returns their paths by name."""
    run_dir = Path(run_dir)
    paths = {name: run_dir / rel for name, rel in EXPORT_FILES.items()}
    torch_mlp = mlp_from_state_dict(bridge.mlp_to_state_dict(mlp))
    torch_sae = sae_from_state_dict(bridge.sae_to_state_dict(sae))
    _export(torch_mlp, mlp.input.in_features, paths["mlp_torchscript"], paths["mlp_pt2"])
    _export(torch_sae, sae.input_dim, paths["sae_torchscript"], paths["sae_pt2"])
    return paths


def export_run(run_dir: Path | str) -> dict[str, Path]:
    """Export the `.pth` models of a finished run (read with weights_only=True, validated by the bridge), and
    (re)write the SAE's SAELens folder and the `.safetensors` twins, for runs written before they existed."""
    run_dir = Path(run_dir)
    mlp, sae = bridge.load_mlp(run_dir / MLP_PATH), bridge.load_sae(run_dir / SAE_PATH)
    paths = export_models(mlp, sae, run_dir)
    for path, state in ((MLP_PATH, bridge.mlp_to_state_dict(mlp)), (SAE_PATH, bridge.sae_to_state_dict(sae))):
        paths[f"{path.stem}_safetensors"] = run_dir / bridge.safetensors_twin(path)
        bridge.write_safetensors(state, paths[f"{path.stem}_safetensors"])
    paths["sae_saelens"] = saelens.save_saelens(sae, run_dir / SAELENS_DIR)
    return paths
