"""An epoch's rows of an activation source as chunks for the trainer: block order (today's), an optional shuffle
buffer that mixes rows across blocks and shards, and a prefetch thread that reads the next chunk while the device
trains on this one.

Which rows a chunk holds depends only on the source, `chunk_rows`, `shuffle_buffer` and the epoch's rng, never on
the timing of the reads: the prefetch thread changes when a chunk is read, not what it holds.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jax_impl.data.activations import ActivationFile, iter_chunks

_POLL_S = 0.1  # how often a blocked prefetch thread looks whether its consumer has gone


def stream_chunks(source: ActivationFile, chunk_rows: int, rng: np.random.Generator, *, shuffle_buffer: int = 0,
                  prefetch: int = 1, transform: Callable[[np.ndarray], Any] | None = None) -> Iterator[Any]:
    """Every row of `source` exactly once, as (<= chunk_rows, width) float32 chunks (`transform`ed where given, e.g.
    put on the device), the rng's draws made when this is called.

    shuffle_buffer 0: iter_chunks' contiguous blocks in a random order (the chunks and the rng's state afterwards
    are exactly iter_chunks'). shuffle_buffer B > 0: the blocks are read in that random order into a buffer, and
    each chunk is chunk_rows rows drawn at random from the buffer once it holds B + chunk_rows rows (the rest when
    the blocks run out): a chunk mixes rows of about B / chunk_rows + 1 blocks from anywhere in the set, which a
    token-ordered set needs. Every chunk but the last holds chunk_rows rows (the last n_rows % chunk_rows, or
    chunk_rows), so an epoch has the same number of optimizer steps either way. Peak memory: B + 2 * chunk_rows rows.

    prefetch: chunks a background thread reads (and transforms) ahead of the consumer (0: none, read in the
    caller's thread)."""
    if int(shuffle_buffer) < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    if int(prefetch) < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    if shuffle_buffer == 0:
        chunks = iter_chunks(source, chunk_rows, rng)
    else:
        chunks = _buffered(source, int(chunk_rows), rng, int(shuffle_buffer))
    if transform is not None:
        chunks = map(transform, chunks)
    return prefetched(chunks, int(prefetch)) if prefetch else chunks


def _buffered(source: ActivationFile, chunk_rows: int, rng: np.random.Generator, buffer_rows: int
              ) -> Iterator[np.ndarray]:
    blocks = iter_chunks(source, chunk_rows, rng)  # the block order is drawn now
    draws = np.random.default_rng(rng.integers(0, 2**63))  # and the stream of in-buffer draws' seed
    return _drain(blocks, source.width, chunk_rows, buffer_rows, draws)


def _drain(blocks: Iterator[np.ndarray], width: int, chunk_rows: int, buffer_rows: int, draws: np.random.Generator
           ) -> Iterator[np.ndarray]:
    pool = np.empty((buffer_rows + 2 * chunk_rows, width), np.float32)
    held = 0

    def take(k: int) -> np.ndarray:
        # k rows at random out of the pool; the holes they leave are filled with the pool's last unpicked rows, so a
        # draw costs O(k) copies, not a copy of the pool.
        nonlocal held
        picked = draws.choice(held, size=k, replace=False)
        out = pool[picked]
        is_picked = np.zeros(held, bool)
        is_picked[picked] = True
        holes = picked[picked < held - k]
        tail = np.flatnonzero(~is_picked[held - k:]) + held - k
        pool[holes] = pool[tail]
        held -= k
        return out

    for block in blocks:
        pool[held:held + len(block)] = block
        held += len(block)
        while held >= buffer_rows + chunk_rows:
            yield take(chunk_rows)
    while held:
        yield take(min(chunk_rows, held))


_END = object()


def prefetched(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """`items`, produced by a background thread up to `depth` ahead of the consumer. An exception in the thread is
    raised to the consumer at the item where it happened; a consumer that stops early (closes the generator, or
    drops it) stops the thread within _POLL_S of its current item."""
    out: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                out.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
            put((_END, e))
            return
        put((_END, None))

    thread = threading.Thread(target=produce, name="prefetch-chunks", daemon=True)
    thread.start()
    try:
        while True:
            item, error = out.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
