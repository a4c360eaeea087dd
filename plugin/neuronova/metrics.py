"""Counters the plugin publishes through Orthanc's own Prometheus endpoint (/tools/metrics-prometheus)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .reconcile import ACTIONS

log = logging.getLogger("neuronova.metrics")
PUBLISH_SECONDS = 0.5
IDLE_ROUND_SECONDS = 5.0


class Metrics:
    """Counts in memory; one thread publishes them (Orthanc's SetMetricsValue) within half a second.

    Publishing from the ingest threads cost three or four SDK calls per instance, each a GIL hand-off
    between Orthanc's HTTP threads (measured); the publisher coalesces a burst into one round. Zeros
    appear with the first instance."""

    def __init__(self, publish: Callable[[str, float], None]):
        self._publish = publish
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = False
        self.values: dict[str, float] = {f"neuronova_instances_{action}": 0 for action in ACTIONS}
        self.values.update(neuronova_transcoded=0, neuronova_transcode_failures=0, neuronova_bytes_saved=0,
                           neuronova_emr_lookups=0, neuronova_emr_lookup_errors=0, neuronova_stored_bytes=0,
                           neuronova_received_bytes=0, neuronova_compressed_files=0,
                           neuronova_background_pending=0)
        self.storage_totals: Callable[[], dict] = dict  # the storage ledger's totals, once it exists
        self._counted = False  # Orthanc drops values set while the plugin starts: none before an instance
        self._thread = threading.Thread(target=self._publish_forever, name="neuronova-metrics", daemon=True)
        self._thread.start()

    def count(self, outcome: str, action: str, bytes_saved: int, lookups: int, lookup_errors: int) -> None:
        """One instance's counts: what the storage area did, its history action, the EMR lookup totals."""
        with self._lock:
            if outcome == "compressed":
                self.values["neuronova_transcoded"] += 1
            elif outcome == "failed":
                self.values["neuronova_transcode_failures"] += 1
            self.values[f"neuronova_instances_{action}"] += 1
            self.values["neuronova_bytes_saved"] += max(bytes_saved, 0)
            self.values["neuronova_emr_lookups"] = lookups
            self.values["neuronova_emr_lookup_errors"] = lookup_errors
            self._counted = True
        self._changed.set()

    def publish_now(self) -> None:
        """Publish every value: one round of SDK calls for however many instances came meanwhile."""
        totals = self.storage_totals()
        with self._lock:
            for name, key in (("neuronova_stored_bytes", "stored_bytes"),
                              ("neuronova_received_bytes", "received_bytes"),
                              ("neuronova_compressed_files", "compressed_files"),
                              ("neuronova_background_pending", "pending")):
                if key in totals:
                    self.values[name] = totals[key]
            values = list(self.values.items())
        try:
            for name, value in values:
                self._publish(name, value)
        except Exception:
            log.exception("Could not publish the plugin's metrics")

    def stop(self) -> None:
        """Orthanc is stopping: no SDK call after this returns."""
        self._stopping = True
        self._changed.set()
        self._thread.join(timeout=5)

    def _publish_forever(self) -> None:
        """A round at most every half second while instances come, and every few seconds anyway: a
        value Orthanc dropped (while starting) and the background work's totals appear all the same."""
        while not self._stopping:
            changed = self._changed.wait(IDLE_ROUND_SECONDS)
            self._changed.clear()
            if self._stopping:
                return
            if changed or self._counted:
                self.publish_now()
            time.sleep(PUBLISH_SECONDS)
