"""The dynamic batcher: concurrent submissions run together, bounded, with failures delivered to their callers."""

import threading
import time

import pytest

from simengine.service.batching import DynamicBatcher, QueueFull


class Recorder:
    """A batch function that doubles its items and remembers the batch sizes; `gate` holds it until set."""

    def __init__(self):
        self.sizes, self.gate = [], threading.Event()
        self.gate.set()

    def __call__(self, items):
        self.gate.wait(10)
        self.sizes.append(len(items))
        return [2 * x for x in items]


def test_concurrent_submissions_share_batches_and_get_their_own_results():
    run = Recorder()
    batcher = DynamicBatcher(run, max_batch_size=16, max_wait_s=0.05)
    results, start = {}, threading.Barrier(24)

    def caller(n):
        start.wait()
        results[n] = [f.result(10) for f in batcher.submit([n, n + 1000])]

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert results == {n: [2 * n, 2 * (n + 1000)] for n in range(24)}
    assert sum(run.sizes) == 48 and max(run.sizes) <= 16 and len(run.sizes) <= 6  # 48 items, not 24 calls of 2


def test_a_full_batch_starts_at_once_and_a_lone_item_after_the_wait():
    batcher = DynamicBatcher(Recorder(), max_batch_size=4, max_wait_s=5.0)
    start = time.monotonic()
    assert [f.result(2) for f in batcher.submit([1, 2, 3, 4])] == [2, 4, 6, 8]
    assert time.monotonic() - start < 2
    batcher.close()
    short = DynamicBatcher(Recorder(), max_batch_size=4, max_wait_s=0.2)
    start = time.monotonic()
    assert short.submit([5])[0].result(5) == 10
    assert time.monotonic() - start >= 0.19
    short.close()


def test_the_queue_is_bounded_and_all_or_nothing():
    run = Recorder()
    run.gate.clear()  # the first batch blocks; later items queue behind it
    seen = []
    batcher = DynamicBatcher(run, max_batch_size=2, max_wait_s=0, max_queued=4, on_batch=lambda n, s: seen.append(n))
    first = batcher.submit([1, 2])
    deadline = time.monotonic() + 5
    while batcher.depth and time.monotonic() < deadline:
        time.sleep(0.01)  # the first batch has left the queue and is running
    queued = batcher.submit([3, 4, 5])
    with pytest.raises(QueueFull, match="3 images are waiting"):
        batcher.submit([6, 7])
    assert batcher.depth == 3
    run.gate.set()
    assert [f.result(5) for f in first + queued] == [2, 4, 6, 8, 10]
    batcher.close()
    assert seen == [2, 2, 1]


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on():
    def run(items):
        if -1 in items:
            raise ValueError("bad batch")
        return items

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_s=0)
    with pytest.raises(ValueError, match="bad batch"):
        batcher.submit([-1])[0].result(5)
    assert batcher.submit([3])[0].result(5) == 3
    batcher.close()


def test_a_failing_metrics_hook_does_not_stop_the_batcher():
    def hook(size, seconds):
        raise RuntimeError("metrics are down")

    batcher = DynamicBatcher(Recorder(), max_batch_size=2, max_wait_s=0, on_batch=hook)
    assert batcher.submit([1])[0].result(5) == 2 and batcher.submit([2])[0].result(5) == 4
    batcher.close()


def test_cancelled_items_are_not_run_and_close_finishes_the_queue():
    run = Recorder()
    run.gate.clear()
    batcher = DynamicBatcher(run, max_batch_size=1, max_wait_s=0)
    running = batcher.submit([1])
    while batcher.depth:
        time.sleep(0.01)
    gone, kept = batcher.submit([2]), batcher.submit([3])
    assert gone[0].cancel()
    run.gate.set()
    batcher.close(timeout_s=5)
    assert running[0].result() == 2 and kept[0].result() == 6 and run.sizes == [1, 1]
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit([4])
