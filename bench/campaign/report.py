"""Figures of a campaign: counts per path and per mutation kind, the list of defects, a table on stdout."""

from __future__ import annotations

from collections import defaultdict

from .sending import DEFECTS, Result

COLUMNS = ("sent", "accepted", "refused_clear", "refused_unclear", "http_500", "other", "aborted", "crash", "hang",
           "byte_mismatch", "pixel_mismatch", "members_lost", "valid_refused", "not_as_received", "leaks_internals",
           "exception_names", "not_sent")


def counts(results: list[Result]) -> dict:
    row = {column: 0 for column in COLUMNS} | {"plain_nondeterministic": 0}
    for r in results:
        if r.outcome != "not_sent":
            row["sent"] += 1
        row[r.outcome] += 1
        row["byte_mismatch"] += bool(r.byte_mismatch)
        row["pixel_mismatch"] += bool(r.pixel_mismatch)
        row["members_lost"] += r.members_lost
        row["valid_refused"] += r.valid_refused
        row["not_as_received"] += bool(r.not_as_received)
        row["leaks_internals"] += r.leaks_internals
        row["exception_names"] += r.exception_names
        row["plain_nondeterministic"] = row.get("plain_nondeterministic", 0) + r.plain_nondeterministic
    row["pixels_checked"] = sum(r.pixels_checked for r in results)
    return row


def grouped(results: list[Result], key) -> dict:
    groups: dict = defaultdict(list)
    for r in results:
        groups[key(r)].append(r)
    return {name: counts(items) for name, items in sorted(groups.items())}


def defect_flags(r: Result) -> list[str]:
    flags = [r.outcome] if r.outcome in DEFECTS else []
    flags += [name for name in ("byte_mismatch", "pixel_mismatch", "members_lost", "valid_refused",
                                "not_as_received", "leaks_internals", "exception_names") if getattr(r, name)]
    return flags


def defects(results: list[Result]) -> list[dict]:
    """One entry per (server, path, kind, what went wrong), with the count, an example and what the plain
    Orthanc did with the same case on the same path."""
    plain = {(r.case, r.path): r for r in results if r.server == "plain"}
    groups: dict = defaultdict(list)
    for r in results:
        for flag in defect_flags(r):
            groups[(r.server, r.path, r.kind, flag)].append(r)
    out = []
    for (server, path, kind, flag), items in groups.items():
        example = items[0]
        twin = plain.get((example.case, path)) if server != "plain" else None
        plain_same = [plain.get((r.case, path)) for r in items] if server != "plain" else []
        out.append({"server": server, "path": path, "kind": kind, "what": flag, "count": len(items),
                    "example_case": example.case, "status": example.status, "detail": example.detail[:300],
                    "log": example.log[:4],
                    "plain_outcome_same_case": twin.outcome if twin else ("n/a (route is the plugin's)"
                                                                          if path == "upload" else None),
                    "plain_also_defect": sum(1 for p in plain_same if p is not None and flag in defect_flags(p))})
    return sorted(out, key=lambda d: (SEVERITY.get(d["what"], 9), d["server"] == "plain", -d["count"]))


SEVERITY = {"crash": 0, "pixel_mismatch": 1, "byte_mismatch": 1, "members_lost": 2, "hang": 2, "valid_refused": 3,
            "not_as_received": 3, "http_500": 4, "leaks_internals": 5, "other": 6, "refused_unclear": 7,
            "exception_names": 8, "aborted": 9}


def print_table(title: str, rows: dict) -> None:
    short = {"refused_clear": "refused", "refused_unclear": "unclear", "http_500": "500", "byte_mismatch": "byte!=",
             "pixel_mismatch": "pixel!=", "members_lost": "lost", "valid_refused": "validX",
             "not_as_received": "transc", "leaks_internals": "leaks",
             "exception_names": "excname", "not_sent": "unsent", "accepted": "accept"}
    headers = [short.get(c, c) for c in COLUMNS]
    width = max([len(title)] + [len(str(name)) for name in rows]) + 1
    print(f"\n{title:<{width}}" + "".join(f"{h:>8}" for h in headers))
    for name, row in rows.items():
        print(f"{str(name):<{width}}" + "".join(f"{row[c]:>8}" for c in COLUMNS))


