"""What reaches Orthanc's log from the libraries the plugin uses: only at DEBUG.

pydicom, imagecodecs, urllib3 and Python's warnings write to Python's logging; a record nobody
handles goes to stderr, which is Orthanc's log, and library messages quote the values they stumble
on (a birth date, a name). Every such record becomes a DEBUG record of the plugin's own logger:
seen when an administrator asks for DEBUG, never at Orthanc's default levels.
"""

from __future__ import annotations

import logging

_PLUGIN_LOGGER = "neuronova"


class _AtDebug(logging.Handler):
    def __init__(self, target: logging.Logger):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(logging.DEBUG):
            self.target.debug("%s (%s): %s", record.name, record.levelname, record.getMessage())


def keep_libraries_at_debug() -> None:
    """Route every library record and warning to the plugin's logger at DEBUG (once per process)."""
    root = logging.getLogger()
    if any(isinstance(handler, _AtDebug) for handler in root.handlers):
        return
    logging.captureWarnings(True)
    root.addHandler(_AtDebug(logging.getLogger(f"{_PLUGIN_LOGGER}.libraries")))
    for name in ("pydicom", "py.warnings"):
        library = logging.getLogger(name)
        library.propagate = True  # to the root's handler above
        for handler in list(library.handlers):
            library.removeHandler(handler)
