"""Every stored instance has its history row, even after a crash.

The row is written just after Orthanc commits the instance (the stored-instance callback), so a
process killed in between leaves an instance without one. At the next start, the instances among
Orthanc's latest changes that have no row get one, "recovered": what was decided is not known any
more, what is stored is. No row can name an instance that is not stored (rows follow the commit).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Callable

from .errors import NeuroNovaError, NotFound
from .history import HistoryEntry, IngestHistory
from .reconcile import RECOVERED
from .shared_state.database import DATABASE_ERRORS

log = logging.getLogger("neuronova.history")

RECENT_CHANGES = 2000  # far more instances than a crash can leave without a row (rows are written every 50 ms)


def recover_missing_rows(core_get: Callable[[str], bytes], history: IngestHistory,
                         sizes: Callable[[str], tuple[int, int]], others_seconds: float = 0.0) -> int:
    """Write the missing rows; how many. `core_get` is Orthanc's own REST API (Pacs.core_get), `sizes`
    the storage ledger's (received, stored) bytes of a file. `others_seconds`: with several servers on
    one index, the rows of another server's latest instances may still be on their way: the missing
    ones are looked for again after that long."""
    try:
        files = _latest_instances_files(core_get)
        recorded = history.recorded_attachments(list(files))
        missing = [uuid for uuid in files if uuid not in recorded]
        if missing and others_seconds:
            time.sleep(others_seconds)
            recorded = history.recorded_attachments(missing)
            missing = [uuid for uuid in missing if uuid not in recorded]
        for uuid in missing:
            tags = json.loads(core_get(f"/instances/{files[uuid]}/tags?simplify"))
            received, stored = sizes(uuid)
            history.record(HistoryEntry(
                path="unknown", remote="", sop_instance_uid=tags.get("SOPInstanceUID", ""),
                study_instance_uid=tags.get("StudyInstanceUID", ""), patient_before="",
                patient_after=tags.get("PatientID", ""), action=RECOVERED, syntax_before="", syntax_after="",
                bytes_before=received, bytes_after=stored, duration_ms=0.0, attachment=uuid,
                error="stored just before Orthanc stopped abruptly: row written at the next start"))
    except (NeuroNovaError, ValueError, KeyError, sqlite3.Error, *DATABASE_ERRORS) as error:
        log.error("the history could not be checked against Orthanc's latest instances: %s", type(error).__name__)
        return 0
    if missing:
        log.warning("%d instances stored just before Orthanc stopped abruptly had no history row: recorded as "
                    "'recovered'", len(missing))
    return len(missing)


def _latest_instances_files(core_get: Callable[[str], bytes]) -> dict[str, str]:
    """{storage-area file uuid: Orthanc instance ID} of the instances among the latest changes."""
    last = json.loads(core_get("/changes?last")).get("Last", 0)
    since, instances = max(0, last - RECENT_CHANGES), []
    while since < last:
        page = json.loads(core_get(f"/changes?since={since}&limit=1000"))
        instances += [change["ID"] for change in page.get("Changes", []) if change.get("ChangeType") == "NewInstance"]
        if page.get("Done", True) or not page.get("Changes"):
            break
        since = page.get("Last", last)
    files = {}
    for instance in instances:
        try:
            files[json.loads(core_get(f"/instances/{instance}/attachments/dicom/info"))["Uuid"]] = instance
        except NotFound:
            continue  # deleted since
    return files
