"""Real DICOM network clients for the tests: dcmtk's storescu."""

from __future__ import annotations

import subprocess


def storescu(port: int, files: list[str], called_aet: str = "NEURONOVA", calling_aet: str = "TESTSCU",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Send files with dcmtk storescu, proposing each file's own transfer syntax (as scanners do)."""
    return subprocess.run(["storescu", "-aet", calling_aet, "-aec", called_aet, *extra, "127.0.0.1", str(port), *files],
                          capture_output=True, text=True, timeout=120)
