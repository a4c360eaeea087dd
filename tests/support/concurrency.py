"""Races for the tests: several works released at the same moment, each in its own thread."""

from __future__ import annotations

import threading


def at_once(*works):
    """Call every no-argument callable in its own thread, all released together by one barrier; their
    results in order. An exception in any thread fails the caller (all of them listed) once all ended."""
    start, results = threading.Barrier(len(works)), [None] * len(works)

    def run(index, work):
        start.wait()
        try:
            results[index] = work()
        except Exception as error:  # noqa: BLE001 - raised below in the caller's thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(index, work)) for index, work in enumerate(works)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    errors = [result for result in results if isinstance(result, Exception)]
    assert not errors, errors
    return results
