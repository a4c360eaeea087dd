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

    def _add(self, changes: dict[str, float], absolute: bool = False) -> None:
        with self._lock:
            for name, value in changes.items():
                self.values[name] = value if absolute else self.values[name] + value
            for name, value in self.values.items():
                self._publish(name, value)

    def count_transcode(self, result) -> None:
        if result.outcome == "transcoded":
            self._add({"neuronova_transcoded": 1})
        elif result.outcome == "failed":
            self._add({"neuronova_transcode_failures": 1})
        if "verification" in result.reason or "mismatch" in result.reason:
            self._add({"neuronova_verification_failures": 1})

    def count_instance(self, action: str, bytes_saved: int) -> None:
        self._add({f"neuronova_instances_{action}": 1, "neuronova_bytes_saved": max(bytes_saved, 0)})

    def set_lookups(self, lookups: int, errors: int) -> None:
        self._add({"neuronova_emr_lookups": lookups, "neuronova_emr_lookup_errors": errors}, absolute=True)