def print_report(report: dict) -> None:
    print(f"\n=== NeuroNova fault and abuse campaign: seed {report['seed']}, {report['cases']} cases, "
          f"commit {report['git']['commit'][:10]}{' (dirty)' if report['git']['dirty'] else ''}, "
          f"{report['seconds']:.0f} s ===")
    for server in ("plugin", "plain"):
        if server in report["totals"]:
            print_table(f"{server}: total", {"all paths": report["totals"][server]})
            print_table(f"{server}: per path", report["per_path"][server])
    if "plugin" in report["per_kind"]:
        print_table("plugin: per mutation kind", report["per_kind"]["plugin"])
    print(f"\nServer faults: plugin {report['servers']['plugin']}, plain {report['servers']['plain']}")
    print("\nDefects (most serious first; 'plain' = what plugin-less Orthanc did with the same case):")
    for d in report["defects"][:60]:
        print(f"  [{d['what']}] {d['server']} {d['path']} {d['kind']} x{d['count']}: {d['example_case']} -> "
              f"{d['status']} {d['detail'][:120]!r} plain={d['plain_outcome_same_case']}")
        for line in d["log"][:2]:
            print(f"      log: {line[:200]}")
    probes = report.get("probes", {})
    for name, items in probes.items():
        print(f"\nProbe {name}:")
        for item in items if isinstance(items, list) else [items]:
            print("  " + probe_line(item))
    print(f"\nSeconds per phase: {report.get('phase_seconds', {})}")
    print(f"\nJSON: {report['json_path']}")


def probe_line(item: dict) -> str:
    keep = {k: v for k, v in item.items() if k not in ("log", "body", "answer", "paths") and v not in (None, "", [])}
    if item.get("paths"):  # full disk: one short entry per path
        keep["paths"] = "; ".join(f"{p['path']} {p['status']} {p['outcome']}{'' if p['ok'] else ' (wrong)'}"
                                  for p in item["paths"])
    text = ", ".join(f"{k}={v}" for k, v in keep.items())
    if item.get("log"):
        text += f" | log: {item['log'][0][:160]}"
    return text


def markdown(report: dict) -> str:
    """The figures and the defect list as Markdown (for the issue's closing note)."""
    lines = [f"Campaign of {report['started']}: seed {report['seed']}, {report['cases']} cases "
             f"({report['count']} random), commit {report['git']['commit'][:10]}"
             f"{' (dirty)' if report['git']['dirty'] else ''}, {report['orthanc']}, {report['seconds']:.0f} s.", ""]
    header = "| server / path | " + " | ".join(COLUMNS) + " |"
    lines += [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for server in ("plugin", "plain"):
        if server not in report["totals"]:
            continue
        rows = {f"**{server}**": report["totals"][server],
                **{f"{server} {path}": row for path, row in report["per_path"][server].items()}}
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    if "plugin" in report["per_kind"]:
        lines += ["", "Plugin, per mutation kind (all paths):", "", "| kind | " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * (len(COLUMNS) + 1)]
        for kind, row in report["per_kind"]["plugin"].items():
            lines.append(f"| {kind} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    lines += ["", "Defects (most serious first; plain = plugin-less Orthanc, same case, same path):", ""]
    for d in report["defects"]:
        log = f" Log: `{d['log'][0][:220]}`" if d["log"] else ""
        plain = d["plain_outcome_same_case"]
        lines.append(f"- **{d['what']}** {d['server']} `{d['path']}` {d['kind']} x{d['count']} "
                     f"(e.g. `{d['example_case']}`): {d['status']} `{d['detail'][:200]}`; plain: {plain}"
                     f" ({d['plain_also_defect']} of {d['count']} also a defect there).{log}")
    lines += ["", "Probes:", ""]
    for name, items in report.get("probes", {}).items():
        for item in items if isinstance(items, list) else [items]:
            lines.append(f"- {name}: {probe_line(item)}")
    return "\n".join(lines) + "\n"
