"""`monosem export`: the run's models as self-contained PyTorch programs.

For each model two files under `RUN_DIR/export/`: a TorchScript module (`*.torchscript.pt`, for
`torch.jit.load`) and a `torch.export` program (`*.pt2`, for `torch.export.load`) whose batch
dimension is dynamic. Both carry their own code, so they load in a process that cannot import this
project. The MLP returns `(prediction (N, 1), layer2 (N, 512))`, the SAE `(reconstruction, features)`.

`monosem export` (export_run) writes the four programs, the `.safetensors` twins and the SAELens folder as one
artifact set (jax_impl.files.artifact_set) under the run directory's lock: all of them or, on any failure, none.
The archives' bytes depend on neither the checkout's place nor PYTHONHASHSEED.
"""

from __future__ import annotations

import os
import pickletools
import re
import warnings
from pathlib import Path

import torch

import monosem_torch_ref
from jax_impl.data.activations import read_activations
from jax_impl.files.artifact_set import artifact_set
from jax_impl.files.atomic import atomic_path
from jax_impl.files.locks import folder_lock, remove_stale_temporaries
from jax_impl.interop import bridge, saelens
from jax_impl.jobs.rundir import ACTIVATIONS_PATH, MLP_PATH, SAE_PATH, SAELENS_DIR, WRITTEN_FOLDERS
from jax_impl.models.mlp import InterpretabilityMLP
from jax_impl.saes import SAE
from monosem_torch_ref.models import mlp_from_state_dict
from monosem_torch_ref.saes import sae_from_state_dict  # any SAE architecture, told apart by its keys

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


# --- no absolute paths in the programs ----------------------------------------------------------------------
# Both formats record where their code came from: TorchScript keeps, beside each code file, a pickled table
# of source ranges with the absolute file name (`code/.../models.py.debug_pkl`), and torch.export keeps each
# node's Python stack trace. Written as they are, the files would carry the checkout's and the virtualenv's
# paths (and with them the user's name), and differ between two checkouts. Every file name is rewritten
# to its path inside its package, named as it is imported (`monosem_torch_ref/models.py`, whether it is run from
# the checkout's torch_ref/ folder or installed; `torch/nn/modules/linear.py`).

_TRACE_FILE = re.compile(r'File "([^"]+)"')


def package_relative(filename: str) -> str:
    """An absolute source file name as its path from the top of its package (the folders above it that have
    an `__init__.py`), the top folder named as its package is imported, e.g. /home/u/repo/torch_ref/models.py ->
    monosem_torch_ref/models.py; any other absolute name becomes its base name. Relative names are returned as
    they are."""
    if not os.path.isabs(filename):
        return filename
    path = Path(filename)
    top = path.parent
    while (top / "__init__.py").is_file() and top.parent != top:
        top = top.parent
    if top == path.parent:
        return path.name
    relative = path.relative_to(top).parts
    package = _IMPORT_NAMES.get(str(top / relative[0]), relative[0])
    return "/".join((package, *relative[1:]))


# The reference's folder (torch_ref/ in a checkout) under the name it is imported by.
_IMPORT_NAMES = {str(Path(monosem_torch_ref.__file__).parent): monosem_torch_ref.__name__}


def _relative_strings_in_pickle(data: bytes) -> bytes | None:
    """`data` (a pickle) with every absolute file name among its strings made package_relative, found by
    reading its opcodes (nothing is unpickled). None when it cannot be rewritten that way (framed pickles,
    protocol 4+, record their frame lengths)."""
    ops = list(pickletools.genops(data))
    if any(op.name == "FRAME" for op, _, _ in ops):
        return None
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    out, last = [], 0
    for (op, arg, pos), end in zip(ops, ends, strict=True):
        if op.name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE") and isinstance(arg, str) \
                and os.path.isabs(arg):
            encoded = package_relative(arg).encode("utf-8")
            out += [data[last:pos], b"X", len(encoded).to_bytes(4, "little"), encoded]
            last = end
    return b"".join([*out, data[last:]])


# TorchScript declares a module's constants (`eps : Final[float] = 1e-05`, `in_features : Final[int] = 20`) in
# the iteration order of a Python set of their names (torch.jit._recursive.infer_concrete_type_builder), which
# follows the process's string hash seed: the same module scripted under two PYTHONHASHSEEDs gave two archives.
# Each run of consecutive declarations is put in name order; the order carries no meaning (each is a named class
# attribute), the run keeps its length, so the debug tables' byte offsets into the code still hold.
_CONSTANT_LINE = re.compile(rb"  [A-Za-z_]\w* : Final\[.*\] = .*")


def _constants_in_name_order(code: bytes) -> bytes:
    """TorchScript code with each run of consecutive constant declarations sorted by name."""
    lines = code.split(b"\n")
    out, run = [], []
    for line in lines:
        if _CONSTANT_LINE.fullmatch(line):
            run.append(line)
            continue
        out += sorted(run) + [line]
        run = []
    return b"\n".join(out + sorted(run))


