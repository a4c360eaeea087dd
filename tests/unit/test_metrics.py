"""The plugin's counters: counted on the ingest threads, published by one thread in rounds."""

import threading
import time

from neuronova.metrics import Metrics


class Published:
    def __init__(self):
        self.values, self.calls, self.lock = {}, 0, threading.Lock()

    def __call__(self, name, value):
        with self.lock:
            self.values[name] = value
            self.calls += 1


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_nothing_is_published_before_the_first_instance_then_every_counter():
    published = Published()
    metrics = Metrics(published)
    metrics.storage_totals = lambda: {"stored_bytes": 40, "received_bytes": 100, "compressed_files": 1, "pending": 0}
    time.sleep(0.3)
    assert published.calls == 0
    metrics.count("compressed", "coerced", 60, lookups=1, lookup_errors=0)
    assert wait_for(lambda: published.values.get("neuronova_transcoded") == 1)
    assert published.values["neuronova_instances_coerced"] == 1
    assert published.values["neuronova_instances_unmatched"] == 0
    assert published.values["neuronova_bytes_saved"] == 60
    assert published.values["neuronova_stored_bytes"] == 40
    metrics.stop()


def test_a_burst_of_instances_is_published_in_a_few_rounds():
    published = Published()
    metrics = Metrics(published)
    for _ in range(1000):
        metrics.count("compressed", "unchanged", 10, lookups=0, lookup_errors=0)
    assert wait_for(lambda: published.values.get("neuronova_transcoded") == 1000)
    rounds = published.calls / len(metrics.values)
    assert rounds <= 3, f"{rounds} rounds for 1000 instances"
    metrics.stop()
    calls = published.calls
    metrics.count("compressed", "unchanged", 10, lookups=0, lookup_errors=0)
    time.sleep(0.7)
    assert published.calls == calls  # stopped: no SDK call once Orthanc is stopping
