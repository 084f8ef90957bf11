"""SIGINT / SIGTERM as a request to stop at the next safe point, not an exception at any bytecode.

Inside a training loop (`deferred()`), the first signal only records itself and prints one line: the loop
finishes its epoch, saves a checkpoint and raises `errors.Interrupted` (jax_impl.training.loop.run_epochs). Outside
one, the first signal raises `Interrupted` at once, like Ctrl-C always does (every artifact is written
atomically, so nothing is left half-written). Either way the handlers go back to the default action as
soon as the first signal arrives, so a second SIGINT/SIGTERM ends the process at once, even inside a
compiled XLA call, and whatever checkpoint was complete stays on disk.

`monosem run` / `train-sae` hold `handled()` for their whole duration; `deferred()` installs the handlers
by itself when nobody did (a notebook calling the Python API), and does nothing outside the main thread
(Python delivers signals to the main thread only).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from jax_impl.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_pending: int | None = None  # the signal received and not yet acted on
_deferring = 0  # depth of deferred() blocks
_installed = False


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum: int, frame) -> None:  # noqa: ARG001 - the signal module's signature
    global _pending
    _pending = signum
    for s in SIGNALS:  # a second signal takes the default action: the process ends at once
        signal.signal(s, signal.SIG_DFL)
    if _deferring:
        os.write(2, f"monosem: {signal_name(signum)} received: finishing this epoch and saving a checkpoint "
                    f"(send it again to stop at once)\n".encode())
        return
    raise Interrupted(signum, f"interrupted by {signal_name(signum)}; completed work is kept: run the same "
                              "command with --resume to continue")


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT/SIGTERM handled as described above for the block; the previous handlers come back after it."""
    global _installed, _pending
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _installed, _pending = True, None
    try:
        for s in SIGNALS:
            signal.signal(s, _handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _installed, _pending = False, None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals received in the block wait for `pending()` to be checked (installs the handlers if needed)."""
    global _deferring
    with handled():
        _deferring += 1
        try:
            yield
        finally:
            _deferring -= 1


def pending() -> int | None:
    """The signal number received (and not yet acted on) inside deferred(), else None."""
    return _pending
