"""Batching across requests: one worker thread owns the engine and decodes what the HTTP side queues.

Requests become jobs: an ASR job is one checked upload with its windows, a chat job one dialog row. The worker
collects work until ``max_batch_size`` rows of one kind are waiting or the oldest waiting job has waited
``batch_wait`` seconds, whichever comes first, then runs at most one batch of each kind: ASR windows, chat rows
with audio, text-only chat rows (LLM mode). While requests are still being received or checked (the HTTP side
announces them with :meth:`Scheduler.incoming`), a batch that is not full also waits up to ``batch_wait`` after
the worker became free, so jobs arriving together are not split over two batches; when those requests would fill
the batch, up to a tenth of a batch's mean time instead (:meth:`Scheduler._deadline`).

ASR windows are taken round-robin across jobs, one window per job per turn, starting one job further each batch,
so a long upload gets its fair share of each batch and short requests queued behind it still go out in the next
batch. Work that keeps a batch full starts at once (the waits only apply while batches are not full).

Results go back through the job's callbacks, called on the worker thread (the HTTP side hands them to its event
loop). A batch that raises is run again row by row, so one bad row fails only its own request. A cancelled job
(its client went away) has its remaining work dropped before the next batch. The worker calls a job's
``on_close`` exactly once, when it leaves the scheduler, so the owner of its files knows when they are free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import ChatRow, Engine, Planned
    from .metrics import Metrics

log = logging.getLogger("nemo_lite.serve")
EMA = 0.2  # weight of the newest batch in the running mean of batch wall time (for Retry-After)
FILL_SHARE = 0.1  # of a batch's mean time: the longest wait for requests in flight that would fill a batch


def _noop() -> None:
    pass


class EngineLost(RuntimeError):
    """The engine can run no batch any more (its model process died): the scheduler fails what is queued and
    reports a fatal error instead of retrying rows one by one."""


@dataclass(eq=False)
class AsrJob:
    planned: Planned  # the checked input and its windows
    on_window: Callable[[int, str], None]  # window k's text, in window order
    on_error: Callable[[str], None]  # the job failed; nothing more is delivered
    on_close: Callable[[], None] = _noop  # the job left the scheduler (done, failed or cancelled)
    arrived: float = field(default_factory=time.monotonic)
    next: int = 0  # first window not yet handed to a batch
    done: int = 0  # windows delivered
    cancelled: bool = False  # set by Scheduler.cancel
    failed: bool = False

    @property
    def waiting(self) -> int:
        return 0 if self.cancelled or self.failed else len(self.planned.windows) - self.next

    @property
    def finished(self) -> bool:
        return self.cancelled or self.failed or self.done == len(self.planned.windows)


@dataclass(eq=False)
class ChatJob:
    row: ChatRow  # the dialog, its audios and budget
    on_done: Callable[[list[int]], None]  # the answer's new token ids
    on_error: Callable[[str], None]
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False


class Scheduler:
    """The model worker: a thread that loads the engine, then runs batches until stopped and idle."""

    def __init__(self, load: Callable[[], Engine], max_batch_size: int = 8, batch_wait: float = 0.01,
                 metrics: Metrics | None = None, threads: int | None = None,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size  # rows per batch, per kind
        self.batch_wait = batch_wait  # seconds the oldest job may wait for a batch to fill
        self.metrics = metrics
        self.engine: Engine | None = None  # set by the worker once loaded
        self.error: str | None = None  # why loading failed
        self.ready = threading.Event()  # set once loading finished (engine or error set)
        self.batch_seconds = 0.0  # running mean of a batch's wall time
        self._load, self._threads, self._on_fatal = load, threads, on_fatal
        self._cond = threading.Condition()
        self._asr: deque[AsrJob] = deque()
        self._chat: dict[bool, deque[ChatJob]] = {True: deque(), False: deque()}  # by "has audio"
        self._stopping = False
        self._incoming = 0  # requests announced by the HTTP side and not yet submitted
        self._thread = threading.Thread(target=self._run, name="nemo-lite-model", daemon=True)

    # ------------------------------------------------------------------ called from the HTTP side
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: AsrJob | ChatJob) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            if isinstance(job, AsrJob):
                self._asr.append(job)
            else:
                self._chat[bool(job.row.audios)].append(job)
            self._cond.notify()

    def incoming(self, n: int) -> None:
        """``+1``: a request is being received/checked and will submit a job soon; ``-1``: it has (or never will)."""
        with self._cond:
            self._incoming += n
            self._cond.notify()

    def cancel(self, job: AsrJob | ChatJob) -> None:
        """Drop the job's work that has not reached a batch yet (a batch already running finishes)."""
        with self._cond:
            job.cancelled = True
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued work, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def waiting_rows(self) -> int:
        with self._cond:
            return self._waiting("asr") + self._waiting("chat_audio") + self._waiting("chat_text")

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        try:
            if self._threads:
                import torch

                torch.set_num_threads(self._threads)
            self.engine = self._load()
        except BaseException as err:  # noqa: BLE001  (reported to the server, which exits)
            self.error = f"{type(err).__name__}: {err}"
        self.ready.set()
        if self.engine is None:
            if self._on_fatal:
                self._on_fatal(self.error or "the model could not be loaded")
            return
        engine, batches = self.engine, []
        try:
            while (batches := self._next_batches()) is not None:
                while batches:
                    self._run_batch(*batches[0])
                    batches.pop(0)
                with self._cond:
                    self._release_finished()
        except EngineLost as err:
            # chat rows taken for a batch that did not run have left the queues: fail them here
            self._lost(str(err), [j for kind, rows in batches or [] if kind != "asr" for j in rows])
        finally:
            close = getattr(engine, "close", None)  # a model process: let it exit
            if close is not None:
                close()

    def _lost(self, why: str, taken: list[ChatJob]) -> None:
        """The engine is gone: every queued job (and ``taken``, chat rows of batches that did not run) fails with
        ``why``, new work is refused, the server is told."""
        log.error("%s; failing queued requests and stopping", why)
        self.error, self.engine = why, None  # /health and new requests: 503 with the reason
        with self._cond:
            self._stopping = True
            jobs = list(self._asr) + [j for q in self._chat.values() for j in q] + taken
            self._chat[True].clear()
            self._chat[False].clear()
        for job in jobs:
            if isinstance(job, AsrJob):
                if not job.finished:
                    job.failed = True
                    _call(job.on_error, why)
            elif not job.cancelled:
                _call(job.on_error, why)
        with self._cond:
            self._release_finished()
        if self._on_fatal:
            self._on_fatal(why)

    def _next_batches(self) -> list[tuple[str, list]] | None:
        """Wait for work, then take one batch per kind; None once stopping and idle."""
        with self._cond:
            while True:
                self._release_finished()
                if self._has_work():
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            oldest, free = self._oldest() + self.batch_wait, time.monotonic()
            while not self._stopping and not self._full():
                left = self._deadline(oldest, free) - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._release_finished()
            batches = [("asr", self._take_windows()), ("chat_audio", self._take_chat(True)),
                       ("chat_text", self._take_chat(False))]
            return [(kind, rows) for kind, rows in batches if rows]

    def _deadline(self, oldest: float, free: float) -> float:
        """Until when a batch that is not full waits (under the lock): ``oldest`` = the oldest job's arrival +
        ``batch_wait``, ``free`` = when the worker became free. Requests still being received extend it: by
        ``batch_wait``, or, when they would fill the batch, by up to :data:`FILL_SHARE` of a batch's running mean
        time (a partial batch now costs a whole extra batch later; uploads take longer than 10 ms to arrive and
        be checked on a busy CPU, and at 16 clients batches held 6.9 rows of 8 on average)."""
        if not self._incoming:
            return oldest
        rows = max(self._waiting(k) for k in ("asr", "chat_audio", "chat_text"))
        fills = rows + self._incoming >= self.max_batch_size
        extra = max(self.batch_wait, FILL_SHARE * self.batch_seconds) if fills else self.batch_wait
        return max(oldest, free + extra)

    def _waiting(self, kind: str) -> int:
        if kind == "asr":
            return sum(j.waiting for j in self._asr)
        return sum(not j.cancelled for j in self._chat[kind == "chat_audio"])

    def _has_work(self) -> bool:
        return any(self._waiting(k) for k in ("asr", "chat_audio", "chat_text"))

    def _full(self) -> bool:
        return any(self._waiting(k) >= self.max_batch_size for k in ("asr", "chat_audio", "chat_text"))

    def _oldest(self) -> float:
        times = [j.arrived for j in self._asr if j.waiting] + [j.arrived for q in self._chat.values() for j in q]
        return min(times, default=time.monotonic())

    def _take_windows(self) -> list[tuple[AsrJob, int]]:
        """Up to ``max_batch_size`` windows, one per job per turn (each job's in order), then rotate the jobs."""
        rows: list[tuple[AsrJob, int]] = []
        jobs = [j for j in self._asr if j.waiting]
        while jobs and len(rows) < self.max_batch_size:
            for job in jobs[: self.max_batch_size - len(rows)]:
                rows.append((job, job.next))
                job.next += 1
            jobs = [j for j in jobs if j.waiting]
        if self._asr:
            self._asr.rotate(-1)  # the next batch starts with the next job: no job leads every batch
        return rows

    def _take_chat(self, audio: bool) -> list[ChatJob]:
        queue, rows = self._chat[audio], []
        while queue and len(rows) < self.max_batch_size:
            job = queue.popleft()
            if not job.cancelled:
                rows.append(job)
        return rows

    def _release_finished(self) -> None:
        """Remove finished, failed and cancelled jobs (under the lock); their ``on_close`` runs once."""
        for q in self._chat.values():
            for job in [j for j in q if j.cancelled]:
                q.remove(job)
        for job in [j for j in self._asr if j.finished]:
            self._asr.remove(job)
            job.planned.close()
            _call(job.on_close)

    def _run_batch(self, kind: str, rows: list) -> None:
        assert self.engine is not None
        t0 = time.perf_counter()
        if kind == "asr":
            results = _each_or_alone(lambda rs: self.engine.transcribe_windows([(j.planned, k) for j, k in rs]), rows)
            for (job, k), out in zip(rows, results, strict=True):
                self._deliver_window(job, k, out)
        else:
            results = _each_or_alone(lambda rs: self.engine.generate([j.row for j in rs]), rows)
            for job, out in zip(rows, results, strict=True):
                if job.cancelled:
                    continue
                if isinstance(out, _Failure):
                    _call(job.on_error, out.message)
                else:
                    _call(job.on_done, out)
        seconds = time.perf_counter() - t0
        log.debug("%s batch: %d rows in %.3f s", kind, len(rows), seconds)
        self.batch_seconds = seconds if not self.batch_seconds else (1 - EMA) * self.batch_seconds + EMA * seconds
        if self.metrics is not None:
            self.metrics.batch_rows.labels(kind).observe(len(rows))
            self.metrics.batch_seconds.labels(kind).observe(seconds)

    def _deliver_window(self, job: AsrJob, k: int, out: str | _Failure) -> None:
        if job.cancelled or job.failed:
            return
        if isinstance(out, _Failure):
            job.failed = True
            _call(job.on_error, out.message)
            return
        job.done += 1
        _call(job.on_window, k, out)


@dataclass
class _Failure:
    message: str  # why this row could not be decoded


def _each_or_alone(run: Callable[[list], list], rows: list) -> list:
    """``run(rows)``; if the batch raises, each row alone, so only the rows that fail by themselves fail."""
    try:
        return run(rows)
    except EngineLost:
        raise
    except Exception as err:  # noqa: BLE001  (a request's failure must not take the worker down)
        if len(rows) == 1:
            log.exception("a decoding row failed")
            return [_Failure(f"{type(err).__name__}: {err}")]
        log.warning("a batch of %d rows failed (%s: %s); running its rows one by one", len(rows),
                    type(err).__name__, err)
    return [out for row in rows for out in _each_or_alone(run, [row])]


def _call(fn: Callable, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001  (a callback's bug is logged; the worker goes on)
        log.exception("a result callback failed")
