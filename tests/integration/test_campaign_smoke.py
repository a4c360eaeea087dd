"""Smoke test of the fault and abuse campaign (bench/campaign.py): a --quick run with a tiny random count
against real Orthancs (the plugin from the working tree and a plugin-less one) completes, exits 0 and writes a
report whose figures add up. It asserts nothing about the defects the campaign finds: the lead decides which
figures become assertions once they are fixed."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from support.servers import REPO_ROOT

CAMPAIGN = os.path.join(REPO_ROOT, "bench", "campaign.py")
OUTCOMES = ("accepted", "refused_clear", "refused_unclear", "http_500", "other", "aborted", "crash", "hang")


def test_quick_campaign_completes_and_reports(tmp_path):
    run = subprocess.run([sys.executable, CAMPAIGN, "--quick", "--count", "3", "--only",
                          "mutations,json,frames,cross_site,reset", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    reports = glob.glob(str(tmp_path / "campaign-*-quick.json"))
    assert len(reports) == 1, os.listdir(tmp_path)
    with open(reports[0], encoding="utf-8") as handle:
        report = json.load(handle)
    assert "NeuroNova fault and abuse campaign: seed 11" in run.stdout
    assert report["json_path"] in run.stdout

    results = report["results"]
    cases = {r["case"] for r in results}
    assert len(cases) == report["cases"] and len(cases) > 3 + 10  # the targeted set plus 3 random
    # Every case went through every path it applies to, on both servers (the upload route: the plugin's only).
    for case in cases:
        seen = {(r["server"], r["path"]) for r in results if r["case"] == case}
        paths = {path for _, path in seen}
        assert ("plugin", "rest") in seen and ("plain", "rest") in seen, case
        assert ("plugin", "upload") in seen and ("plain", "upload") not in seen, case
        if "stow" in paths:
            assert {("plugin", "stow"), ("plain", "stow"), ("plugin", "cstore"), ("plain", "cstore")} <= seen, case
    # The figures add up: every file sent has exactly one outcome, per server and per path.
    for server, totals in report["totals"].items():
        assert totals["sent"] == sum(totals[o] for o in OUTCOMES), server
        assert totals["sent"] == sum(row["sent"] for row in report["per_path"][server].values()), server
        assert totals["sent"] == sum(1 for r in results if r["server"] == server and r["outcome"] != "not_sent")
    # A well-formed control file was sent and read back on the REST path of both servers.
    controls = [r for r in results if r["kind"] == "control" and r["path"] == "rest"]
    assert controls and all(r["outcome"] in OUTCOMES for r in controls)
    # Each defect entry names a case that was run and what went wrong.
    for defect in report["defects"]:
        assert defect["example_case"] in cases and defect["count"] >= 1 and defect["what"]
    assert {"json", "frames", "cross_site", "reset"} <= set(report["probes"])
