"""Helpers of the differential suite (tests/differential): a plain Orthanc and an Orthanc with the plugin,
fed the same real files, asked the same things; their answers normalized and compared.

Both servers run without the GDCM plugin (see GDCM_PLUGIN below: it crashed both of them at random, measured).
The differences the plugin is allowed to make are in one place, EXPECTED_DIFFERENCES below: each with its key,
the exact rule the tests apply (the functions after it) and why. There is no other way to let a difference
pass: a test either finds the answers equal or calls one of those functions, which checks that the difference
is exactly the expected one and counts the case (listed at the end of the run, see conftest.py).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import os
import re
import subprocess
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file

from support.servers import OrthancServer, free_port, wait_until

# Both servers run WITHOUT the GDCM plugin (libOrthancGdcm.so, orthanc-gdcm 1.5 on Debian 12). Measured: with it,
# plain Orthanc 1.10.1 and the plugin's Orthanc alike died at random with SIGSEGV in libgdcmMSFF.so whenever an
# HTTP thread transcoded (DICOMweb retrieval of deflated / big-endian / implicit / JPEG 2000 files, POST .../modify
# with "Transcode"). That is the platform, not the plugin; with crashes on both sides at random the comparison told
# nothing. Removing it from BOTH sides keeps the comparison fair: both transcode with DCMTK only.
# "Plugins" is a list, and the overrides replace lists (scripts/runtime_config.py _merge): each side gets its full
# list here, built from the project's orthanc.json.
GDCM_PLUGIN = "/usr/share/orthanc/plugins/libOrthancGdcm.so"


def _project_plugins() -> list[str]:
    from support.servers import REPO_ROOT
    with open(os.path.join(REPO_ROOT, "orthanc.json"), encoding="utf-8") as f:
        return [p for p in json.load(f)["Plugins"] if p != GDCM_PLUGIN and "Gdcm" not in p]


PLAIN_PLUGINS = [p for p in _project_plugins() if "Python" not in p]  # DICOMweb only
PLUGIN_PLUGINS = _project_plugins()  # Python (the plugin) and DICOMweb
PLAIN_OVERRIDES = {"Plugins": PLAIN_PLUGINS}
PLUGIN_OVERRIDES = {"Plugins": PLUGIN_PLUGINS, "NeuroNova": {"Reconciliation": {"Enabled": False}}}

# The real files (pydicom, pydicom-data). MR_small's variants share its UIDs: each gets its own UIDs (below).
FILES = [
    "CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm", "SC_rgb.dcm",
    "emri_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm", "rtplan.dcm",
]
IMAGES = [name for name in FILES if name != "rtplan.dcm"]
# Without GDCM, Orthanc 1.10 (DCMTK 3.6.7) has no JPEG 2000 decoder: neither server can send these files to a peer
# that takes Explicit VR Little Endian only (Lua SendToModality, C-MOVE, /modalities/{id}/store fail the same way
# on both). Not a difference: the tests check that both fail alike.
NO_DECODER_WITHOUT_GDCM = {"JPEG2000.dcm", "MR_small_jp2klossless.dcm"}
NO_PIXELS = "rtplan.dcm"

# Same-length byte substitution in the UIDs (study, series, instance, frame of reference) of the files that are
# MR_small.dcm in another encoding: the bytes stay exactly as the file has them, only one digit differs.
_MR_SUFFIX = b"20040826185059.5457"
_UID_VARIANTS = {
    "MR_small_bigendian.dcm": b"20040826185059.5458",
    "MR_small_implicit.dcm": b"20040826185059.5459",
    "MR_small_jp2klossless.dcm": b"20040826185059.5461",
}


def file_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        data = f.read()
    if name in _UID_VARIANTS:
        assert data.count(_MR_SUFFIX) >= 4, name
        data = data.replace(_MR_SUFFIX, _UID_VARIANTS[name])
    return data


def write_files(directory: str, names=FILES) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name in names:
        paths[name] = os.path.join(directory, name)
        with open(paths[name], "wb") as f:
            f.write(file_bytes(name))
    return paths


def uids_of(name: str) -> dict[str, str]:
    dataset = dcmread(io.BytesIO(file_bytes(name)), stop_before_pixels=True)
    return {"sop": dataset.SOPInstanceUID, "series": dataset.SeriesInstanceUID, "study": dataset.StudyInstanceUID,
            "patient": str(dataset.get("PatientID", ""))}


LIVE_PAIRS: list = []  # the pairs running, so that a fixture can restart a server that crashed during a test


class Pair:
    """The two servers, started side by side. `both(f)` runs f(server) on each, in parallel."""

    def __init__(self, base_dir: str, overrides: dict | None = None, plugin_overrides: dict | None = None):
        overrides = overrides or {}
        self.plain = OrthancServer(os.path.join(base_dir, "plain"), _merge(overrides, PLAIN_OVERRIDES), plugin=False)
        plugin_config = _merge(_merge(overrides, PLUGIN_OVERRIDES), plugin_overrides or {})
        script = os.environ.get("DIFFERENTIAL_PLUGIN_SCRIPT")  # another copy of plugin/ (e.g. a git snapshot)
        if script:
            plugin_config["PythonScript"] = os.path.abspath(script)
        self.plugin = OrthancServer(os.path.join(base_dir, "plugin"), plugin_config,
                                    extra_pythonpath=(os.path.dirname(os.path.abspath(script)),) if script else ())
        self._pool = ThreadPoolExecutor(2)
        self.crashes: list[str] = []
        LIVE_PAIRS.append(self)

    def start(self) -> "Pair":
        """Both started, or neither left running (a server that fails to start must not orphan the other)."""
        try:
            self.both(lambda server: server.start())
        except BaseException:
            self.stop()
            raise
        loaded = self.both(lambda server: server.get("/plugins").json())
        for (name, _), plugins in zip(self.servers(), loaded):
            assert "gdcm" not in plugins, f"the {name} Orthanc loaded the GDCM plugin: {plugins}"
        assert "python" not in loaded[0] and "python" in loaded[1], f"plugins loaded: {loaded}"
        return self

    def stop(self):
        for _, server in self.servers():
            server.stop()
        self._pool.shutdown()
        if self in LIVE_PAIRS:
            LIVE_PAIRS.remove(self)

    def both(self, function):
        """(plain result, plugin result); exceptions raised in the caller. A server that stopped answering
        (it crashed) is an AssertionError naming it; `revive()` (after each test) starts it again."""
        futures = [self._pool.submit(function, server) for server in (self.plain, self.plugin)]
        results = []
        for (name, server), future in zip(self.servers(), futures):
            try:
                results.append(future.result())
            except requests.ConnectionError as error:
                raise AssertionError(f"the {name} Orthanc does not answer ({self._death(server)}): {error}") from None
        return tuple(results)

    @staticmethod
    def _death(server) -> str:
        if server.process is None or server.process.poll() is None:
            return "process still running"
        return f"process exited with {server.process.returncode}, see {server.log_path}"

    def revive(self) -> list[str]:
        """Start again any server that died (same storage, same ports); the names of those restarted."""
        restarted = []
        for name, server in self.servers():
            if server.process is not None and server.process.poll() is not None:
                self.crashes.append(f"{name}: {self._death(server)}")
                server.stop()
                server.start()
                restarted.append(name)
        return restarted

    def servers(self):
        return (("plain", self.plain), ("plugin", self.plugin))


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


# --- normalization -------------------------------------------------------------------------------------------

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+){3,}$")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}"  # Orthanc IDs
                     r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # UUIDs


class Masker:
    """Replaces generated UIDs and Orthanc IDs by placeholders numbered in order of first appearance, so that two
    answers that generated different (random) UIDs compare equal when their structure is the same. UIDs in `keep`
    (those of the uploaded files) stay as they are."""

    def __init__(self, keep: set[str] = frozenset(), keep_ids: set[str] = frozenset()):
        self.keep, self.keep_ids, self.seen = set(keep), set(keep_ids), {}

    def _placeholder(self, value: str, kind: str) -> str:
        if value not in self.seen:
            self.seen[value] = f"<{kind}{len(self.seen) + 1}>"
        return self.seen[value]

    def text(self, value: str) -> str:
        stripped = value.strip("\0 ")
        if UID_RE.match(stripped) and stripped not in self.keep:
            return self._placeholder(stripped, "UID")
        return UUID_RE.sub(lambda m: m.group(0) if m.group(0) in self.keep_ids else self._placeholder(m.group(0), "ID"),
                           value)

    def __call__(self, value):
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self(value[k]) for k in sorted(value)}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value


VOLATILE_TAGS = {"InstanceCreationDate", "InstanceCreationTime", "0008,0012", "0008,0013",
                 "ContributingEquipmentSequence", "0018,a001"}  # set at modification, with the clock


def drop(value, keys):
    if isinstance(value, dict):
        return {k: drop(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [drop(v, keys) for v in value]
    return value


def replace_urls(value, urls: list[str]):
    """Server base URLs (their ports differ) replaced by <URL>, everywhere in a JSON value or text."""
    if isinstance(value, dict):
        return {k: replace_urls(v, urls) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_urls(v, urls) for v in value]
    if isinstance(value, str):
        for url in urls:
            value = value.replace(url, "<URL>").replace(url.replace("http://", ""), "<HOST>")
        return value
    return value


def dataset_json(data: bytes, masker: Masker | None = None, volatile=VOLATILE_TAGS) -> dict:
    """A DICOM file as comparable JSON: meta header and dataset, pixel data as a digest of decoded pixels."""
    dataset = dcmread(io.BytesIO(data), force=True)
    meta = {str(elem.tag): str(elem.value) for elem in dataset.file_meta
            if elem.keyword not in ("ImplementationClassUID", "ImplementationVersionName",
                                    "SourceApplicationEntityTitle", "FileMetaInformationGroupLength")}
    pixels = None
    if "PixelData" in dataset:
        array = dataset.pixel_array
        pixels = {"shape": list(array.shape), "dtype": str(array.dtype), "sha": _sha(np.ascontiguousarray(array))}
        del dataset.PixelData
    body = {k: v for k, v in dataset.to_json_dict().items()}
    body = {k: v for k, v in body.items() if _keyword(k) not in volatile and k not in volatile}
    result = {"meta": meta, "dataset": body, "pixels": pixels}
    return masker(result) if masker else result


def _keyword(tag: str) -> str:
    from pydicom.datadict import keyword_for_tag
    try:
        return keyword_for_tag(int(tag, 16))
    except Exception:  # noqa: BLE001
        return ""


def _sha(array: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(array.tobytes()).hexdigest()


def first_difference(a, b, path="") -> str:
    """The first place where two JSON-like values differ, for a readable failure message."""
    if type(a) is not type(b):
        return f"{path or '<root>'}: {_short(a)} != {_short(b)}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a:
                return f"{path}/{key}: missing on plain, plugin has {_short(b[key])}"
            if key not in b:
                return f"{path}/{key}: plain has {_short(a[key])}, missing on plugin"
            if a[key] != b[key]:
                return first_difference(a[key], b[key], f"{path}/{key}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)} items ({_short(a)} vs {_short(b)})"
        for index, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{index}]")
    return f"{path or '<root>'}: {_short(a)} != {_short(b)}"


def _short(value, limit=300) -> str:
    text = json.dumps(value, default=str, sort_keys=True) if not isinstance(value, (bytes, str)) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def assert_same(what: str, plain, plugin, detail: str = ""):
    assert plain == plugin, f"{what}: plain vs plugin differ at {first_difference(plain, plugin)}" + (
        f"\n{detail}" if detail else "")


# --- HTTP bodies -----------------------------------------------------------------------------------------------

def multipart_parts(response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer."""
    content_type = response.headers.get("Content-Type", "")
    raw = b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + response.content
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    if not message.is_multipart():
        return [(content_type, response.content)]
    return [(part.get_content_type(), part.get_payload(decode=True)) for part in message.iter_parts()]


