#!/usr/bin/env python3
"""Fault and abuse campaign (issue 11, "Must show"): malformed files from a fixed seed through every path into a
real Orthanc with the plugin (working tree) and a plugin-less one, then the probes (nested JSON, frame numbers,
cross-site requests, concurrency, memory, full disk, kill -9 during a ZIP upload, POST /tools/reset).

    .venv/bin/python bench/campaign.py [--seed 11] [--count 400] [--quick] [--only mutations,probes,...]

A measurement: it exits 0 whatever it finds. Table on stdout, JSON in bench/results/campaign-<time>.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(BENCH_DIR), "tests"))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.join(os.path.dirname(BENCH_DIR), "plugin"))  # tests/support/storage_files imports it

from campaign import probes, report  # noqa: E402
from campaign.mutations import Generator  # noqa: E402
from campaign.sending import Result, Sender, json_safe  # noqa: E402
from campaign.servers import Managed  # noqa: E402
from ingest_bench import git_state, orthanc_version  # noqa: E402

# DCMTK holds an association whose data set does not parse until DicomScpTimeout (30 s by default; measured on
# truncated files, plain Orthanc alike): 2 s keeps the campaign's C-STORE of such files short.
SERVER_OVERRIDES = {"DicomScpTimeout": 2}
PROBES = ("json", "frames", "cross_site", "concurrency", "memory", "full_disk", "kill9", "reset")


def run_mutations(cases, plugin: Managed, plain: Managed, senders: dict, progress_every: int = 20) -> list[Result]:
    """Every case through every path of both servers, the two servers at once (a truncated C-STORE holds an
    association until DicomScpTimeout); the plain Orthanc's C-STORE copy is the reference the plugin's is
    compared with; the upload route exists on the plugin's server only."""
    results: list[Result] = []
    started = time.monotonic()

    def through(server: Managed, case) -> dict:
        return {path: senders[server.label].send(server, case, path) for path in case.paths
                if server.plugin or path != "upload"}

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for index, case in enumerate(cases):
            theirs, mine = pool.submit(through, plain, case), pool.submit(through, plugin, case)
            theirs, mine = theirs.result(), mine.result()
            twin, own = theirs.get("cstore"), mine.get("cstore")
            if twin is not None and own is not None and twin.outcome == own.outcome == "accepted":
                differing = [sop for sop, sha in own.readback_sha.items() if twin.readback_sha.get(sop) != sha]
                if differing and plain_repeats(senders["plain"], plain, case, twin):
                    own.byte_mismatch = len(differing)
                    own.detail = (own.detail + "; read back differs from plain Orthanc's C-STORE copy")[:600]
                elif differing:
                    own.detail = (own.detail + "; differs from plain Orthanc's copy, but plain Orthanc's own two "
                                  "copies differ too (DCMTK made up values): not counted")[:600]
                    own.plain_nondeterministic = True
            for r in (*theirs.values(), *mine.values()):
                r.valid_refused = case.valid and r.outcome != "accepted"
                results.append(r)
            if progress_every and (index + 1) % progress_every == 0:
                print(f"  {index + 1}/{len(cases)} cases, {time.monotonic() - started:.0f} s, "
                      f"plugin crashes {len(plugin.crashes)} hangs {len(plugin.hangs)}, "
                      f"plain crashes {len(plain.crashes)}", flush=True)
    return results


def plain_repeats(sender: Sender, plain: Managed, case, first: Result) -> bool:
    """Whether plain Orthanc stores the same C-STORE twice the same (else it is no reference)."""
    again = sender.send(plain, case, "cstore")
    return again.outcome == "accepted" and again.readback_sha == first.readback_sha


