"""Micro-batching: merging/padding of tensor batches and the async queue's grouping, ordering and failure handling."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from rakuten_mm.errors import ConfigError
from serving.batching import MicroBatcher, TensorBatch, merge, split

pytestmark = [pytest.mark.serving, pytest.mark.unit]


def _batch(ids: list[list[int]], image_value: int | None = None) -> TensorBatch:
    rows = len(ids)
    images = None if image_value is None else np.full((rows, 3, 2, 2), image_value, np.uint8)
    return TensorBatch(np.array(ids, np.int64), images, np.full(rows, image_value is not None))


def test_merge_pads_token_ids_to_the_longest_row_and_fills_missing_images() -> None:
    a = _batch([[1, 2, 3]], image_value=7)
    b = _batch([[4, 5, 6, 7, 8], [9, 0, 0, 0, 0]])
    merged = merge([a, b])
    assert merged.token_ids.tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 0, 0, 0, 0]]
    assert merged.image_mask.tolist() == [True, False, False]
    assert merged.images is not None and merged.images.shape == (3, 3, 2, 2)
    assert merged.images[0].min() == 7 and merged.images[1:].max() == 0
    parts = split(np.arange(3 * 2).reshape(3, 2), [a, b])
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5]]]


def test_merge_without_any_image_keeps_images_none() -> None:
    merged = merge([_batch([[1]]), _batch([[2, 3]])])
    assert merged.images is None
    assert merged.rows == 2


class Recorder:
    """A fake forward: records the batches it was given (rows per call) and echoes the items."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return [i * 10 for i in items]


def test_concurrent_requests_are_merged_up_to_max_batch_size_in_order() -> None:
    run = Recorder(delay=0.05)
    batcher = MicroBatcher(run, max_batch_size=4, max_delay_ms=50, rows=lambda _: 1)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(10))))

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert [len(c) for c in run.calls] == [4, 4, 2]
    assert sum(run.calls, []) == list(range(10))
    assert all(name.startswith("rakuten-forward") for name in run.threads)
    batcher.close()


def test_max_batch_size_one_turns_batching_off() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=1, max_delay_ms=50, rows=lambda _: 1)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(3))))

    assert asyncio.run(main()) == [0, 10, 20]
    assert run.calls == [[0], [1], [2]]
    batcher.close()


def test_rows_count_not_requests_and_oversized_items_go_alone() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=4, max_delay_ms=20, rows=lambda item: item)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(n) for n in (3, 1, 2, 9, 1))))

    assert asyncio.run(main()) == [30, 10, 20, 90, 10]
    assert run.calls == [[3, 1], [2], [9], [1]]
    batcher.close()


@pytest.mark.parametrize("delay_ms", [30, 150])
def test_a_lone_request_waits_the_configured_delay_and_no_longer(delay_ms: float) -> None:
    """A request alone waits for others to join for the configured delay (not 0, not a multiple of it)."""
    batcher = MicroBatcher(Recorder(), max_batch_size=8, max_delay_ms=delay_ms, rows=lambda _: 1)

    async def main() -> float:
        start = time.perf_counter()
        await batcher.submit(1)
        return time.perf_counter() - start

    waited = asyncio.run(main())
    batcher.close()
    delay = delay_ms / 1000
    # The slack covers a thread hop on a loaded machine; a delay 3x too long fails at 150 ms.
    assert 0.8 * delay <= waited < 2 * delay + 0.05, f"waited {waited * 1e3:.0f} ms for a {delay_ms} ms delay"


def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch_size=4, max_delay_ms=2000, rows=lambda _: 1)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))
        return time.perf_counter() - start

    assert asyncio.run(main()) < 0.5
    assert run.calls == [[0, 1, 2, 3]]
    batcher.close()


def test_a_failing_forward_fails_every_request_of_its_batch_and_the_queue_goes_on() -> None:
    run = Recorder(fail=True)
    batcher = MicroBatcher(run, max_batch_size=4, max_delay_ms=20, rows=lambda _: 1)

    async def main() -> list[object]:
        first = await asyncio.gather(*(batcher.submit(i) for i in range(2)), return_exceptions=True)
        run.fail = False
        return [*first, await batcher.submit(5)]

    results = asyncio.run(main())
    assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError]
    assert results[2] == 50
    batcher.close()


def test_a_cancelled_request_is_skipped() -> None:
    run = Recorder(delay=0.1)
    batcher = MicroBatcher(run, max_batch_size=1, max_delay_ms=0, rows=lambda _: 1)

    async def main() -> int:
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)  # 1 is in the forward now
        gone = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        await first
        return await batcher.submit(3)

    assert asyncio.run(main()) == 30
    assert run.calls == [[1], [3]]
    batcher.close()


def test_a_new_event_loop_gets_a_fresh_worker() -> None:
    batcher = MicroBatcher(Recorder(), max_batch_size=2, max_delay_ms=0, rows=lambda _: 1)
    assert asyncio.run(batcher.submit(1)) == 10
    assert asyncio.run(batcher.submit(2)) == 20
    batcher.close()


@pytest.mark.parametrize(("size", "delay", "message"), [
    (0, 5, "--max-batch-size must be at least 1"), (4, -1, "--max-batch-delay-ms must lie in"),
    (4, 20_000, "--max-batch-delay-ms must lie in")])
def test_bad_settings_fail_fast(size: int, delay: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MicroBatcher(Recorder(), max_batch_size=size, max_delay_ms=delay, rows=lambda _: 1)
