"""Costly pure work of a job done in worker processes, collected before the transaction.

One Python process runs on one core (the GIL), and the R11 redaction of training
candidates is most of the router's CPU. ``Offload`` hands items to worker processes
in chunks and gives back a ``Pending`` value at once; the transactional loop
collects every pending value before it begins the batch's transaction. Output
order, the transaction and therefore exactly-once are unchanged: a worker that
fails or dies fails the batch before anything of it is written, and the job's
process exits to be restarted from the committed offsets.

Why not ``concurrent.futures.ProcessPoolExecutor``: its feeder and manager threads
fight the job's thread for the GIL (measured: 3 ms per chunk handed over, 17 % of
the router's time), and its spawned workers re-import the caller's ``__main__``.
Here the job's thread pickles and writes each chunk itself and reads results only
when it needs them, and each worker is ``python -m streams.kafka.offload``.

The work runs in the worker with state built once by ``setup`` (a compiled
redactor, codecs): both are named ``"module:function"``; ``work`` takes a list of
items and returns one ``bytes`` per item, in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")

_PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process


class OffloadError(RuntimeError):
    """A worker failed or died; the message names the error type and place, never data."""


class Pending:
    """An output value still being computed in a worker process."""

    __slots__ = ("_chunk", "_index")

    def __init__(self, chunk: _Chunk, index: int) -> None:
        self._chunk = chunk
        self._index = index

    def result(self) -> bytes:
        return self._chunk.results()[self._index]


class _Chunk:
    __slots__ = ("items", "worker", "values", "error", "_flush")

    def __init__(self, flush: Callable[[], None]) -> None:
        self.items: list[Any] = []
        self.worker: _Worker | None = None
        self.values: list[bytes] | None = None
        self.error: OffloadError | None = None
        self._flush = flush

    def results(self) -> list[bytes]:
        if self.worker is None:
            self._flush()  # still being filled: send it as it is
        while self.values is None:
            if self.error is not None:
                raise self.error
            if self.worker is None:
                raise OffloadError("chunk was never sent (offload closed?)")
            self.worker.receive_one()
        return self.values


def _pipe() -> tuple[int, int, int]:
    """A pipe (read end, write end) and the bytes it buffers: enlarged where the OS allows,
    so the worker can run a few chunks ahead of the job without anyone blocking."""
    read, write = os.pipe()
    # Not Linux, or above the system's limit: the default buffer stays.
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    try:
        capacity = int(fcntl.fcntl(write, fcntl.F_GETPIPE_SZ))
    except (AttributeError, OSError):
        capacity = 4096  # POSIX's guaranteed minimum
    return read, write, capacity


class _Worker:
    def __init__(self, setup: str, work: str, setup_args: tuple[Any, ...]) -> None:
        to_child_r, to_child_w, self.capacity = _pipe()
        from_child_r, from_child_w, _ = _pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            close_fds=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send = Connection(to_child_w, readable=False)
        self.receive = Connection(from_child_r, writable=False)
        self.in_flight: deque[tuple[_Chunk, int]] = deque()
        self.in_flight_bytes = 0
        self.send.send_bytes(pickle.dumps((setup, work, setup_args), pickle.HIGHEST_PROTOCOL))
        self._expect()  # set-up done (or its error)

    def submit(self, chunk: _Chunk) -> None:
        data = pickle.dumps(chunk.items, pickle.HIGHEST_PROTOCOL)
        # Never more unanswered input than the pipe holds: then the job's write cannot
        # block, so the job and a worker blocked on writing its results cannot deadlock.
        # (A chunk larger than the pipe goes alone; the worker owes nothing and reads it.)
        while self.in_flight and self.in_flight_bytes + len(data) + 8 > self.capacity // 2:
            self.receive_one()
        chunk.worker = self
        try:
            self.send.send_bytes(data)
        except OSError:
            chunk.error = OffloadError(f"offload worker exited ({self.process.poll()})")
            raise chunk.error from None
        self.in_flight.append((chunk, len(data) + 8))
        self.in_flight_bytes += len(data) + 8
        chunk.items = []

    def receive_one(self) -> None:
        chunk, size = self.in_flight.popleft()
        self.in_flight_bytes -= size
        try:
            chunk.values = self._expect()
        except OffloadError as exc:
            chunk.error = exc  # every value of the chunk fails, now and when asked again
            raise

    def _expect(self) -> Any:
        try:
            status, payload = pickle.loads(self.receive.recv_bytes())
        except (EOFError, OSError):
            raise OffloadError(f"offload worker exited ({self.process.poll()})") from None
        if status != "ok":
            raise OffloadError(f"offload worker failed: {payload}")
        return payload

    def close(self) -> None:
        self.send.close()  # end of input: the worker exits
        self.receive.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Offload(Generic[Item]):
    """Items of work, in chunks of ``chunk_size``, spread over ``processes`` workers."""

    def __init__(
        self,
        setup: Callable[..., None],
        work: Callable[[list[Item]], list[bytes]],
        setup_args: tuple[Any, ...] = (),
        processes: int = 1,
        chunk_size: int = 128,
    ) -> None:
        if processes < 1:
            raise ValueError("an offload needs at least one process")
        self._chunk_size = chunk_size
        self._workers = [_Worker(_name(setup), _name(work), setup_args) for _ in range(processes)]
        self._next = 0
        self._chunk = _Chunk(self.flush)

    def submit(self, item: Item) -> Pending:
        chunk = self._chunk
        chunk.items.append(item)
        pending = Pending(chunk, len(chunk.items) - 1)
        if len(chunk.items) >= self._chunk_size:
            self.flush()
        return pending

    def flush(self) -> None:
        """Send the chunk being filled to the next worker."""
        chunk = self._chunk
        if not chunk.items:
            return
        self._chunk = _Chunk(self.flush)
        worker = self._workers[self._next]
        self._next = (self._next + 1) % len(self._workers)
        worker.submit(chunk)

    def collect(self) -> None:
        """Send what is buffered and wait until every result is back."""
        self.flush()
        for worker in self._workers:
            while worker.in_flight:
                worker.receive_one()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []


def _name(function: Callable[..., Any]) -> str:
    module = function.__module__
    if module == "__main__":  # a job run as ``python -m streams.jobs.<job>``
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    name = f"{module}:{function.__qualname__}"
    if module == "__main__" or "<" in function.__qualname__:
        raise ValueError(f"{name} cannot be imported by a worker process")
    return name


def _resolve(name: str) -> Callable[..., Any]:
    module, _, qualname = name.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _failure(exc: BaseException) -> str:
    # Type and place only: an exception's message may quote the data it failed on.
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


def _serve(receive: Connection, send: Connection) -> None:
    def reply(status: str, payload: Any) -> None:
        send.send_bytes(pickle.dumps((status, payload), pickle.HIGHEST_PROTOCOL))

    try:
        setup, work_name, setup_args = pickle.loads(receive.recv_bytes())
        _resolve(setup)(*setup_args)
        work = _resolve(work_name)
    except EOFError:
        return
    except Exception as exc:
        reply("error", _failure(exc))
        return
    gc.freeze()  # the set-up state (the redactor's lexicons) lives as long as the worker
    reply("ok", None)
    while True:
        try:
            items = pickle.loads(receive.recv_bytes())
        except EOFError:
            return  # the job closed the offload, or died
        try:
            result = ("ok", work(items))
        except Exception as exc:
            result = ("error", _failure(exc))
        reply(*result)


def _main() -> None:
    # The job decides when its workers stop (it closes their input): a Ctrl-C sent to the
    # whole process group must not kill them mid-chunk first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A job that died while this worker was answering leaves nobody to tell.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        _serve(
            Connection(int(sys.argv[1]), writable=False),
            Connection(int(sys.argv[2]), readable=False),
        )


if __name__ == "__main__":
    _main()