def summarize(results: list[Result]) -> dict:
    servers = sorted({r.server for r in results})
    return {
        "totals": {s: report.counts([r for r in results if r.server == s]) for s in servers},
        "per_path": {s: report.grouped([r for r in results if r.server == s], lambda r: r.path) for s in servers},
        "per_kind": {s: report.grouped([r for r in results if r.server == s], lambda r: r.kind) for s in servers},
        "defects": report.defects(results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--count", type=int, default=None, help="random mutations (default 300; --quick 24)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: few mutations, memory probes at 1/10 size (upload route only), 20 clients")
    parser.add_argument("--only", default="mutations," + ",".join(PROBES),
                        help=f"comma-separated subset of mutations,{','.join(PROBES)}")
    parser.add_argument("--clients", type=int, default=None, help="concurrent uploads (default 100; --quick 20)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as a hang")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (Orthanc logs)")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom warns about every malformed value the campaign makes on purpose
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    count = args.count if args.count is not None else (24 if args.quick else 300)
    clients = args.clients or (20 if args.quick else 100)
    scale = 0.1 if args.quick else 1.0
    selected = set(args.only.split(","))

    root = tempfile.mkdtemp(prefix="neuronova-campaign-")
    started = time.monotonic()
    results: list[Result] = []
    out = {"seed": args.seed, "count": count, "quick": args.quick, "git": git_state(), "orthanc": orthanc_version(),
           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "probes": {}}
    plugin = Managed("plugin", root, True, SERVER_OVERRIDES).start()
    plain = Managed("plain", root, False, SERVER_OVERRIDES).start()
    try:
        if "mutations" in selected:
            generator = Generator(args.seed)
            cases = generator.targeted() + generator.random_cases(count)
            out["cases"] = len(cases)
            print(f"{len(cases)} cases ({count} random, seed {args.seed}) through rest, upload, stow, cstore",
                  flush=True)
            senders = {m.label: Sender(args.timeout, root) for m in (plugin, plain)}
            results = run_mutations(cases, plugin, plain, senders)
            out["phase_seconds"] = {"mutations": round(time.monotonic() - started)}
        out["cases"] = out.get("cases", 0)
        for name, fn in (("json", lambda: probes.nested_json(plugin, plain)),
                         ("frames", lambda: probes.frame_numbers(plugin, plain)),
                         ("cross_site", lambda: probes.cross_site(plugin, plain)),
                         ("concurrency", lambda: [probes.concurrency(s, route, clients, 120)
                                                  for s, route in ((plugin, "upload"), (plugin, "rest"),
                                                                   (plain, "rest"))])):
            if name in selected:
                print(f"probe {name}", flush=True)
                began = time.monotonic()
                out["probes"][name] = fn()
                out.setdefault("phase_seconds", {})[name] = round(time.monotonic() - began)
        out["servers"] = {m.label: {"crashes": m.crashes, "hangs": m.hangs, "restarts": m.restarts}
                          for m in (plugin, plain)}
    finally:
        plugin.stop()
        plain.stop()
    for name, fn in (("memory", lambda: probes.memory(root, scale, 600, upload_only=args.quick)),
                     ("full_disk", lambda: probes.full_disk(root)),
                     ("kill9", lambda: probes.kill_during_zip(root, 60 if args.quick else 200)),
                     ("reset", lambda: probes.tools_reset(root))):
        if name in selected:
            print(f"probe {name}", flush=True)
            began = time.monotonic()
            try:
                out["probes"][name] = fn()
            except Exception as error:  # a probe that cannot run is reported, the campaign goes on
                out["probes"][name] = {"error": f"{type(error).__name__}: {error}"}
            out.setdefault("phase_seconds", {})[name] = round(time.monotonic() - began)
    out.update(summarize(results))
    out["results"] = json_safe(results)
    out["seconds"] = time.monotonic() - started
    out["git_end"] = git_state()
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out["json_path"] = os.path.join(args.out, f"campaign-{stamp}{'-quick' if args.quick else ''}.json")
    with open(out["json_path"], "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=1, default=str)
    out.setdefault("servers", {"plugin": {}, "plain": {}})
    with open(out["json_path"][:-len(".json")] + ".md", "w", encoding="utf-8") as handle:
        handle.write(report.markdown(out))
    report.print_report({**out, "servers": {k: {"crashes": len(v.get("crashes", [])), "hangs": len(v.get("hangs", []))}
                                            for k, v in out["servers"].items()}})
    if args.keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
