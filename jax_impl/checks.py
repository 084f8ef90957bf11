"""Checks that every config's validate() and every command share: floats that must be finite, and whether the
memory that the sizes given need is there before anything is allocated.

No JAX and no project imports here (the architectures' configs, jax_impl.saes, import it, and config.py imports
those), so any module can use it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
from types import ModuleType
from typing import Any

from jax_impl.errors import UserError

FLOAT32 = 4  # bytes


def non_finite_field(config: Any) -> tuple[str, float] | None:
    """(name, value) of the first float field of a dataclass instance that is NaN or infinite, else None.

    Comparisons with NaN are all false, so a `value > 0` check lets NaN through, and an infinite learning rate
    or coefficient passes every lower bound: each validate() asks this first."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            return f.name, value
    return None


def require_finite(config: Any, flag: Any = None) -> None:
    """ValueError naming the first NaN/inf float field of `config` (flag(name): how the user spells it)."""
    found = non_finite_field(config)
    if found is not None:
        name, value = found
        raise ValueError(f"{flag(name) if flag else name} must be a finite number, got {value}")


def check_dict_size(dict_size: int, flag: str = "dict_size") -> None:
    """ValueError unless the dictionary has at least one feature (every architecture's validate asks)."""
    if not dict_size >= 1:
        raise ValueError(f"{flag} must be >= 1, got {dict_size}")


def memory_budget() -> int:
    """Bytes this process can still allocate: the kernel's estimate of available memory (MemAvailable, which counts
    reclaimable page cache as free), else the physical memory (os.sysconf); where JAX already runs on an
    accelerator, at most its first device's memory limit too."""
    budget = _host_available()
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            device = jax.local_devices()[0]
            limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
        except Exception:  # noqa: BLE001  (no backend, or one without memory statistics: the host's figure)
            limit = None
        if limit:
            budget = min(budget, int(limit))
    return budget


def _host_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


def physical_memory() -> int:
    """The machine's physical memory in bytes (os.sysconf); 2**62 where it cannot be told (refuse nothing)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (not POSIX) or no such name
        return 1 << 62


def file_budget() -> int:
    """The bytes one file's tensors may claim when read into memory: half the physical memory. A file claiming
    more is refused before anything is allocated (a real one that large would not fit beside the work done with
    it either); files read lazily (`.npy`, activation `.safetensors`) are not held to it (jax_impl.interop.bridge)."""
    return physical_memory() // 2


def check_memory(need: int, flags: str, what: str) -> None:
    """UserError naming `flags` when `need` bytes (an estimate of what `what` holds at once) exceed memory_budget().

    The estimates are lower bounds (parameters, optimizer state, a batch's activations, the rows held), so a
    refusal is certain to be right; a run that passes may still need more than estimated."""
    budget = memory_budget()
    if need > budget:
        raise UserError(f"{flags}: {what} needs at least {format_bytes(need)} of memory, more than the {format_bytes(budget)} "
                        "available here; lower them")


def format_bytes(n: int) -> str:
    """A byte count for a message: 4 bytes, 11.5 GiB, 1.8 PiB."""
    if n >= 1 << 70:  # beyond a float's comfortable range for the flags' unbounded ints (10**400 is a valid int)
        return "more than 1 ZiB"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


MAX_SEED = 2**63 - 1  # jax.random.key takes a signed 64-bit seed


def check_seed(seed: int, flag: str = "--seed") -> None:
    """UserError naming the flag when `seed` cannot seed jax.random.key."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{flag} must be in 0..{MAX_SEED} (a PRNG seed), got {seed}")


def json_type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def section_from_dict(kind: type, d: Any, where: str) -> Any:
    """One section dataclass (kind) from its dict d, every field given of its default's type; ValueError naming `where`
    (the key path, e.g. config.sae) otherwise. Used by every reader of a config from a file (manifest, SAELens
    metadata, synthetic config)."""
    fields = {f.name: f for f in dataclasses.fields(kind)}
    if not isinstance(d, dict):
        raise ValueError(f"{where} holds {json_type_name(d)}, expected an object with keys {list(fields)}")
    unknown = sorted(set(d) - set(fields), key=str)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown} (expected some of {list(fields)})")
    values = {}
    for name, f in fields.items():
        if name not in d:
            continue  # a field added after the file was written: its default
        want, value = type(f.default), d[name]
        if want is tuple and isinstance(value, list):  # JSON has no tuples (e.g. matryoshka's groups: ints)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{where}.{name} holds {value!r:.40}, expected a list of integers")
            value = tuple(value)
        ok = isinstance(value, want) and not isinstance(value, bool)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ValueError(f"{where}.{name} holds {json_type_name(value)} {value!r:.40}, expected {json_type_name(want())}")
        values[name] = value
    return kind(**values)


# --------------------------------------------------------------------------- PyTorch, an optional import


def require_torch(what: str) -> ModuleType:
    """torch, imported on first use: the JAX side (training on .npy / .safetensors, the API) runs without it.

    UserError "WHAT needs PyTorch, which is not installed (...)" where it is missing; `what` names the file or
    command that needed it."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise UserError(f"{what} needs PyTorch, which is not installed (pip install torch; the .safetensors "
                        "files hold the same tensors)") from None


def loaded_torch() -> ModuleType | None:
    """torch if something has imported it, else None: no value can be a torch.Tensor before torch is imported,
    so an isinstance check needs no import of its own."""
    return sys.modules.get("torch")
