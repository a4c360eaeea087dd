"""Counters the plugin publishes through Orthanc's own Prometheus endpoint (/tools/metrics-prometheus)."""

from __future__ import annotations

import threading
from typing import Callable

from .reconcile import ACTIONS


class Metrics:
    """Counts in memory and publishes every counter (Orthanc's SetMetricsValue) on each change:
    Orthanc drops values set while the plugin starts, so zeros only appear with the first instance."""

    def __init__(self, publish: Callable[[str, float], None]):
        self._publish = publish
        self._lock = threading.Lock()
        self.values: dict[str, float] = {f"neuronova_instances_{action}": 0 for action in ACTIONS}
        self.values.update(neuronova_transcoded=0, neuronova_transcode_failures=0, neuronova_bytes_saved=0,
                           neuronova_emr_lookups=0, neuronova_emr_lookup_errors=0, neuronova_stored_bytes=0,
                           neuronova_received_bytes=0, neuronova_compressed_files=0,
                           neuronova_background_pending=0)
        self.storage_totals: Callable[[], dict] = dict  # the storage ledger's totals, once it exists
        self._published: dict[str, float] = {}

    def count(self, outcome: str, action: str, bytes_saved: int, lookups: int, lookup_errors: int) -> None:
        """One instance's counts (what the storage area did, its history action, the EMR lookup totals),
        published once: this runs in Orthanc's serialized stored-instance callback."""
        with self._lock:
            if outcome == "compressed":
                self.values["neuronova_transcoded"] += 1
            elif outcome == "failed":
                self.values["neuronova_transcode_failures"] += 1
            self.values[f"neuronova_instances_{action}"] += 1
            totals = self.storage_totals()
            for name, key in (("neuronova_stored_bytes", "stored_bytes"), ("neuronova_received_bytes", "received_bytes"),
                              ("neuronova_compressed_files", "compressed_files"),
                              ("neuronova_background_pending", "pending")):
                if key in totals:
                    self.values[name] = totals[key]
            self.values["neuronova_bytes_saved"] += max(bytes_saved, 0)
            self.values["neuronova_emr_lookups"] = lookups
            self.values["neuronova_emr_lookup_errors"] = lookup_errors
            for name, value in self.values.items():
                if self._published.get(name) != value:  # the first instance publishes every counter
                    self._publish(name, value)
                    self._published[name] = value
