"""The batcher's rules, without a server: a stand-in network that records its batches."""

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.batcher import Batcher
from services.errors import DeadlineExceeded, InternalError, Overloaded, QueueTimeout, Unavailable


class Network:
    """Doubles each row; records batch sizes; can be held (a batch 'running') until released."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.delay = delay
        self.fail = fail
        self.batches: list[list[float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.batches.append(rows[:, 0].tolist())
        self.started.set()
        self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the network broke")
        return rows * 2

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def batcher(network, **kw) -> Batcher:
    settings = dict(model="t", max_batch_size=4, max_latency_ms=50, max_queue_rows=64)
    settings.update(kw)
    return Batcher(network, **settings)


def deadline(seconds: float = 10) -> float:
    return time.monotonic() + seconds


async def hold_a_running_batch(net: Network, b: Batcher) -> asyncio.Task:
    """Start a one-row request (value 0) and keep its batch running until ``net.gate`` is set."""
    net.gate.clear()
    running = asyncio.create_task(b.submit(rows(0), deadline()))
    await asyncio.to_thread(net.started.wait, 5)
    return running


def dispatched(reason: str) -> float:
    return REGISTRY.get_sample_value("roost_batches_total", {"model": "t", "reason": reason}) or 0.0


def test_a_lone_request_runs_at_once_however_long_max_latency_is():
    net = Network()
    b = batcher(net, max_latency_ms=5000)
    before = dispatched("idle")

    async def go():
        start = time.monotonic()
        out = await b.submit(rows(1, 2), deadline())
        return out, time.monotonic() - start

    out, took = asyncio.run(go())
    assert out[:, 0].tolist() == [2, 4]
    assert took < 0.5
    assert dispatched("idle") == before + 1


def test_requests_that_arrive_while_a_batch_runs_share_the_next_batch_and_get_their_own_rows():
    net = Network()
    b = batcher(net, max_batch_size=32)

    async def go():
        first = await hold_a_running_batch(net, b)
        others = [asyncio.create_task(b.submit(rows(i, i + 0.5), deadline())) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # all five queued behind the running batch
        net.gate.set()
        return await first, await asyncio.gather(*others)

    first, others = asyncio.run(go())
    assert net.sizes == [1, 10]
    assert first[:, 0].tolist() == [0]
    for i, out in enumerate(others, start=1):
        assert out[:, 0].tolist() == [2 * i, 2 * i + 1]


def test_batches_never_exceed_max_batch_size_and_full_ones_say_so():
    net = Network()
    b = batcher(net, max_batch_size=4)
    before = dispatched("full")

    async def go():
        first = await hold_a_running_batch(net, b)
        rest = [asyncio.create_task(b.submit(rows(i), deadline())) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        net.gate.set()
        await first
        return await asyncio.gather(*rest)

    outs = asyncio.run(go())
    assert [o[0, 0] for o in outs] == [2 * i for i in range(1, 11)]
    assert net.sizes == [1, 4, 4, 2]
    assert dispatched("full") >= before + 2


def test_a_request_larger_than_max_batch_size_runs_in_chunks():
    net = Network()
    out = asyncio.run(batcher(net, max_batch_size=4).submit(rows(*range(10)), deadline()))
    assert net.sizes == [4, 4, 2]
    assert out[:, 0].tolist() == [2 * i for i in range(10)]


def test_a_full_queue_refuses_at_once_and_runs_nothing_it_refused():
    net = Network()
    b = batcher(net, max_queue_rows=3)

    async def go():
        running = await hold_a_running_batch(net, b)
        queued = asyncio.create_task(b.submit(rows(1, 2, 3), deadline()))
        await asyncio.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await b.submit(rows(99), deadline())
        refused_in = time.monotonic() - start
        net.gate.set()
        await running, await queued
        return refused.value, refused_in

    error, refused_in = asyncio.run(go())
    assert error.status == 429 and error.headers() == {"Retry-After": "1"}
    assert refused_in < 0.1
    assert 99 not in sum(net.batches, [])


def test_a_request_whose_deadline_passes_in_the_queue_gets_504_and_never_runs():
    net = Network()
    b = batcher(net)

    async def go():
        running = await hold_a_running_batch(net, b)
        with pytest.raises(DeadlineExceeded):
            await b.submit(rows(7), deadline(0.1))
        assert b.queued_rows == 0
        net.gate.set()
        await running
        await b.submit(rows(8), deadline())  # the batcher carries on

    asyncio.run(go())
    assert net.batches == [[0], [8]]


def test_a_request_queued_past_the_latency_target_gets_503_with_retry_after_and_never_runs():
    net = Network()
    b = batcher(net, max_queue_wait_ms=100)
    shed_before = REGISTRY.get_sample_value("roost_rejected_total", {"model": "t", "reason": "queue_timeout"}) or 0.0

    async def go():
        running = await hold_a_running_batch(net, b)
        began = time.monotonic()
        with pytest.raises(QueueTimeout) as caught:
            await b.submit(rows(7), deadline(10))  # its deadline is far: the queue's bound answers first
        assert time.monotonic() - began < 2
        assert caught.value.status == 503 and caught.value.headers() == {"Retry-After": "1"}
        assert b.queued_rows == 0
        net.gate.set()
        await running
        await b.submit(rows(8), deadline())

    asyncio.run(go())
    assert net.batches == [[0], [8]]
    assert REGISTRY.get_sample_value("roost_rejected_total", {"model": "t", "reason": "queue_timeout"}) == shed_before + 1


def test_a_request_taken_into_a_batch_waits_for_it_past_the_queue_bound():
    net = Network(delay=0.3)
    b = batcher(net, max_queue_wait_ms=50)

    async def go():
        return await b.submit(rows(3), deadline(10))

    assert asyncio.run(go()).tolist() == [[6.0]]


def test_a_caller_that_goes_away_is_dropped_unrun():
    net = Network()
    b = batcher(net)

    async def go():
        running = await hold_a_running_batch(net, b)
        gone = asyncio.create_task(b.submit(rows(5), deadline()))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        net.gate.set()
        await running
        await b.submit(rows(6), deadline())

    asyncio.run(go())
    assert net.batches == [[0], [6]]


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs():
    net = Network(fail=True)
    b = batcher(net)

    async def go():
        results = await asyncio.gather(b.submit(rows(1), deadline()), b.submit(rows(2), deadline()), return_exceptions=True)
        net.fail = False
        return results, await b.submit(rows(3), deadline())

    results, after = asyncio.run(go())
    assert all(isinstance(r, InternalError) and r.status == 500 for r in results)
    assert "broke" not in str(results[0])  # no internals in the answer
    assert after[0, 0] == 6


def test_close_answers_everything_accepted_and_refuses_what_comes_after():
    net = Network(delay=0.05)
    b = batcher(net, max_batch_size=2)

    async def go():
        accepted = [asyncio.create_task(b.submit(rows(i), deadline())) for i in range(6)]
        await asyncio.sleep(0)
        closing = asyncio.create_task(b.close(timeout=10))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable):
            await b.submit(rows(9), deadline())
        assert await closing is True
        return [t.result()[0, 0] for t in accepted]

    assert asyncio.run(go()) == [2 * i for i in range(6)]


def test_with_two_runners_a_free_runner_waits_max_latency_for_a_fuller_batch():
    net = Network()
    b = batcher(net, max_batch_size=8, max_latency_ms=150, runners=2)
    before = dispatched("latency")

    async def go():
        first = await hold_a_running_batch(net, b)
        start = time.monotonic()
        second = asyncio.create_task(b.submit(rows(1), deadline()))
        await asyncio.sleep(0.03)
        third = asyncio.create_task(b.submit(rows(2), deadline()))
        while len(net.batches) < 2:
            await asyncio.sleep(0.005)
        waited = time.monotonic() - start
        net.gate.set()
        await asyncio.gather(first, second, third)
        return waited

    waited = asyncio.run(go())
    assert net.batches == [[0], [1, 2]]
    assert 0.12 <= waited < 1.0
    assert dispatched("latency") == before + 1


def test_queue_depth_and_wait_are_exported():
    net = Network()
    b = batcher(net)

    async def go():
        running = await hold_a_running_batch(net, b)
        queued = asyncio.create_task(b.submit(rows(1, 2), deadline()))
        await asyncio.sleep(0.01)
        depth = REGISTRY.get_sample_value("roost_queue_rows", {"model": "t"})
        net.gate.set()
        await running, await queued
        return depth

    waits_before = REGISTRY.get_sample_value("roost_queue_seconds_count", {"model": "t"}) or 0
    assert asyncio.run(go()) == 2
    assert REGISTRY.get_sample_value("roost_queue_rows", {"model": "t"}) == 0
    assert REGISTRY.get_sample_value("roost_queue_seconds_count", {"model": "t"}) == waits_before + 2


def test_batches_that_take_microseconds_can_run_on_the_event_loop_thread():
    threads = []

    def network(batch):
        threads.append(threading.current_thread())
        return batch * 2

    out = asyncio.run(batcher(network, in_thread=False).submit(rows(1, 2), deadline()))
    assert out[:, 0].tolist() == [2, 4]
    assert threads == [threading.main_thread()]
    asyncio.run(batcher(network).submit(rows(1), deadline()))
    assert threads[1] is not threading.main_thread()