def png_pixels(data: bytes):
    from PIL import Image
    image = Image.open(io.BytesIO(data))
    array = np.array(image)
    return {"mode": image.mode, "size": list(image.size), "sha": _sha(array)}


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def dicomdir_records(data: bytes) -> list[dict]:
    """The directory records of a DICOMDIR without their byte offsets (which depend on the encoding)."""
    dataset = dcmread(io.BytesIO(data), force=True)
    offsets = {"OffsetOfTheNextDirectoryRecord", "OffsetOfReferencedLowerLevelDirectoryEntity"}
    records = []
    for record in dataset.DirectoryRecordSequence:
        records.append({e.keyword or str(e.tag): str(e.value) for e in record if e.keyword not in offsets})
    return records


# --- DICOM peers -------------------------------------------------------------------------------------------------

_EXPLICIT_LE_CONFIG = """\
[[TransferSyntaxes]]
[ExplicitLE]
TransferSyntax1 = LittleEndianExplicit
[[PresentationContexts]]
[ExplicitLEOnly]
{contexts}
[[Profiles]]
[Default]
PresentationContexts = ExplicitLEOnly
"""
_SOP_CLASSES = ["VerificationSOPClass", "CTImageStorage", "MRImageStorage", "EnhancedMRImageStorage",
                "UltrasoundImageStorage", "UltrasoundMultiframeImageStorage", "SecondaryCaptureImageStorage",
                "NuclearMedicineImageStorage", "RTPlanStorage"]


