"""Re-verification: studies stored `unverified` (the EMR could not answer) are reconciled again, without
anyone acting, as soon as the EMR answers again (the reconciler says so) and on a schedule. What the EMR
now knows is applied (the study moved to its patient, COERCE) and recorded; what it still does not know
is recorded `unmatched`, so that it waits in the worklist for a person."""

from __future__ import annotations

import logging
import threading

from ..dicom.assign import REASON_COERCE, modifying_system, patient_tags
from ..directory import PatientDirectory
from ..errors import DirectoryUnavailable, NeuroNovaError, NotFound, StudyBusy
from ..history import IngestHistory
from ..ingest import Correction
from ..reconcile import COERCED, UNCHANGED, UNMATCHED, UNVERIFIED, OwnersNotLoaded
from .listing import Worklist, settling_entry
from .move import StudyMover

log = logging.getLogger("neuronova.worklist")

PATH = "reverify"


class Reverifier:
    def __init__(self, worklist: Worklist, mover: StudyMover, directory: PatientDirectory, history: IngestHistory,
                 every_seconds: float, retry_seconds: float):
        self.worklist = worklist
        self.mover = mover
        self.directory = directory
        self.history = history
        self.every_seconds = every_seconds  # the schedule; 0: only when the EMR answers again
        self.retry_seconds = retry_seconds  # how soon to ask again while studies wait for an unavailable EMR
        self._waiting = True  # studies may wait from before a restart: the first round comes soon
        self._emr_down = False  # the reconciler saw the EMR fail and not yet answer again
        self._round = threading.Lock()  # the thread's rounds and the route's never overlap
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neuronova-reverify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def directory_state(self, available: bool) -> None:
        """The reconciler saw the EMR stop answering, or answer again (called under its lock: only
        wakes the thread, which then asks every RetrySeconds until the waiting studies are settled)."""
        self._emr_down = not available
        self._waiting = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.retry_seconds if self._waiting else (self.every_seconds or None))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except (NeuroNovaError, OwnersNotLoaded) as error:
                self._waiting = True
                log.warning("re-verification round stopped: %s", type(error).__name__)
                log.debug("re-verification: %s", error)
            except Exception:  # a bug must not end the thread: the next round tries again
                log.exception("re-verification round failed")

    def run_once(self) -> dict[str, int]:
        """One round over the unverified studies; counts of what happened. Stops at the first study the
        EMR cannot answer for (it is down again: the next round goes on)."""
        with self._round:
            return self._round_once()

    def _round_once(self) -> dict[str, int]:
        counts = {COERCED: 0, UNCHANGED: 0, UNMATCHED: 0}
        unavailable, checked = False, 0
        for study, rows in self.worklist.unsettled_studies(having=UNVERIFIED):
            unverified = [row for row in rows if row["action"] == UNVERIFIED]
            if not unverified:
                continue
            try:
                patient = self.directory.resolve(study.patient["PatientID"], study.issuer)
            except DirectoryUnavailable:
                log.info("re-verification waits: the EMR is unavailable")
                unavailable = True
                break
            checked += 1
            if patient is None:
                self._record(unverified, UNMATCHED, "not known to the EMR directory on re-verification")
                counts[UNMATCHED] += len(unverified)
            elif patient_tags(patient) == study.patient:
                self._record(unverified, UNCHANGED, "")
                counts[UNCHANGED] += len(unverified)
            else:
                try:
                    answer = self.mover.apply(study.orthanc_id, Correction(
                        patient_tags(patient), COERCED, REASON_COERCE, modifying_system(), PATH))
                except (StudyBusy, NotFound):  # another server of the cluster moves it, or has moved it
                    continue
                counts[COERCED] += answer["moved_instances"]
        if checked:
            self._emr_down = False
        # While the EMR is down, ask again soon: studies stored meanwhile wait for its return.
        self._waiting = unavailable or self._emr_down
        if any(counts.values()):
            log.info("re-verification: %d instances moved to their EMR patient, %d verified unchanged, %d unmatched",
                     counts[COERCED], counts[UNCHANGED], counts[UNMATCHED])
        return counts

    def _record(self, rows: list[dict], action: str, error: str) -> None:
        for row in rows:
            self.history.record(settling_entry(row, PATH, action, row["patient_after"], error))
