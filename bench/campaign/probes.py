"""The probes that are not one file through one path: nested JSON, WADO-RS frame numbers, cross-site
requests, 100 concurrent uploads, peak memory per kind of request, a full disk, kill -9 during a ZIP
upload, and Orthanc's own restart (POST /tools/reset)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import tempfile
import threading
import time

import requests

from ingest_bench import RssSampler, make_big_instance
from support.storage_files import fresh_copies

from . import dicom_bytes as db
from .mutations import make_zip, zip_with_big_member
from .sending import EXCEPTION_NAMES, INTERNALS, classify_http, stow_body
from .servers import Managed, wait_for

MIB = 1024 * 1024


def answer_summary(server: Managed, response: requests.Response | None, error: str = "", log_offset: int = 0,
                   what: str = "") -> dict:
    """Status, a short body, whether it leaks internals, and whether Orthanc survived (crash / hang)."""
    item = {"status": response.status_code if response is not None else None,
            "body": response.text[:300] if response is not None else error,
            "leaks_internals": bool(response is not None and INTERNALS.search(response.text[:20000])),
            "exception_names": bool(response is not None and EXCEPTION_NAMES.search(response.text[:20000]))}
    item["fault"] = server.after_request(what, log_offset)
    item["log"] = server.last_log
    return item


def request(server: Managed, method: str, path: str, what: str, timeout: float = 30, **kwargs) -> dict:
    offset = server.log_size()
    try:
        response = requests.request(method, server.url + path, timeout=timeout, **kwargs)
        return answer_summary(server, response, log_offset=offset, what=what)
    except requests.RequestException as error:
        return answer_summary(server, None, f"{type(error).__name__}: {error}"[:300], offset, what)


# -- nested JSON ---------------------------------------------------------------------------------------------

def nested_json(plugin: Managed, plain: Managed) -> list[dict]:
    """`[[[[...]]]]` of 2 kB and 20 kB to the plugin's JSON route and to Orthanc's own JSON routes (both)."""
    out = []
    for depth in (1000, 10000):
        body = "[" * depth + "]" * depth
        wrapped = '{"name": ' + body + "}"
        for server in (plugin, plain):
            targets = [("POST", "/tools/find")]
            if server.plugin:
                targets = [("PUT", "/neuronova/patients/P-CAMPAIGN-1"), ("PUT", "/neuronova/patients/P-CAMPAIGN-2"),
                           *targets]
            for index, (method, path) in enumerate(targets):
                payload = wrapped if path.endswith("-2") else body
                item = request(server, method, path, f"nested JSON {depth} {path}", data=payload,
                               headers={"Content-Type": "application/json"})
                item.update(server=server.label, route=f"{method} {path}", depth=depth, bytes=len(payload),
                            ok=item["fault"] is None and item["status"] in range(400, 500)
                            and not item["leaks_internals"])
                out.append(item)
    return out


# -- WADO-RS frame numbers -----------------------------------------------------------------------------------

def frame_numbers(plugin: Managed, plain: Managed) -> list[dict]:
    out = []
    for server in (plugin, plain):
        data = db.with_fresh_uids(open(db.pydicom.data.get_testdata_file("emri_small.dcm"), "rb").read())
        stored = requests.post(server.url + "/instances", data=data, timeout=60).json()
        tags = requests.get(f"{server.url}/instances/{stored['ID']}/simplified-tags", timeout=30).json()
        base = (f"/dicom-web/studies/{tags['StudyInstanceUID']}/series/{tags['SeriesInstanceUID']}"
                f"/instances/{tags['SOPInstanceUID']}/frames/")
        for label, frames in (("5000 digits", "9" * 5000), ("0", "0"), ("-1", "-1"), ("11 of 10", "11"),
                              ("1,,2", "1,,2"), ("abc", "abc"), ("2**64", str(2 ** 64)), ("valid 1,2", "1,2")):
            item = request(server, "GET", base + frames, f"frames {label}", headers={"Accept": "multipart/related; "
                           'type="application/octet-stream"; transfer-syntax=*'})
            expect_ok = label.startswith("valid")
            item.update(server=server.label, frames=label,
                        ok=item["fault"] is None and not item["leaks_internals"] and
                        (item["status"] == 200 if expect_ok else item["status"] in range(400, 500)))
            item["body"] = item["body"][:160] if item["status"] != 200 else ""
            out.append(item)
        server.delete_all()
    return out


# -- cross-site requests -------------------------------------------------------------------------------------

def cross_site(plugin: Managed, plain: Managed) -> list[dict]:
    """State-changing routes from another site's page: text/plain bodies with a foreign Origin (what a form or
    fetch() without preflight can send). Refused (4xx) is right; stored / changed is a defect."""
    out = []
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"}
    for server in (plugin, plain):
        same = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
        attempts = [("POST", "/instances", "dicom", evil), ("POST", "/dicom-web/studies", "stow", evil)]
        if server.plugin:
            attempts = [("POST", "/neuronova/upload/P-2024-001234", "dicom", evil),
                        ("POST", "/neuronova/upload", "dicom", {**evil, "Content-Type": "application/dicom"}),
                        ("PUT", "/neuronova/patients/P-CAMPAIGN-CSRF", "json", evil),
                        ("POST", "/neuronova/storage/compress", "none", evil),
                        ("POST", "/neuronova/upload/P-2024-001234", "dicom",
                         {**same, "Content-Type": "application/dicom"}),  # control: the same site may
                        *attempts]
        for method, path, body_kind, headers in attempts:
            before = len(server.instances())
            if body_kind == "dicom":
                body = db.with_fresh_uids(open(db.pydicom.data.get_testdata_file("CT_small.dcm"), "rb").read())
            elif body_kind == "stow":
                body, content_type = stow_body(db.with_fresh_uids(
                    open(db.pydicom.data.get_testdata_file("CT_small.dcm"), "rb").read()))
                headers = {**headers, "Content-Type": "text/plain"}
            elif body_kind == "json":
                body = b'{"name": "Csrf^Test", "birth_date": "1990-01-01", "gender": "other"}'
            else:
                body = b""
            item = request(server, method, path, f"cross-site {path}", data=body, headers=headers)
            changed = len(server.instances()) > before
            if body_kind == "json" and server.plugin:
                patient = requests.get(server.url + "/neuronova/patients/P-CAMPAIGN-CSRF", timeout=10)
                changed = patient.status_code == 200
            cross = headers.get("Sec-Fetch-Site") == "cross-site"
            item.update(server=server.label, route=f"{method} {path}", content_type=headers["Content-Type"],
                        origin=headers["Origin"], changed_state=changed,
                        ok=(not changed and item["status"] in range(400, 500)) if cross else item["status"] == 200)
            item["body"] = item["body"][:160]
            out.append(item)
        server.delete_all()
    return out


# -- concurrency ---------------------------------------------------------------------------------------------

def concurrency(server: Managed, route: str, clients: int, limit_seconds: float) -> dict:
    """`clients` uploads at once (distinct files); meanwhile GET /system every 0.5 s (3 s timeout)."""
    bodies = [data for _, data in fresh_copies(clients, ("CT_small.dcm", "MR_small.dcm"))]
    path = "/neuronova/upload" if route == "upload" else "/instances"
    statuses: list = []
    retry_after = 0
    lock = threading.Lock()
    stop = threading.Event()
    system: list[float | None] = []

    def one(body: bytes):
        nonlocal retry_after
        try:
            response = requests.post(server.url + path, data=body, timeout=limit_seconds,
                                     headers={"Content-Type": "application/dicom"})
            with lock:
                statuses.append(response.status_code)
                if response.status_code == 503 and response.headers.get("Retry-After"):
                    retry_after += 1
        except requests.RequestException as error:
            with lock:
                statuses.append(type(error).__name__)

    def watch():
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = requests.get(server.url + "/system", timeout=3).ok
                system.append(time.monotonic() - started if ok else None)
            except requests.RequestException:
                system.append(None)
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    offset = server.log_size()
    started = time.monotonic()
    watcher.start()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, bodies))
    elapsed = time.monotonic() - started
    stop.set()
    watcher.join()
    fault = server.after_request(f"{clients} concurrent {route}", offset)
    counts: dict = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    answered = [s for s in system if s is not None]
    stored = len(server.instances()) if fault is None else None
    result = {"server": server.label, "route": f"POST {path}", "clients": clients, "seconds": round(elapsed, 1),
              "statuses": counts, "503_with_retry_after": retry_after, "stored": stored,
              "system_polls": len(system), "system_unanswered": len(system) - len(answered),
              "system_max_seconds": round(max(answered), 2) if answered else None, "fault": fault,
              "log": server.last_log[:4]}
    result["ok"] = fault is None and result["system_unanswered"] == 0 and \
        all(s in ("200", "503") for s in counts)
    server.delete_all()
    return result


# -- memory --------------------------------------------------------------------------------------------------

def memory(root: str, scale: float, timeout: float, upload_only: bool = False) -> list[dict]:
    """Peak RSS of a fresh Orthanc per kind of request, and its RSS 3 s after the answer (`upload_only`: the
    upload route of the plugin only, for a quick run)."""
    gigabyte = int(1_100_000_000 * scale)
    member = int(1_000_000_000 * scale)
    bomb = int(1_350_000_000 * scale)
    big_frames = max(10, int(200 * scale))
    folder = tempfile.mkdtemp(prefix="campaign-big-", dir=root)
    multiframe_path = make_big_instance(folder, big_frames).files[0]
    kinds = [
        ("body_1.1GB", "upload", lambda: db.ZeroTail(db.big_file_prefix(gigabyte), gigabyte), "application/dicom"),
        ("body_1.1GB", "rest", lambda: db.ZeroTail(db.big_file_prefix(gigabyte), gigabyte), "application/dicom"),
        ("zip_1GB_member", "upload", lambda: zip_with_big_member(db.big_file_prefix(member), member),
         "application/zip"),
        ("zip_1GB_member", "rest", lambda: zip_with_big_member(db.big_file_prefix(member), member),
         "application/zip"),
        ("deflate_bomb", "upload", lambda: db.deflate_bomb(bomb), "application/dicom"),
        ("deflate_bomb", "rest", lambda: db.deflate_bomb(bomb), "application/dicom"),
        ("multiframe_100MB", "upload", lambda: open(multiframe_path, "rb").read(), "application/dicom"),
        ("multiframe_100MB", "rest", lambda: open(multiframe_path, "rb").read(), "application/dicom"),
    ]
    out = []
    for kind, path, make_body, content_type in kinds:
        if upload_only and path != "upload":
            continue
        for plugin in ((True, False) if path == "rest" else (True,)):
            out.append(memory_once(root, kind, path, plugin, make_body, content_type, timeout))
    shutil.rmtree(folder, ignore_errors=True)
    return out


def memory_once(root, kind, path, plugin, make_body, content_type, timeout) -> dict:
    server = Managed("plugin" if plugin else "plain", root, plugin).start()
    try:
        body = make_body()
        size = len(body)
        time.sleep(1.0)
        idle = server.rss_kib()
        route = "/neuronova/upload" if path == "upload" else "/instances"
        offset = server.log_size()
        response, error = None, ""
        with RssSampler(server.pid, interval=0.01) as sampler:
            started = time.monotonic()
            try:
                response = requests.post(server.url + route, data=body, timeout=timeout,
                                         headers={"Content-Type": content_type})
            except requests.RequestException as failure:
                error = f"{type(failure).__name__}: {failure}"[:200]
            seconds = time.monotonic() - started
        del body
        time.sleep(3.0)
        after = server.rss_kib() if server.dead() is None else None
        peak = max(sampler.hwm or 0, sampler.peak) if sampler.hwm_reset else sampler.peak
        outcome = classify_http(path, response)[0] if response is not None else "no answer"
        fault = server.after_request(f"memory {kind} {path}", offset)
        return {"kind": kind, "route": f"POST {route}", "server": server.label, "body_bytes": size,
                "status": response.status_code if response is not None else error, "outcome": fault or outcome,
                "answer": response.text[:200] if response is not None else error, "seconds": round(seconds, 1),
                "idle_rss_mib": round(idle / 1024) if idle else None,
                "peak_rss_mib": round(peak / 1024) if peak else None,
                "rss_after_mib": round(after / 1024) if after else None, "log": server.last_log[:4]}
    finally:
        server.stop()


# -- full disk -----------------------------------------------------------------------------------------------

def full_disk(root: str, size_mib: int = 24) -> list[dict]:
    """full_disk_once with the plugin and without it (what Orthanc itself answers)."""
    return [full_disk_once(root, plugin, size_mib) for plugin in (True, False)]


def full_disk_once(root: str, plugin: bool, size_mib: int) -> dict:
    """Storage and index on a small tmpfs, filled up; one 39 kB CT by every path; then space freed again."""
    mount_point = tempfile.mkdtemp(prefix="campaign-tmpfs-", dir=root)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", mount_point],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return {"available": False, "why": f"cannot mount a tmpfs: {mounted.stderr.strip()}"}
    result = {"server": "plugin" if plugin else "plain", "available": True, "tmpfs_mib": size_mib, "paths": []}
    server = Managed(f"{result['server']}-fulldisk", root, plugin, storage_dir=os.path.join(mount_point, "storage"))
    try:
        server.start()
        ct = open(db.pydicom.data.get_testdata_file("CT_small.dcm"), "rb").read()
        filler = os.path.join(mount_point, "filler")
        with open(filler, "wb") as out:  # leave ~20 kB: too little for a 39 kB file (+ its header attachment)
            try:
                while True:
                    out.write(bytes(64 * 1024))
                    out.flush()
            except OSError:
                pass
        try:
            with open(filler, "r+b") as out:
                out.truncate(max(0, os.path.getsize(filler) - 20 * 1024))
        except OSError:
            pass
        result["free_bytes"] = shutil.disk_usage(mount_point).free
        from .sending import Sender
        from .mutations import Case
        sender = Sender(60, root)
        for path in ("rest", "upload", "stow", "cstore") if plugin else ("rest", "stow", "cstore"):
            case = Case(f"full_disk/{path}", "full_disk", db.with_fresh_uids(ct))
            r = sender.send(server, case, path)
            result["paths"].append({"path": path, "status": r.status, "outcome": r.outcome, "detail": r.detail[:200],
                                    "leaks_internals": r.leaks_internals, "log": r.log[:3],
                                    "ok": r.outcome == "refused_clear" and (str(r.status) in ("507", "503") or
                                                                            str(r.status).startswith("0xA7"))})
        os.unlink(filler)
        case = Case("full_disk/after", "full_disk", db.with_fresh_uids(ct))
        after = sender.send(server, case, "upload" if plugin else "rest")
        result["after_freeing"] = {"status": after.status, "outcome": after.outcome}
        result["crashes"] = len(server.crashes)
    finally:
        server.stop()
        subprocess.run(["umount", mount_point], capture_output=True)
        shutil.rmtree(mount_point, ignore_errors=True)
    return result


# -- kill -9 during a ZIP upload -----------------------------------------------------------------------------

def kill_during_zip(root: str, members: int, fractions: tuple[float, ...] = (0.25, 0.5, 0.75)) -> list[dict]:
    """A ZIP of `members` CTs to the upload route, Orthanc killed (SIGKILL) once `fraction` of them is stored,
    restarted on the same folder: the history and the stored instances must name the same instances."""
    return [kill_during_zip_once(root, members, fraction) for fraction in fractions]


def kill_during_zip_once(root: str, members: int, fraction: float) -> dict:
    server = Managed("plugin-kill9", root, True).start()
    try:
        copies = fresh_copies(members, ("CT_small.dcm",))
        archive = make_zip([(f"{index:04d}.dcm", data, 8) for index, (_, data) in enumerate(copies)])
        thread = threading.Thread(target=lambda: _post_quietly(server.url + "/neuronova/upload", archive), daemon=True)
        thread.start()
        reached = wait_for(lambda: _count(server) >= members * fraction, 120, 0.02)
        stored_when_killed = _count(server)
        server.kill9()
        thread.join(30)
        server.server.stop()
        server.server.start(timeout=90)
        time.sleep(3.0)  # the history writer's rounds
        instances = server.get("/instances?expand").json()
        stored = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
        rows = server.get("/neuronova/history?limit=10000").json().get("entries", [])
        named = {row["sop_instance_uid"] for row in rows if row.get("action") != "rejected"}
        return {"members": members, "kill_at": fraction, "killed_after_stored": stored_when_killed,
                "reached": bool(reached), "stored_after_restart": len(stored), "history_rows": len(rows),
                "rows_without_instance": len(named - stored), "instances_without_row": len(stored - named),
                "ok": named == stored}
    finally:
        server.stop()


def _post_quietly(url: str, body: bytes) -> None:
    try:
        requests.post(url, data=body, headers={"Content-Type": "application/zip"}, timeout=300)
    except requests.RequestException:
        pass


def _count(server: Managed) -> int:
    try:
        return int(server.get("/statistics", timeout=5).json()["CountInstances"])
    except (requests.RequestException, ValueError, KeyError):
        return 0


# -- POST /tools/reset ---------------------------------------------------------------------------------------

def tools_reset(root: str) -> list[dict]:
    """POST /tools/reset (Orthanc restarts in the same process) after a first upload; then the plugin must
    still answer and compress (its storage counters count a second compressed file)."""
    out = []
    for plugin in (True, False):
        server = Managed("plugin-reset" if plugin else "plain-reset", root, plugin).start()
        try:
            route = "/neuronova/upload" if plugin else "/instances"
            first = _upload_ct(server, route)
            offset = server.log_size()
            try:
                status = requests.post(server.url + "/tools/reset", timeout=30).status_code
            except requests.RequestException as error:
                status = type(error).__name__
            time.sleep(2.0)
            # the plugin decides instances again once it has read the stored studies' patients
            back = wait_for(lambda: server.answers(2.0, "/neuronova/ready" if plugin else "/system"), 60, 0.5)
            item = {"server": server.label, "upload_before_reset": first, "reset_status": status,
                    "alive": server.dead() is None, "system_answers": bool(back)}
            if back:
                item["upload_after_reset"] = _upload_ct(server, route)
                if plugin:
                    try:
                        storage = requests.get(server.url + "/neuronova/storage", timeout=30).json()
                        item["compressed_files"] = storage.get("compressed_files")
                    except (requests.RequestException, ValueError) as error:
                        item["compressed_files"] = type(error).__name__
            item["log"] = server.log_since(offset, 5)
            if server.dead() is not None:
                item["exit"] = server.dead()
            item["ok"] = bool(back) and item.get("upload_after_reset") == 200 and \
                (not plugin or item.get("compressed_files") == 2)
            out.append(item)
        finally:
            server.stop()
    return out


def _upload_ct(server: Managed, route: str) -> int | str:
    ct = db.with_fresh_uids(open(db.pydicom.data.get_testdata_file("CT_small.dcm"), "rb").read())
    try:
        return requests.post(server.url + route, data=ct, timeout=60,
                             headers={"Content-Type": "application/dicom"}).status_code
    except requests.RequestException as error:
        return type(error).__name__
