"""Dynamic batching: requests that arrive close together share one model call.

Each request submits ``n`` items of one operation ("image", "text", "decode"). One asyncio task picks the
operation whose oldest job has waited longest, lets more jobs of that operation join until the batch holds
``max_batch`` items or the oldest job has waited ``max_wait``, and runs the batch in the single model
thread (one model in memory, one call at a time). While the model runs, new jobs queue up, so under load
batches fill without waiting. The queue is bounded in items: a job that does not fit raises ``QueueFull``
at once (the server answers 503 with Retry-After) instead of growing memory without limit.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from toklip.core.errors import TokLIPError

log = logging.getLogger("toklip.serve")

# A runner takes the payloads of several jobs and returns one result per payload, in order.
Runner = Callable[[list[Any]], list[Any]]


class QueueFull(Exception):
    """The bounded queue has no room for this job."""


class ShuttingDown(Exception):
    """The batcher no longer accepts jobs."""


@dataclass
class _Job:
    op: str
    payload: Any
    n: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        runners: Mapping[str, Runner],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[str, int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        op_batch: Mapping[str, int] | None = None,
    ) -> None:
        """``op_batch``: the most items of an operation one call takes, where that is not ``max_batch`` (1 for
        chat: replies run one by one, and each is answered when it is done, not when its batch is)."""
        self.runners = dict(runners)
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.op_batch = {op: dict(op_batch or {}).get(op, max_batch) for op in self.runners}
        self._on_batch = on_batch or (lambda op, n, seconds: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._pending: dict[str, collections.deque[_Job]] = {op: collections.deque() for op in self.runners}
        self._depth = 0
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set while nothing is queued or running
        self._running = False
        self._running_jobs: list[_Job] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="toklip-model")

    @property
    def depth(self) -> int:
        """Items waiting for the model (not counting the batch being run)."""
        return self._depth

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="toklip-batcher")

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the model thread (warm-up): nothing else runs on the model meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def submit(self, op: str, payload: Any, n: int) -> Any:
        """Queue ``n`` items of ``op`` and wait for their result (cancelling the wait drops the job)."""
        if self._closing or self._wake is None:
            raise ShuttingDown("the server is shutting down")
        if op not in self._pending:
            raise KeyError(f"unknown batch operation {op!r}")
        if self._depth + n > self.max_queue:
            raise QueueFull(f"{self._depth} items are queued; {n} more would pass the limit of {self.max_queue}")
        job = _Job(op, payload, n, asyncio.get_running_loop().create_future())
        self._pending[op].append(job)
        self._set_depth(self._depth + n)
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._withdraw(job)  # the caller gave up (timeout, disconnect): free its queue slots now
            raise

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting jobs and run the queued ones at once (no batch waiting); jobs still unfinished after
        ``drain_timeout_s`` are failed with ``ShuttingDown``."""
        self._closing = True
        if self._task is not None and self._idle is not None and self._wake is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("shutdown: %d queued items and %d running jobs did not finish within %g s",
                            self._depth, len(self._running_jobs), drain_timeout_s)
        running = list(self._running_jobs)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        leftover = [*running, *(job for queue in self._pending.values() for job in queue)]
        for job in leftover:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server shut down before this request ran"))
        for queue in self._pending.values():
            queue.clear()
        self._set_depth(0)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._on_depth(depth)
        self._update_idle()

    def _update_idle(self) -> None:
        if self._idle is not None:
            if self._depth == 0 and not self._running:
                self._idle.set()
            else:
                self._idle.clear()

    def _withdraw(self, job: _Job) -> None:
        queue = self._pending[job.op]
        if job in queue:
            queue.remove(job)
            self._set_depth(self._depth - job.n)
            if self._wake is not None:
                self._wake.set()

    def _prune(self) -> None:
        """Drop jobs whose caller stopped waiting (timeout, disconnect)."""
        dropped = 0
        for queue in self._pending.values():
            live = [j for j in queue if not j.future.done()]
            dropped += sum(j.n for j in queue) - sum(j.n for j in live)
            queue.clear()
            queue.extend(live)
        if dropped:
            self._set_depth(self._depth - dropped)

    def _oldest_op(self) -> str | None:
        heads = [(q[0].enqueued, op) for op, q in self._pending.items() if q]
        return min(heads)[1] if heads else None

    def _count(self, op: str) -> int:
        return sum(j.n for j in self._pending[op])

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._prune()
            op = self._oldest_op()
            if op is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._pending[op][0].enqueued + self.max_wait_s
            remaining = deadline - time.monotonic()
            if self._count(op) < self.op_batch[op] and remaining > 0 and not self._closing:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
                continue  # look again: jobs may have joined or left, another operation may now be older
            jobs = self._take(op)
            t0 = time.perf_counter()
            self._running, self._running_jobs = True, jobs
            self._update_idle()
            try:
                results = await loop.run_in_executor(self._executor, self._run, op, jobs)
            finally:
                self._running, self._running_jobs = False, []
                self._update_idle()
            self._on_batch(op, sum(j.n for j in jobs), time.perf_counter() - t0)
            for job, (ok, value) in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)

    def _take(self, op: str) -> list[_Job]:
        queue, jobs, count = self._pending[op], [], 0
        while queue and (not jobs or count + queue[0].n <= self.op_batch[op]):
            job = queue.popleft()
            jobs.append(job)
            count += job.n
        self._set_depth(self._depth - count)
        return jobs

    def _run(self, op: str, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """Model thread: one call for the whole batch; if it fails, each job alone, so one bad job fails alone."""
        runner = self.runners[op]
        try:
            return [(True, r) for r in runner([j.payload for j in jobs])]
        except Exception as e:  # noqa: BLE001 - reported per job below
            if len(jobs) == 1:
                if not isinstance(e, TokLIPError):
                    log.exception("batch %s failed", op)
                return [(False, e)]
        out: list[tuple[bool, Any]] = []
        for job in jobs:
            try:
                out.append((True, runner([job.payload])[0]))
            except Exception as e:  # noqa: BLE001
                if not isinstance(e, TokLIPError):
                    log.exception("job %s failed", op)
                out.append((False, e))
        return out