def _without_absolute_paths(path: Path) -> None:
    """Rewrite the TorchScript archive at `path` (in place) with package-relative file names in its debug
    tables (a table that cannot be rewritten is left out: TorchScript loads and runs without them) and its
    constants in name order (_constants_in_name_order), so its bytes follow neither the checkout's place nor
    PYTHONHASHSEED.

    torch's own archive reader and writer (torch._C, private, fine with torch pinned) keep its layout: records
    aligned for memory mapping, and the serialization id recomputed from what is written."""
    reader = torch._C.PyTorchFileReader(str(path))
    records = [(name, reader.get_record(name)) for name in reader.get_all_records()]
    del reader
    writer = torch._C.PyTorchFileWriter(str(path))
    for name, data in records:
        if name == ".data/serialization_id":
            continue  # the writer computes it from the records it writes
        if name.endswith(".debug_pkl"):
            data = _relative_strings_in_pickle(data)
            if data is None:
                continue
        elif name.startswith("code/") and name.endswith(".py"):
            data = _constants_in_name_order(data)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()


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
            _without_absolute_paths(tmp)


def _write_pt2(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    for graph_module in program.graph_module.modules():
        if isinstance(graph_module, torch.fx.GraphModule):
            for node in graph_module.graph.nodes:
                if node.meta.get("stack_trace"):
                    node.meta["stack_trace"] = _TRACE_FILE.sub(
                        lambda m: f'File "{package_relative(m.group(1))}"', node.meta["stack_trace"])
    # keep_name also gives torch.export.save the `.pt2` name it expects (it warns about any other).
    with atomic_path(path, keep_name=True) as tmp:
        torch.export.save(program, tmp)


def _export(module: torch.nn.Module, in_features: int, torchscript_path: Path, pt2_path: Path) -> None:
    # An inference artifact: eval-mode BatchNorm and no autograd bookkeeping on the outputs.
    module = module.eval().requires_grad_(False)
    _write_torchscript(module, torchscript_path)
    _write_pt2(module, torch.zeros(_EXAMPLE_ROWS, in_features), pt2_path)


def export_models(mlp: InterpretabilityMLP, sae: SAE, run_dir: Path | str) -> dict[str, Path]:
    """Write the four EXPORT_FILES of `mlp` and `sae` (TorchScript and torch.export programs) under `run_dir`
    (each atomically; the pipeline gives its stage's staging folder); returns their paths by name."""
    run_dir = Path(run_dir)
    paths = {name: run_dir / rel for name, rel in EXPORT_FILES.items()}
    torch_mlp = mlp_from_state_dict(bridge.mlp_to_state_dict(mlp))
    torch_sae = sae_from_state_dict(bridge.sae_to_state_dict(sae))
    _export(torch_mlp, mlp.input.in_features, paths["mlp_torchscript"], paths["mlp_pt2"])
    _export(torch_sae, sae.input_dim, paths["sae_torchscript"], paths["sae_pt2"])
    return paths


def export_run(run_dir: Path | str) -> dict[str, Path]:
    """Export the `.pth` models of a finished run (read with weights_only=True, validated by the bridge), and
    (re)write the SAE's SAELens folder and the `.safetensors` twins, for runs written before they existed; all
    of them one artifact set, under the run directory's lock. Returns their paths by name."""
    run_dir = Path(run_dir)
    bridge.load_mlp(run_dir / MLP_PATH), bridge.load_sae(run_dir / SAE_PATH)  # checked first: a wrong --run-dir stays as it is
    with folder_lock(run_dir, flag="--run-dir", what="run directory"):
        remove_stale_temporaries(run_dir, WRITTEN_FOLDERS)
        mlp, sae = bridge.load_mlp(run_dir / MLP_PATH), bridge.load_sae(run_dir / SAE_PATH)  # as the tidying left them
        with artifact_set(run_dir) as staging:
            written = export_models(mlp, sae, staging)
            for path, state in ((MLP_PATH, bridge.mlp_to_state_dict(mlp)), (SAE_PATH, bridge.sae_to_state_dict(sae))):
                written[f"{path.stem}_safetensors"] = staging / bridge.safetensors_twin(path)
                bridge.write_safetensors(state, written[f"{path.stem}_safetensors"])
            activations = run_dir / ACTIVATIONS_PATH  # the SAE's training rows: its feature densities
            rows = read_activations(activations, width=sae.input_dim) if activations.is_file() else None
            written["sae_saelens"] = saelens.save_saelens(sae, staging / SAELENS_DIR, activations=rows)
    return {name: run_dir / path.relative_to(staging) for name, path in written.items()}


def export_sae(sae: SAE, torchscript_path: Path | str) -> Path:
    """A TorchScript program of one SAE (any architecture) at torchscript_path, written atomically."""
    module = sae_from_state_dict(bridge.sae_to_state_dict(sae)).eval().requires_grad_(False)
    _write_torchscript(module, Path(torchscript_path))
    return Path(torchscript_path)
