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
        self.values.update(neuronova_transcoded=0, neuronova_transcode_failures=0,
                           neuronova_verification_failures=0, neuronova_bytes_saved=0,
                           neuronova_emr_lookups=0, neuronova_emr_lookup_errors=0)

    def count(self, result, action: str, bytes_saved: int, lookups: int, lookup_errors: int) -> None:
        """One instance's counts (a TranscodeResult, its history action, the EMR lookup totals),
        published once: this runs in Orthanc's serialized ingest callbacks."""
        with self._lock:
            if result.outcome == "transcoded":
                self.values["neuronova_transcoded"] += 1
            elif result.outcome == "failed":
                self.values["neuronova_transcode_failures"] += 1
            if "verification" in result.reason or "mismatch" in result.reason:
                self.values["neuronova_verification_failures"] += 1
            self.values[f"neuronova_instances_{action}"] += 1
            self.values["neuronova_bytes_saved"] += max(bytes_saved, 0)
            self.values["neuronova_emr_lookups"] = lookups
            self.values["neuronova_emr_lookup_errors"] = lookup_errors
            for name, value in self.values.items():
                self._publish(name, value)
