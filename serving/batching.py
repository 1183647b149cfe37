"""Micro-batching for the predictor: concurrent V2 requests are merged into one forward pass.

KServe's own batcher understands V1 ``instances`` only (kserve#2275), so the predictor batches here. Requests wait in
an asyncio queue; a worker takes the first, then whatever else is already queued or arrives within
``max_batch_delay_ms``, up to ``max_batch_size`` rows, and runs one forward in a dedicated thread (so the event loop
keeps parsing requests meanwhile, and they form the next batch). Token ids are right-padded to the longest row of the
merged batch; the LSTM packs sequences by their true length, so padding does not change any row's result.

``max_batch_size 1`` turns batching off: every request is a forward of its own, one at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from prometheus_client import Histogram

from rakuten_mm.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

BATCH_ROWS = Histogram("rakuten_batch_rows", "rows per merged forward pass", ["model_name"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
QUEUE_SECONDS = Histogram("rakuten_batch_queue_seconds", "time a request waits before its forward pass starts",
                          ["model_name"])
FORWARD_SECONDS = Histogram("rakuten_batch_forward_seconds", "duration of one merged forward pass", ["model_name"])


@dataclass
class TensorBatch:
    """The predictor's tensor contract for one request (or a merged batch)."""

    token_ids: np.ndarray  # int64 [B, L]; an all-zero row has no text
    images: np.ndarray | None  # uint8 [B, 3, 256, 256] (canonical), or None when no row has an image
    image_mask: np.ndarray  # bool [B]
    # The raw text the token ids were encoded from, for members that read it (chartfidf); empty when none does.
    designations: Sequence[object] = ()
    descriptions: Sequence[object] = ()

    @property
    def rows(self) -> int:
        return int(self.token_ids.shape[0])


def merge(batches: Sequence[TensorBatch]) -> TensorBatch:
    """Concatenate requests row-wise; token ids are right-padded with 0 to the longest row."""
    if len(batches) == 1:
        return batches[0]
    rows = sum(b.rows for b in batches)
    width = max(b.token_ids.shape[1] for b in batches)
    token_ids = np.zeros((rows, width), dtype=np.int64)
    mask = np.zeros(rows, dtype=bool)
    with_images = [b.images for b in batches if b.images is not None]
    images = np.zeros((rows, *with_images[0].shape[1:]), dtype=np.uint8) if with_images else None
    start = 0
    for b in batches:
        stop = start + b.rows
        token_ids[start:stop, : b.token_ids.shape[1]] = b.token_ids
        mask[start:stop] = b.image_mask
        if images is not None and b.images is not None:
            images[start:stop] = b.images
        start = stop
    return TensorBatch(token_ids, images, mask, [t for b in batches for t in b.designations],
                       [t for b in batches for t in b.descriptions])


def split(result: np.ndarray, batches: Sequence[TensorBatch]) -> list[np.ndarray]:
    """Cut a merged result back into one array per request, in order."""
    bounds = np.cumsum([b.rows for b in batches])[:-1]
    return list(np.split(result, bounds))


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float


class MicroBatcher(Generic[T, R]):
    """An async queue that runs ``run(items) -> results`` (same order, one result per item) on merged batches.

    ``rows(item)`` is how many rows an item adds; a batch holds at most ``max_batch_size`` rows unless a single item
    is larger on its own (``run`` must then cope, e.g. by chunking). ``run`` is called in one dedicated thread.
    """

    def __init__(self, run: Callable[[list[T]], list[R]], *, max_batch_size: int, max_delay_ms: float,
                 rows: Callable[[T], int], name: str = "model") -> None:
        self.check(max_batch_size, max_delay_ms)
        self.run = run
        self.rows = rows
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rakuten-forward")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Pending[T, R] | None = None

    @staticmethod
    def check(max_batch_size: int, max_delay_ms: float) -> None:
        """Fail fast on settings outside the allowed ranges."""
        if max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be at least 1 (1 turns batching off), got {max_batch_size}")
        if not 0 <= max_delay_ms <= 10_000:
            raise ConfigError(f"--max-batch-delay-ms must lie in [0, 10000], got {max_delay_ms}")

    def _ensure_worker(self) -> asyncio.Queue[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._worker is None or self._worker.done():
            # First use, or a new event loop (tests run several): start a fresh queue and worker on this loop.
            self._loop, self._queue, self._carry = loop, asyncio.Queue(), None
            self._worker = loop.create_task(self._work(self._queue), name=f"{self.name}-batcher")
        return self._queue

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (exceptions of its batch's ``run`` are raised here)."""
        queue = self._ensure_worker()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(item, future, time.perf_counter()))
        return await future

    async def _next(self, queue: asyncio.Queue[_Pending[T, R]], timeout: float | None) -> _Pending[T, R] | None:
        if self._carry is not None:
            carried, self._carry = self._carry, None
            return carried
        if timeout is None:
            return await queue.get()
        try:
            return queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self, queue: asyncio.Queue[_Pending[T, R]]) -> list[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        batch: list[_Pending[T, R]] = []
        rows = 0
        deadline: float | None = None
        while rows < self.max_batch_size:
            timeout = None if deadline is None else deadline - loop.time()
            pending = await self._next(queue, timeout)
            if pending is None:
                break
            if pending.future.done():  # the client went away while it waited
                continue
            size = self.rows(pending.item)
            if batch and rows + size > self.max_batch_size:
                self._carry = pending  # starts the next batch
                break
            batch.append(pending)
            rows += size
            if deadline is None:
                deadline = loop.time() + self.max_delay_s
        return batch

    async def _work(self, queue: asyncio.Queue[_Pending[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            if not batch:
                continue
            started = time.perf_counter()
            for p in batch:
                QUEUE_SECONDS.labels(self.name).observe(started - p.queued_at)
            BATCH_ROWS.labels(self.name).observe(sum(self.rows(p.item) for p in batch))
            try:
                results = await loop.run_in_executor(self._executor, self.run, [p.item for p in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of this batch, which re-raises it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            finally:
                FORWARD_SECONDS.labels(self.name).observe(time.perf_counter() - started)
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    def close(self) -> None:
        if self._worker is not None and not self._worker.done() and self._loop is not None \
                and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._worker.cancel)
        self._executor.shutdown(wait=False, cancel_futures=True)
