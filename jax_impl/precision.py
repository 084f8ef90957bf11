"""The matmul precision of the project's own computations, set for the length of a call, never for the process.

Float32 matmuls must stay float32 on accelerators (GPUs would otherwise use TF32), or the parity with the PyTorch
reference is lost at the third decimal. `import jax_impl` changes no JAX setting: the command line
(jax_impl.cli.main) enters `matmul_precision()`, and each public function that computes is wrapped in
`@highest_precision`; both set `jax.default_matmul_precision` for their own thread and restore it on return.
JAX keys its jit caches on that setting (it is part of the trace context), so a function compiled outside the
scope is traced again inside it, never reused at another precision. On CPUs every precision gives the same bits.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import ParamSpec, TypeVar

import jax

MATMUL_PRECISION = "highest"
MARK = "__matmul_precision__"  # set on a function wrapped by highest_precision (the public API's test reads it)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def matmul_precision() -> AbstractContextManager[None]:
    """A context in which JAX traces float32 matmuls at MATMUL_PRECISION (this thread only)."""
    return jax.default_matmul_precision(MATMUL_PRECISION)


def highest_precision(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """`func` run inside `matmul_precision()`: the decorator of the public functions that compute."""
    if inspect.isgeneratorfunction(func) or inspect.iscoroutinefunction(func):
        # The scope would end when the generator is created, before its body runs.
        raise TypeError(f"{func.__qualname__}: highest_precision wraps plain functions, not generators")

    @functools.wraps(func)
    def scoped(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return func(*args, **kwargs)

    setattr(scoped, MARK, MATMUL_PRECISION)
    return scoped