class StoreScp:
    """dcmtk storescp that accepts Explicit VR Little Endian only (an association profile from a config file)."""

    def __init__(self, directory: str, aet: str):
        self.directory, self.aet, self.port = str(directory), aet, free_port()
        os.makedirs(self.directory, exist_ok=True)
        config = os.path.join(os.path.dirname(self.directory), f"{aet}.cfg")
        contexts = "\n".join(f"PresentationContext{i} = {sop}\\ExplicitLE" for i, sop in enumerate(_SOP_CLASSES, 1))
        with open(config, "w") as f:
            f.write(_EXPLICIT_LE_CONFIG.format(contexts=contexts))
        self.log = open(self.directory + ".log", "ab")
        self.process = subprocess.Popen(["storescp", "-v", "-xf", config, "Default", "-aet", aet, "-od",
                                         self.directory, str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._listening, 10, f"storescp {aet}")
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        import socket
        if self.process.poll() is not None:
            raise RuntimeError(f"storescp {self.aet} exited: {open(self.directory + '.log').read()[-2000:]}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def files(self) -> dict[str, bytes]:
        """{SOP Instance UID: bytes} of what arrived."""
        received = {}
        for name in sorted(os.listdir(self.directory)):
            with open(os.path.join(self.directory, name), "rb") as f:
                data = f.read()
            received[str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
        return received

    def clear(self):
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def received_json(files: dict[str, bytes]) -> dict[str, dict]:
    return {uid: dataset_json(data) for uid, data in sorted(files.items())}


def run(arguments: list[str], timeout: float = 120) -> dict:
    """A dcmtk tool's exit code and its DIMSE response lines (statuses), for comparison."""
    done = subprocess.run(arguments, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    responses = [line.split(":", 1)[-1].strip() for line in output.splitlines()
                 if re.search(r"Received (Store|Move|Get|Final Move|Final Get) Response|DIMSE Status", line)]
    statuses = re.findall(r"DIMSE Status\s*:\s*(0x[0-9a-fA-F]{4}[^\n]*)", output)
    return {"exit": done.returncode, "responses": responses, "statuses": statuses, "output": output[-3000:]}


# --- fixtures' building blocks -----------------------------------------------------------------------------

def make_pair(tmp_path_factory, name, overrides=None, plugin_overrides=None) -> Pair:
    return Pair(str(tmp_path_factory.mktemp(name)), overrides, plugin_overrides).start()


def upload_all(pair: Pair) -> dict:
    """POST /instances of every file to both servers: {file: (plain response, plugin response)}."""
    answers = {}
    for name in FILES:
        data = file_bytes(name)
        answers[name] = pair.both(lambda server: server.post("/instances", data=data))
    return answers


def instance_id(answers, name) -> str:
    plain, plugin = answers[name]
    assert plain.status_code == 200, f"plain Orthanc refused {name}: {plain.status_code} {plain.text}"
    return plain.json()["ID"]


def known_uids() -> set:
    uids = set()
    for name in FILES:
        uids.update(v for k, v in uids_of(name).items() if k != "patient")
    return uids


# --- expected differences ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExpectedDifference:
    key: str
    rule: str  # exactly what the test checks instead of equality
    why: str  # one line


HTJ2K = "1.2.840.10008.1.2.4.201"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNTIL_PIXEL_DATA = "dicom-until-pixel-data"
MB = 1024 * 1024

EXPECTED_DIFFERENCES: dict[str, ExpectedDifference] = {e.key: e for e in [
    ExpectedDifference(
        "until-pixel-data-attachment",
        rule="GET /instances/{id}/attachments: the plugin's list is plain's plus 'dicom-until-pixel-data', exactly "
             "for received files with Pixel Data that are not deflated (otherwise the same list); that attachment "
             "is the received file's bytes before (7FE0,0010), ContentType 3, uncompressed, sizes and MD5 of those "
             "bytes. Everything else about the attachments equal.",
        why="Orthanc 1.10 writes it per instance when the storage area has no range reads; orthanc-python 4.0/5.0 "
            "offers no range-read storage area (RegisterStorageArea3 is 7.1; MISSION.md)."),
    ExpectedDifference(
        "until-pixel-data-statistics",
        rule="GET /{level}/{id}/statistics and /statistics: DiskSize and UncompressedSize (TotalDiskSize, "
             "TotalUncompressedSize) of the plugin == plain's + the sum of GET /instances/{i}/attachments/"
             "dicom-until-pixel-data/size over the resource's (or all) instances of the plugin server; the *MB "
             "fields == that // 2**20; every other field (counts, Dicom* sizes) equal.",
        why="the same extra attachment, counted by Orthanc in the disk and uncompressed totals (the Dicom* sizes "
            "count the received bytes on both)."),
    ExpectedDifference(
        "stored-htj2k-frames",
        rule="WADO-RS frames of an instance the plugin keeps as HTJ2K on disk (the stored file's transfer syntax is "
             "1.2.840.10008.1.2.4.201), asked with transfer-syntax=*, =1.2.840.10008.1.2.4.201, type=\"image/jphc\" "
             "or */*: plugin 200 (whatever plain answers), one part per frame asked, each part's Content-Type "
             "'<type asked, image/jphc for image/jphc, else application/octet-stream>; transfer-syntax="
             "1.2.840.10008.1.2.4.201', the same Content-Location as plain's for that frame, and "
             "imagecodecs.htj2k_decode(part) == plain's uncompressed frame (its answer to "
             "type=\"application/octet-stream\" without transfer syntax), value for value, byte for byte.",
        why="the feature: viewers get the stored HTJ2K codestream untouched instead of uncompressed pixels."),
    ExpectedDifference(
        "frames-plain-fails",
        rule="WADO-RS frames of an instance not kept as HTJ2K where plain answers 5xx and the plugin 200: allowed "
             "only if every part is 'application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1' and its bytes "
             "are exactly the uncompressed frame (plain's octet-stream answer, or, where plain cannot decode "
             "either, imagecodecs' decoding of plain's transfer-syntax=* frame). Each case is listed at the end.",
        why="the DICOMweb plugin fails there (no J2K decoder without GDCM; big-endian / deflated under *); the "
            "plugin's own decoders answer the right pixels."),
    ExpectedDifference(
        "frames-no-pixel-data",
        rule="WADO-RS frames of an instance without Pixel Data (rtplan.dcm): plain 5xx, the plugin 400 with a JSON "
             "error saying the instance has no pixel data; nothing else allowed.",
        why="no uncompressed frames exist to compare: the DICOMweb plugin fails (500 'Not implemented yet'), the "
            "plugin refuses the request as a client error (its frames module documents it)."),
    ExpectedDifference(
        "frames-no-transcoding",
        rule="WADO-RS frames asked only in a compressed transfer syntax other than the one the instance is kept in "
             "(image/jp2 1.2.840.10008.1.2.4.90, image/jpeg 1.2.840.10008.1.2.4.70; HTJ2K by name or image/jphc "
             "for an instance not kept as HTJ2K): plugin 406 with its JSON error saying transcoding is not "
             "offered; plain either 5xx (no such encoder without GDCM), 400 (the DICOMweb plugin 1.7 refuses "
             "HTJ2K, a syntax it does not know) or 200 with parts of the asked type (DCMTK transcoded them). "
             "Each case is listed at the end.",
        why="the plugin never calls Orthanc's transcoder from an HTTP thread: GDCM 1.5 crashed Orthanc there and "
            "DCMTK's JPEG-LS encoder aborts plain Orthanc on 693_UNCR.dcm (measured); its own encoders cover "
            "JPEG 2000 and JPEG-LS lossless only (JPEG lossless through libjpeg-turbo killed Orthanc)."),
    ExpectedDifference(
        "frames-transcoded-by-plugin",
        rule="WADO-RS frames asked as image/jp2 1.2.840.10008.1.2.4.90 of an instance whose frames decode without "
             "loss: plugin 200, every part 'image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90', and "
             "imagecodecs.jpeg2k_decode(part) == plain's uncompressed frame, byte for byte (plain: 5xx without "
             "an encoder, or 200 with its own, different, codestreams).",
        why="the plugin encodes with OpenJPEG and checks the decoding, instead of Orthanc's transcoder (which "
            "crashed Orthanc from HTTP threads here); codestreams differ from GDCM's, pixels do not."),
]}

APPLIED: dict[str, list[str]] = defaultdict(list)  # key -> the cases where the expected difference applied


def _applied(key: str, what: str) -> ExpectedDifference:
    APPLIED[key].append(what)
    return EXPECTED_DIFFERENCES[key]


def _fail(key: str, what: str, message: str):
    raise AssertionError(f"{what}: not the expected difference [{key}]: {message}\n"
                         f"rule: {EXPECTED_DIFFERENCES[key].rule}")


def until_pixel_data(data: bytes) -> bytes | None:
    """The bytes before Pixel Data of a received file, the attachment Orthanc 1.10 writes; None where it writes
    none (no Pixel Data, or deflated: the core cannot find the offset in a deflated stream)."""
    stream = io.BytesIO(data)
    dataset = dcmread(stream, stop_before_pixels=True, force=True)
    if str(dataset.file_meta.get("TransferSyntaxUID", "")) == DEFLATED or stream.tell() >= len(data):
        return None
    return data[:stream.tell()]  # pydicom stops at the start of the Pixel Data element


def check_attachments(what: str, server, instance: str, received: bytes, plain_list: list, plugin_list: list):
    """until-pixel-data-attachment: the plugin's attachment list and the extra attachment itself."""
    key = "until-pixel-data-attachment"
    prefix = until_pixel_data(received)
    if prefix is None:
        assert_same(what + " (no dicom-until-pixel-data expected: no pixels or deflated)", plain_list, plugin_list)
        return
    _applied(key, what)
    if plugin_list != plain_list + [UNTIL_PIXEL_DATA]:
        _fail(key, what, f"plain {plain_list}, plugin {plugin_list}")
    data = server.get(f"/instances/{instance}/attachments/{UNTIL_PIXEL_DATA}/data").content
    if data != prefix:
        _fail(key, what, f"its data ({len(data)} bytes) is not the {len(prefix)} bytes before Pixel Data")
    info = server.get(f"/instances/{instance}/attachments/{UNTIL_PIXEL_DATA}/info").json()
    import hashlib
    md5 = hashlib.md5(prefix).hexdigest()
    expected = {"ContentType": 3, "CompressedSize": len(prefix), "UncompressedSize": len(prefix),
                "CompressedMD5": md5, "UncompressedMD5": md5}
    if {k: info.get(k) for k in expected} != expected:
        _fail(key, what, f"its info {info} vs expected {expected}")


def until_pixel_data_bytes(server, instances: list[str]) -> int:
    """Sum of the dicom-until-pixel-data attachments' sizes of these instances (0 for those without)."""
    total = 0
    for instance in instances:
        answer = server.get(f"/instances/{instance}/attachments/{UNTIL_PIXEL_DATA}/size")
        if answer.status_code == 200:
            total += int(answer.text)
        else:
            assert answer.status_code == 404, f"GET .../{UNTIL_PIXEL_DATA}/size: {answer.status_code} {answer.text}"
    return total


def check_statistics(what: str, plain: dict, plugin: dict, plugin_server, instances: list[str]):
    """until-pixel-data-statistics: plugin sizes = plain's + the extra attachments' sizes; all else equal."""
    key = "until-pixel-data-statistics"
    extra = until_pixel_data_bytes(plugin_server, instances)
    if extra == 0:
        assert_same(what, plain, plugin)
        return
    _applied(key, what)
    corrected = dict(plain)
    for field in ("DiskSize", "UncompressedSize", "TotalDiskSize", "TotalUncompressedSize"):
        if field in plain:
            corrected[field] = str(int(plain[field]) + extra)
            corrected[field + "MB"] = (int(plain[field]) + extra) // MB
    if corrected != plugin:
        _fail(key, what, f"with the {extra} bytes of dicom-until-pixel-data added to plain's: "
                         f"{first_difference(corrected, plugin)}")


def stored_syntax(server, instance: str) -> str:
    """The transfer syntax of the file the storage area keeps on disk for the instance's DICOM attachment."""
    dataset = dcmread(io.BytesIO(server.stored_file(instance)), stop_before_pixels=True, force=True)
    return str(dataset.file_meta.TransferSyntaxUID)


def multipart_full(response) -> list[tuple[dict, bytes]]:
    """(headers, body) of each part of a multipart/related answer, headers with their parameters."""
    content_type = response.headers.get("Content-Type", "")
    raw = b"Content-Type: " + content_type.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + response.content
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    if not message.is_multipart():
        return [({"Content-Type": content_type}, response.content)]
    return [({k: v for k, v in part.items()}, part.get_payload(decode=True)) for part in message.get_payload()]


def pixels_bytes(array: np.ndarray, bits_allocated: int) -> bytes:
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits_allocated]
    if array.dtype.kind == "i":
        dtype = {8: np.int8, 16: np.int16, 32: np.int32}[bits_allocated]
    return np.ascontiguousarray(array.astype(np.dtype(dtype).newbyteorder("<"))).tobytes()


def check_stored_htj2k_frames(what: str, plugin, reference: list[tuple[dict, bytes]], media_type: str,
                              bits_allocated: int, urls: list[str]):
    """stored-htj2k-frames: the plugin's parts are HTJ2K codestreams decoding to plain's uncompressed frames."""
    import imagecodecs
    key = "stored-htj2k-frames"
    _applied(key, what)
    if plugin.status_code != 200:
        _fail(key, what, f"plugin answered {plugin.status_code} {plugin.text[:300]}")
    parts = multipart_full(plugin)
    if len(parts) != len(reference):
        _fail(key, what, f"{len(parts)} parts, plain's uncompressed answer has {len(reference)}")
    label = f"{media_type}; transfer-syntax={HTJ2K}"
    for index, ((headers, body), (plain_headers, plain_body)) in enumerate(zip(parts, reference)):
        if headers.get("Content-Type") != label:
            _fail(key, what, f"part {index} Content-Type {headers.get('Content-Type')!r}, expected {label!r}")
        location = replace_urls(headers.get("Content-Location"), urls)
        if location != replace_urls(plain_headers.get("Content-Location"), urls):
            _fail(key, what, f"part {index} Content-Location {location} vs plain's "
                             f"{plain_headers.get('Content-Location')}")
        decoded = pixels_bytes(imagecodecs.htj2k_decode(body), bits_allocated)
        if decoded != plain_body:
            _fail(key, what, f"part {index}: the HTJ2K codestream ({len(body)} bytes) decodes to "
                             f"{len(decoded)} bytes that are not plain's {len(plain_body)} uncompressed bytes")


def check_transcoded_by_plugin(what: str, plain, plugin, reference: list[bytes], bits_allocated: int):
    """frames-transcoded-by-plugin: the plugin's J2K lossless parts decode to plain's uncompressed frames."""
    import imagecodecs
    key = "frames-transcoded-by-plugin"
    _applied(key, f"{what}: plain {plain.status_code}, plugin {plugin.status_code}")
    if plain.status_code not in (200,) and plain.status_code < 500:
        _fail(key, what, f"plain answered {plain.status_code} {plain.text[:300]}")
    parts = multipart_full(plugin)
    label = "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    if [headers.get("Content-Type") for headers, _ in parts] != [label] * len(reference):
        _fail(key, what, f"part types {[headers.get('Content-Type') for headers, _ in parts]}, "
                         f"expected {len(reference)} x {label!r}")
    for index, ((_, body), frame) in enumerate(zip(parts, reference)):
        if pixels_bytes(imagecodecs.jpeg2k_decode(body), bits_allocated) != frame:
            _fail(key, what, f"part {index} does not decode to the uncompressed frame")


def check_plugin_answers_where_plain_fails(what: str, plain, plugin, reference: list[bytes]):
    """frames-plain-fails: plain 5xx, plugin 200 with exactly the uncompressed frames."""
    key = "frames-plain-fails"
    _applied(key, f"{what}: plain {plain.status_code}, plugin {plugin.status_code}")
    parts = multipart_full(plugin)
    types = [headers.get("Content-Type") for headers, _ in parts]
    label = f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    if types != [label] * len(reference):
        _fail(key, what, f"part types {types}, expected {len(reference)} x {label!r}")
    for index, ((_, body), frame) in enumerate(zip(parts, reference)):
        if body != frame:
            _fail(key, what, f"part {index}: {len(body)} bytes, not the {len(frame)} bytes of the uncompressed frame")


def check_no_transcoding(what: str, plain, plugin, media_type: str, syntax: str):
    """frames-no-transcoding: plugin 406; plain 5xx, 400 (HTJ2K only) or 200 with parts of the asked type."""
    key = "frames-no-transcoding"
    _applied(key, f"{what}: plain {plain.status_code}, plugin {plugin.status_code}")
    if plugin.status_code != 406 or "transcoding" not in plugin.text:
        _fail(key, what, f"plugin answered {plugin.status_code} {plugin.text[:300]}")
    if plain.status_code >= 500:
        return
    if plain.status_code == 400 and syntax == HTJ2K:
        return
    if plain.status_code != 200:
        _fail(key, what, f"plain answered {plain.status_code} {plain.text[:300]}")
    types = {headers.get("Content-Type", "").split(";")[0] for headers, _ in multipart_full(plain)}
    if types != {media_type}:
        _fail(key, what, f"plain's parts are {types}, not {media_type}")


def check_no_pixel_data_frames(what: str, plain, plugin):
    """frames-no-pixel-data: plain 5xx, plugin 400 'no pixel data'."""
    key = "frames-no-pixel-data"
    _applied(key, f"{what}: plain {plain.status_code}, plugin {plugin.status_code}")
    if not (plain.status_code >= 500 and plugin.status_code == 400 and "no pixel data" in plugin.text):
        _fail(key, what, f"plain {plain.status_code} {plain.text[:200]}; plugin {plugin.status_code} "
                         f"{plugin.text[:200]}")


# --- snapshots of stored resources ----------------------------------------------------------------------------

CLOCK_TAGS = {"InstanceCreationDate", "InstanceCreationTime", "0008,0012", "0008,0013"}


def instances_snapshot(server, level: str, resource_id: str, keep_uids: set, keep_ids: set) -> list[dict]:
    """Per instance of a resource: simplified tags, the file (parsed) and the metadata, each masked on its own
    (generated UIDs / IDs numbered in order, the uploaded ones kept), sorted (a resource's order is not defined)."""
    result = []
    for instance in server.get(f"/{level}/{resource_id}/instances").json():
        masker = Masker(keep_uids, keep_ids)
        tags = server.get(f"/instances/{instance['ID']}/tags?simplify").json()
        metadata = server.get(f"/instances/{instance['ID']}/metadata?expand").json()
        result.append({"tags": masker(drop(tags, CLOCK_TAGS)),
                       "file": dataset_json(server.get(f"/instances/{instance['ID']}/file").content, masker,
                                            volatile=VOLATILE_TAGS),
                       "metadata": masker(drop(metadata, {"ReceptionDate", "LastUpdate"}))})
    return sorted(result, key=lambda item: json.dumps(item, sort_keys=True))
