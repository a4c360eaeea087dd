"""Fixtures of the differential suite: a plain Orthanc and an Orthanc with the plugin, started per module (both
without the GDCM plugin, see support/differential.py). At the end of the run, the expected differences that
applied (support.differential.EXPECTED_DIFFERENCES) are counted, and the frame cases listed."""

import re

import pytest

from support.differential import APPLIED, EXPECTED_DIFFERENCES, LIVE_PAIRS, make_pair, upload_all

LISTED = {"frames-plain-fails", "frames-no-transcoding", "frames-no-pixel-data"}


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory):
    """(pair, {file: (plain POST answer, plugin POST answer)}), every file uploaded by REST to both."""
    pair = make_pair(tmp_path_factory, "differential")
    try:
        yield pair, upload_all(pair)
    finally:
        pair.stop()


@pytest.fixture(autouse=True)
def servers_survive():
    """A server that crashed during a test fails that test (with its name) and is started again for the next."""
    yield
    for pair in list(LIVE_PAIRS):
        restarted = pair.revive()
        if restarted:
            pytest.fail(f"Orthanc crashed during this test: {', '.join(pair.crashes[-len(restarted):])}; restarted")


def pytest_terminal_summary(terminalreporter):
    if not APPLIED:
        return
    write = terminalreporter.write_line
    terminalreporter.section("expected differences applied (support.differential.EXPECTED_DIFFERENCES)")
    for key, difference in EXPECTED_DIFFERENCES.items():
        cases = APPLIED.get(key, [])
        write(f"{key}: {len(cases)} checks - {difference.why}")
        if key in LISTED:
            for case in cases:
                write("    " + re.sub(r"/dicom-web/studies/\S+/frames/", ".../frames/", case))
