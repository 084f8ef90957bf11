"""Many hosts: JAX's multi-process runtime (`jax.distributed.initialize`) with CPU gloo collectives.

`train-sae --coordinator HOST:PORT --num-processes P --process-id I` starts one process per host (process 0's
host runs the coordination service at HOST:PORT). Every process reads only its shard of the activation rows
(`shard_range`: P contiguous blocks of ceil(N / P) rows, the last padded with rows that are never drawn), and
the shards form one global array over a mesh of every process's devices (`global_rows`). The training step is
the data-parallel one (jax_impl.training.devices): each batch is gathered from the global rows, split over all
devices, and the gradients are reduced by the compiler, so all processes hold the same parameters. Process 0
alone writes the artifacts (atomically).

A missing peer must not leave the others waiting forever, nor end them with the runtime's fatal-error dump:
the `Watchdog` thread gives the processes `timeout_s` to join, then publishes a heartbeat in the coordination
service's key-value store and watches the peers'. A peer that never joins, dies or stops responding ends
every other process within about `timeout_s` with one line naming it (`monosem: error: ...`, exit 2, via
os._exit: the main thread may be blocked inside a collective). The runtime's own timeouts are set longer, so
the watchdog speaks first; `jax_enable_recoverability` stops the coordination service from turning a dead
peer into a fatal error of every process.

The coordination service runs in a small process of its own on process 0's host (`_ServiceProcess`), not
inside process 0: the runtime of every other process aborts at once (a check failure, exit 134) when it loses
the service, and the hook it offers for that cannot be called from Python in this jaxlib. So process 0's
death is a missing peer like any other: the service lives on, the others' watchdogs see process 0's heartbeat
stop and end with one line; the service process leaves a while after process 0 (`_serve`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_impl.errors import UserError

AXIS = "data"  # the mesh axis, as jax_impl.training.devices
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 86400.0  # --peer-timeout: a day; larger is no timeout at all, and past int32 the runtime refuses it
MAX_PROCESSES = 1 << 16  # --num-processes: the runtime counts tasks in an int32; far beyond any cluster we run
_RUNTIME_MARGIN_S = 60  # the runtime's own timeouts exceed ours by this much, so the watchdog speaks first
_POLL_S = 0.5
# How much longer than --peer-timeout the coordination service outlives a process 0 that died: the others'
# watchdogs need the timeout to notice, a few polls to say so through the service, and a slow start's slack.
_SERVICE_LINGER_MARGIN_S = 15


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-process run."""

    coordinator: str  # HOST:PORT of process 0's coordination service
    num_processes: int
    process_id: int
    timeout_s: float = DEFAULT_TIMEOUT_S  # how long a peer may be missing or silent

    def validate(self) -> Cluster:
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--coordinator {self.coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:8476")
        if not 1 <= self.num_processes <= MAX_PROCESSES:
            raise UserError(f"--num-processes must be in 1..{MAX_PROCESSES}, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise UserError(f"--process-id must be in 0..{self.num_processes - 1} (--num-processes {self.num_processes}), "
                            f"got {self.process_id}")
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:  # not NaN either; the runtime takes whole seconds as an int32
            raise UserError(f"--peer-timeout must be > 0 seconds and at most {MAX_TIMEOUT_S:g} (a day), got {self.timeout_s}")
        return self

    @property
    def is_writer(self) -> bool:
        """Process 0 alone writes the artifacts."""
        return self.process_id == 0


_ACTIVE: list[Watchdog] = []  # this process's watchdog once start() ran
_SERVICES: list[_ServiceProcess] = []  # process 0's coordination service process, once started


def fail(message: str) -> None:
    """End this process now with one line and exit code 2, telling the peers why (so they end too, naming this
    process). os._exit: no atexit handlers (the runtime's shutdown would wait for a missing peer), no waiting on
    a thread stuck in a collective. Process 0 leaves last: it waits (at most the timeout) for the peers that still
    answer to leave, then stops the coordination service's process (_ServiceProcess), which would otherwise
    linger for the peers of a process 0 that died."""
    watchdog = _ACTIVE[0] if _ACTIVE else None
    if watchdog is not None and watchdog.joined.is_set():
        c = watchdog.cluster
        with contextlib.suppress(Exception):
            client = _client()
            client.key_value_set(_key("error", c.process_id), message, allow_overwrite=True)
            if c.process_id == 0:
                deadline = time.monotonic() + c.timeout_s
                waiting = set(watchdog.peers) - watchdog.silent
                while waiting and time.monotonic() < deadline:
                    waiting = {i for i in waiting if _try_get(client, _key("left", i)) is None} - watchdog.silent
                    time.sleep(_POLL_S / 5)
            else:
                client.key_value_set(_key("left", c.process_id), "1", allow_overwrite=True)
    for service in _SERVICES:
        service.process.kill()
    sys.stdout.flush()
    print(f"monosem: error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


def _key(kind: str, process: int) -> str:
    return f"monosem/{kind}/{process}"


class Watchdog(threading.Thread):
    """Ends this process (fail) when a peer does not join within timeout_s, reports an error, or stops
    heartbeating for timeout_s."""

    def __init__(self, cluster: Cluster):
        super().__init__(name="monosem-watchdog", daemon=True)
        self.cluster = cluster
        self.peers = [i for i in range(cluster.num_processes) if i != cluster.process_id]
        self.joined = threading.Event()
        self.finished = threading.Event()
        self.silent: set[int] = set()  # peers that stopped heartbeating (dead or hung)

    def run(self) -> None:
        c = self.cluster
        if not self.joined.wait(c.timeout_s):
            missing = ", ".join(str(i) for i in self.peers)
            who = f"process {missing}" if len(self.peers) == 1 else f"one or more of processes {missing}"
            fail(f"--coordinator {c.coordinator}: {who} did not join within --peer-timeout {c.timeout_s:g} s "
                 f"(this is process {c.process_id} of {c.num_processes}); start every process with the same "
                 "--coordinator and --num-processes")
        client = _client()
        beat = 0
        last_seen = {i: (None, time.monotonic()) for i in self.peers}
        while not self.finished.is_set():
            try:
                client.key_value_set(_key("alive", c.process_id), str(beat), allow_overwrite=True)
                beat += 1
                for i in self.peers:
                    error = _try_get(client, _key("error", i))
                    if error is not None:
                        fail(f"process {i} of {c.num_processes} failed: {error}")
                for i in list(last_seen):
                    if _try_get(client, _key("done", i)) is not None:
                        del last_seen[i]  # finished its part: silence is expected now
                        continue
                    value, since = last_seen[i]
                    now_value = _try_get(client, _key("alive", i))
                    if now_value != value:
                        last_seen[i] = (now_value, time.monotonic())
                    elif time.monotonic() - since > c.timeout_s:
                        self.silent.add(i)
                        fail(f"process {i} of {c.num_processes} stopped responding (no heartbeat for "
                             f"--peer-timeout {c.timeout_s:g} s: it died or hangs); process {c.process_id} stops too, "
                             "nothing was written")
            except Exception as e:  # noqa: BLE001 - the coordination service itself is gone: process 0 died
                if self.finished.is_set():
                    return
                fail(f"process 0 (the coordinator at {c.coordinator}) is gone ({_first_line(e)}); "
                     f"process {c.process_id} stops too, nothing was written")
            self.finished.wait(_POLL_S)


def _client() -> Any:
    # jax.distributed keeps its client private; its key-value store is the only channel every process shares.
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def _try_get(client: Any, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as e:
        if "NOT_FOUND" in str(e):
            return None
        raise


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def failed(e: BaseException) -> None:
    """The main thread's exception in a multi-process run: a UserError (bad input, the same in every process, or
    this process's own shard) ends it at once; anything else, typically a collective whose peer's connection
    dropped, first gives the watchdog the timeout to name the peer that went silent."""
    c = _ACTIVE[0].cluster
    if not isinstance(e, UserError):
        deadline = time.monotonic() + c.timeout_s + 2 * _POLL_S + 1
        while time.monotonic() < deadline:  # the watchdog ends the process (os._exit) when a peer is silent
            time.sleep(_POLL_S)
    fail(str(e) if isinstance(e, UserError) else f"process {c.process_id}: {_first_line(e)}")


def finish() -> None:
    """A clean end: every process waits until all are done (process 0 has written); the others disconnect, and
    process 0, the coordination service's host, leaves once they have."""
    watchdog = _ACTIVE[0]
    c = watchdog.cluster
    client = _client()
    client.key_value_set(_key("done", c.process_id), "1", allow_overwrite=True)
    deadline = time.monotonic() + c.timeout_s
    while any(_try_get(client, _key("done", i)) is None for i in watchdog.peers):
        if time.monotonic() > deadline:
            fail(f"the other processes did not finish within --peer-timeout {c.timeout_s:g} s of process {c.process_id}")
        time.sleep(_POLL_S / 5)
    watchdog.finished.set()
    if c.process_id == 0 and c.num_processes > 1:
        # Blocks until every other process has disconnected (it is a barrier over the live processes).
        client.get_live_nodes(list(range(c.num_processes)))
    jax.distributed.shutdown()


def start(cluster: Cluster) -> Watchdog:
    """jax.distributed.initialize for this process (before any other JAX computation), CPU collectives by gloo,
    and the watchdog. Returns the watchdog; end the run with finish() (or fail())."""
    cluster.validate()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_recoverability", True)  # a dead peer is the watchdog's to report, not fatal
    jax.config.update("jax_enable_preemption_service", False)  # not used; it only adds errors on a failure
    watchdog = Watchdog(cluster)
    _ACTIVE[:] = [watchdog]
    watchdog.start()
    runtime_timeout = int(cluster.timeout_s) + _RUNTIME_MARGIN_S
    with _service_in_own_process(cluster):
        jax.distributed.initialize(
            cluster.coordinator, cluster.num_processes, cluster.process_id,
            initialization_timeout=runtime_timeout, heartbeat_timeout_seconds=runtime_timeout,
        )
    watchdog.joined.set()
    return watchdog


# The body of a _ServiceProcess: serve until process 0 says stop, or until linger seconds after it is gone.
# A script of its own that imports only jaxlib's runtime (importing jax_impl, hence jax, takes seconds that the
# peers' --peer-timeout to join would pay).
_SERVE = """
import os, sys, time
from jaxlib import _jax
address, n, heartbeat, shutdown, recoverable, linger = sys.argv[1:7]
try:
    service = _jax.get_distributed_runtime_service(address, int(n), heartbeat_timeout=int(heartbeat),
                                                   shutdown_timeout=int(shutdown), recoverable=recoverable == "1")
except Exception as e:  # the port is taken, the address cannot be bound, ...
    print("error: " + ((str(e).strip().splitlines() or [type(e).__name__])[0][:200]), flush=True)
    os._exit(1)
print("ready", flush=True)
if sys.stdin.readline().strip() == "stop":
    service.shutdown()
else:  # end of file: process 0 died; keep serving the others until their watchdogs have ended them
    time.sleep(float(linger))
os._exit(0)  # not the interpreter's exit: the service's threads may still wait on clients
"""


class _ServiceProcess:
    """The coordination service in a process of its own (the script _SERVE), standing in for the in-process
    service jax.distributed keeps in process 0: it has the service's one method, shutdown.

    The child reads one line on stdin: "stop" is a clean shutdown; end of file means process 0 died, and then
    the service stays up long enough for the other processes' watchdogs to notice and end with one line. Its
    own session: a Ctrl-C at the terminal reaches process 0, whose exit ends it, not the service itself."""

    def __init__(self, address: str, num_processes: int, heartbeat_timeout: int, shutdown_timeout: int,
                 recoverable: bool, linger_s: float):
        argv = [sys.executable, "-c", _SERVE, address, str(num_processes), str(heartbeat_timeout), str(shutdown_timeout),
                str(int(recoverable)), f"{linger_s:g}"]
        # stderr: the runtime's log lines (warnings about its experimental features) are not the user's concern.
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, start_new_session=True)
        answer = self.process.stdout.readline().strip()  # "ready", or "error: ..." where it cannot start
        if answer != "ready":
            self.process.wait()
            raise UserError(f"--coordinator: cannot start the coordination service at {address} "
                            f"({answer.removeprefix('error: ') or f'exit code {self.process.returncode}'})")
        self.shutdown_timeout = shutdown_timeout
        _SERVICES[:] = [self]

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.write("stop\n")
            self.process.stdin.close()
        try:
            self.process.wait(timeout=self.shutdown_timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def _service_in_own_process(cluster: Cluster) -> Iterator[None]:
    """While jax.distributed.initialize runs, its coordination service (process 0 starts one) is a
    _ServiceProcess instead of a part of this process (see the module docstring)."""
    try:
        from jax._src import distributed as jax_distributed
    except ImportError:
        jax_distributed = None
    runtime = getattr(jax_distributed, "_jax", None)
    make_service = getattr(runtime, "get_distributed_runtime_service", None)
    if make_service is None:  # a jax release without this private hook: its in-process service, and the known
        yield                 # limit that comes with it (a peer of a dead process 0 aborts with exit 134)
        return

    def own_process(address: str, num_nodes: int, *, heartbeat_timeout: int, shutdown_timeout: int,
                    recoverable: bool = False, **unused: Any) -> _ServiceProcess:
        return _ServiceProcess(address, num_nodes, heartbeat_timeout, shutdown_timeout, recoverable,
                               linger_s=cluster.timeout_s + _SERVICE_LINGER_MARGIN_S)

    runtime.get_distributed_runtime_service = own_process
    try:
        yield
    finally:
        runtime.get_distributed_runtime_service = make_service


def shard_range(n_rows: int, cluster: Cluster) -> tuple[int, int, int]:
    """(start, stop, shard_rows): the rows [start, stop) this process reads; every shard is shard_rows long
    (the last padded), so the global array has shard_rows * num_processes rows."""
    shard_rows = -(-n_rows // cluster.num_processes)
    start = min(n_rows, cluster.process_id * shard_rows)
    return start, min(n_rows, start + shard_rows), shard_rows


def global_mesh() -> Mesh:
    """One axis over every device of every process, in process order."""
    return Mesh(np.array(jax.devices()), (AXIS,))


def global_rows(local: np.ndarray, shard_rows: int, mesh: Mesh) -> jax.Array:
    """This process's rows (m, D), padded with zero rows to shard_rows, as its part of the global
    (shard_rows * num_processes, D) float32 array sharded along rows over the mesh."""
    padded = np.zeros((shard_rows, local.shape[1]), np.float32)
    padded[: len(local)] = local
    return jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec(AXIS)), padded, (shard_rows * jax.process_count(), local.shape[1])
    )


def local_copy(tree: Any) -> Any:
    """A replicated global pytree as host numpy arrays (each process holds every value)."""
    return jax.tree.map(np.asarray, tree)


def gather(values: np.ndarray) -> np.ndarray:
    """Every process's `values` (same shape on each), stacked in process order (P, ...)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values)))

