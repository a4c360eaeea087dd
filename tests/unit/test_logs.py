"""Library messages (which quote the values they stumble on) reach Orthanc's log only at DEBUG."""

import logging
import warnings

import pydicom

from neuronova.logs import keep_libraries_at_debug


class Collected(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_library_records_and_warnings_become_debug_records_of_the_plugin():
    plugin = logging.getLogger("neuronova")
    collected = Collected()
    plugin.addHandler(collected)
    old_level, old_propagate = plugin.level, plugin.propagate
    plugin.propagate = False
    try:
        keep_libraries_at_debug()
        plugin.setLevel(logging.INFO)  # Orthanc's default: nothing of it appears
        logging.getLogger("pydicom").warning("Invalid value for VR DA: '19800115x'")
        warnings.warn("a value: HONG^GILDONG", UserWarning, stacklevel=1)
        assert collected.records == []
        plugin.setLevel(logging.DEBUG)  # asked for: it appears, at DEBUG
        pydicom.config.logger.warning("Invalid value for VR DA: '19800115x'")
        assert [record.levelno for record in collected.records] == [logging.DEBUG]
        assert "19800115x" in collected.records[0].getMessage()
    finally:
        plugin.removeHandler(collected)
        plugin.setLevel(old_level)
        plugin.propagate = old_propagate
