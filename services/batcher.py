"""An adaptive batcher in the process that owns the model (asyncio; one per worker).

Every protocol's requests become rows in one bounded queue; runners take rows off it as batches
and execute them in a thread (onnxruntime releases the GIL), so decoding and parsing go on while
a batch runs. The rules:

- **No idle wait.** When no batch is running, whatever is queued runs at once (a lone request at
  low load is not held back). Under load, rows queue while a batch runs and the next batch takes
  them all, up to ``max_batch_size`` rows: batches grow with the load by themselves.
- With more than one runner, a free runner that sees another batch running waits up to
  ``max_latency_ms`` (from the oldest queued row's arrival) for a fuller batch.
- **Bounded.** A request that would take the queue past ``max_queue_rows`` is refused at once
  (:class:`Overloaded`, 429). A request still queued after ``max_queue_wait_ms`` (the model's
  latency target) is answered :class:`QueueTimeout` (503 + Retry-After), one still queued at its
  deadline :class:`DeadlineExceeded` (504); neither is ever run. One whose caller went away is
  dropped unrun.
- **Drain.** :meth:`close` refuses new requests (:class:`Unavailable`, 503) and returns once
  everything accepted has been answered.

A request larger than ``max_batch_size`` runs as its own batch(es), split by the runner. A model
whose batches take microseconds (a table row) runs them on the event loop (``in_thread=False``):
the thread hop would cost more than the batch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from services import metrics
from services.errors import DeadlineExceeded, InternalError, Overloaded, QueueTimeout, RoostError, Unavailable

log = logging.getLogger("roost.batcher")

RunBatch = Callable[[np.ndarray], np.ndarray]


class _Item:
    __slots__ = ("rows", "future", "deadline", "leave_queue_by", "enqueued", "done")

    def __init__(self, rows: np.ndarray, future: asyncio.Future, deadline: float, max_wait_s: float):
        self.rows = rows
        self.future = future
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.leave_queue_by = min(deadline, self.enqueued + max_wait_s)
        self.done = False  # taken into a batch, expired or abandoned: no longer counts as queued

    def expired(self) -> RoostError:
        """Why this item left the queue unrun: its deadline, or the queue's wait limit."""
        if self.leave_queue_by < self.deadline:
            return QueueTimeout("waited longer than the model's latency target in its queue; retry shortly")
        return DeadlineExceeded("no answer within the request's deadline")


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        model: str,
        max_batch_size: int,
        max_latency_ms: float,
        max_queue_rows: int,
        max_queue_wait_ms: float = float("inf"),
        runners: int = 1,
        in_thread: bool = True,
    ):
        if max_batch_size < 1 or max_queue_rows < 1 or runners < 1:
            raise ValueError("max_batch_size, max_queue_rows and runners must be at least 1")
        self.run_batch = run_batch
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_latency_s = max(0.0, max_latency_ms) / 1000
        self.max_queue_rows = max_queue_rows
        self.max_queue_wait_s = max_queue_wait_ms / 1000
        self.runners = runners
        self.in_thread = in_thread  # False: batches that take microseconds run on the event loop
        self._queue: collections.deque[_Item] = collections.deque()
        self.queued_rows = 0
        self.running = 0  # batches executing now
        self._unanswered = 0  # accepted and not yet answered (queued or running)
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=runners, thread_name_prefix=f"roost-{model}-batch")
        self._depth = metrics.QUEUE_ROWS.labels(model)
        self._depth.set(0)

    # -- the caller's side ---------------------------------------------------------------------
    async def submit(self, rows: np.ndarray, deadline: float) -> np.ndarray:
        """Queue ``rows`` (first axis: rows) and wait for their outputs, until ``deadline``
        (time.monotonic()). Raises Overloaded, DeadlineExceeded or Unavailable."""
        if self._closing:
            metrics.REJECTED.labels(self.model, "shutting_down").inc()
            raise Unavailable("the server is shutting down; retry on another replica")
        n = len(rows)
        if self.queued_rows + n > self.max_queue_rows:
            metrics.REJECTED.labels(self.model, "queue_full").inc()
            raise Overloaded(
                f"the model's queue is full ({self.queued_rows} of {self.max_queue_rows} rows waiting); retry shortly"
            )
        self._ensure_started()
        item = _Item(rows, asyncio.get_running_loop().create_future(), deadline, self.max_queue_wait_s)
        self._queue.append(item)
        self._set_queued(self.queued_rows + n)
        self._unanswered += 1
        self._idle.clear()
        self._wakeup.set()
        try:
            try:
                return await asyncio.wait_for(asyncio.shield(item.future), max(0.0, item.leave_queue_by - time.monotonic()))
            except asyncio.TimeoutError:
                if not item.done:  # still queued: never run it
                    self._drop(item)
                    error = item.expired()
                    metrics.REJECTED.labels(self.model, error.reject_reason).inc()
                    raise error from None
            try:  # it is running: wait for its batch until the request's deadline
                return await asyncio.wait_for(asyncio.shield(item.future), max(0.0, item.deadline - time.monotonic()))
            except asyncio.TimeoutError:
                metrics.REJECTED.labels(self.model, "timeout").inc()
                raise DeadlineExceeded("no answer within the request's deadline") from None
        except asyncio.CancelledError:  # the caller went away (client disconnected)
            if not item.done:
                self._drop(item)
            raise
        finally:
            self._answered()

    async def close(self, timeout: float) -> bool:
        """Refuse new requests; wait (up to ``timeout`` s) until every accepted one is answered."""
        self._closing = True
        if self._idle is None or self._unanswered == 0:
            self._shutdown()
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            log.warning("%d requests still unanswered after %g s of draining", self._unanswered, timeout)
            return False
        finally:
            self._shutdown()

    @property
    def unanswered(self) -> int:
        return self._unanswered

    # -- bookkeeping -------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._wakeup = asyncio.Event()
            self._idle = asyncio.Event()
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name=f"roost-{self.model}-batcher")

    def _set_queued(self, rows: int) -> None:
        self.queued_rows = rows
        self._depth.set(rows)

    def _drop(self, item: _Item) -> None:
        item.done = True
        self._set_queued(self.queued_rows - len(item.rows))

    def _answered(self) -> None:
        self._unanswered -= 1
        if self._unanswered == 0 and self._idle is not None:
            self._idle.set()

    def _shutdown(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        self._executor.shutdown(wait=False)

    # -- the dispatcher ------------------------------------------------------------------------
    def _first_live(self) -> _Item | None:
        """The oldest item still waiting; expired ones are answered 504 on the way."""
        now = time.monotonic()
        while self._queue:
            item = self._queue[0]
            if item.done:
                self._queue.popleft()
                continue
            if item.leave_queue_by <= now:
                self._queue.popleft()
                self._drop(item)
                if not item.future.done():
                    error = item.expired()
                    metrics.REJECTED.labels(self.model, error.reject_reason).inc()
                    item.future.set_exception(error)
                continue
            return item
        return None

    def _take(self) -> list[_Item]:
        """Items for one batch: the oldest first, then others while they fit max_batch_size."""
        batch: list[_Item] = []
        rows = 0
        while (item := self._first_live()) is not None:
            if batch and rows + len(item.rows) > self.max_batch_size:
                break
            self._queue.popleft()
            self._drop(item)
            batch.append(item)
            rows += len(item.rows)
            if rows >= self.max_batch_size:
                break
        return batch

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.running < self.runners and (oldest := self._first_live()) is not None:
                if self.queued_rows >= self.max_batch_size:
                    reason = "full"
                elif self.running == 0:
                    reason = "idle"  # nothing is running: go now rather than wait for more rows
                else:
                    wait = oldest.enqueued + self.max_latency_s - time.monotonic()
                    if wait > 0:  # another batch is running: let this one fill for a moment
                        asyncio.get_running_loop().call_later(wait, self._wakeup.set)
                        break
                    reason = "latency"
                batch = self._take()
                if batch:
                    self.running += 1
                    asyncio.get_running_loop().create_task(self._run(batch, reason))

    async def _run(self, batch: list[_Item], reason: str) -> None:
        now = time.monotonic()
        for item in batch:
            metrics.QUEUE_SECONDS.labels(self.model).observe(now - item.enqueued)
        metrics.BATCHES.labels(self.model, reason).inc()
        try:
            inputs = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
            if self.in_thread:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._execute, inputs)
            else:
                outputs = self._execute(inputs)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
            error = exc if isinstance(exc, RoostError) else InternalError("inference failed; see the server log")
            if not isinstance(exc, RoostError):
                log.exception("batch of %d rows failed", sum(len(i.rows) for i in batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            offset = 0
            for item in batch:
                n = len(item.rows)
                if not item.future.done():
                    item.future.set_result(outputs[offset : offset + n])
                offset += n
        finally:
            self.running -= 1
            self._wakeup.set()

    def _execute(self, inputs: np.ndarray) -> np.ndarray:
        """In a runner thread: the batch, split into max_batch_size chunks if one request is larger."""
        outputs = []
        for start in range(0, len(inputs), self.max_batch_size):
            chunk = inputs[start : start + self.max_batch_size]
            metrics.BATCH_SIZE.labels(self.model).observe(len(chunk))
            began = time.perf_counter()
            try:
                outputs.append(self.run_batch(chunk))
            finally:
                metrics.STAGE_SECONDS.labels(self.model, "infer").observe(time.perf_counter() - began)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
