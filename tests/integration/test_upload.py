"""The upload route inside a real Orthanc: assignment, audit trail, refusals that store nothing."""

import io
import struct
import zipfile
import zlib

import pytest

from neuronova.storage.layout import read_meta
from support.dicom_files import make_zip, parse, read_bytes, tiny_jpeg
from support.servers import OrthancServer

DICOM = {"Content-Type": "application/dicom"}


def stored_file(pacs, instance_id):
    return parse(pacs.get(f"/instances/{instance_id}/file").content)


def test_upload_with_patient_assigns_and_keeps_an_audit_trail(pacs):
    original = parse(read_bytes("CT_small.dcm"))
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"), headers=DICOM)
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is True and body["message"] == "Uploaded and converted successfully"
    assert body["patient_id"] == "P-2024-001234"
    assert set(body["orthanc_response"]) == {"ID", "ParentPatient", "ParentSeries", "ParentStudy", "Status"}
    assert body["orthanc_response"]["Status"] == "Success"

    stored = stored_file(pacs, body["orthanc_response"]["ID"])
    assert (stored.PatientID, str(stored.PatientName), stored.PatientBirthDate, stored.PatientSex) == \
        ("P-2024-001234", "Hong^Gildong", "19800115", "M")
    assert stored.SOPInstanceUID == original.SOPInstanceUID
    item = stored.OriginalAttributesSequence[-1]
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem == "NeuroNova ingest"
    assert item.ModifiedAttributesSequence[0].PatientID == original.PatientID
    assert stored.OtherPatientIDsSequence[-1].PatientID == original.PatientID
    patient = pacs.get(f"/patients/{body['orthanc_response']['ParentPatient']}").json()
    assert patient["MainDicomTags"]["PatientID"] == "P-2024-001234"
    assert patient["MainDicomTags"]["PatientName"] == "Hong^Gildong"


def test_hangul_name_is_stored_in_utf8_and_shown_by_orthanc(pacs):
    answer = pacs.post("/neuronova/upload/P-2024-001239", data=read_bytes("MR_small.dcm"), headers=DICOM)
    assert answer.status_code == 200, answer.text
    instance = answer.json()["orthanc_response"]["ID"]
    tags = pacs.get(f"/instances/{instance}/simplified-tags").json()
    assert tags["PatientName"] == "홍^길순"
    assert tags["SpecificCharacterSet"] == "ISO_IR 192"
    assert stored_file(pacs, instance).PatientName == "홍^길순"


def test_upload_without_patient_keeps_the_files_own_patient(pacs):
    original = parse(read_bytes("MR_small.dcm"))
    answer = pacs.post("/neuronova/upload", data=read_bytes("MR_small.dcm"),
                       headers={"Content-Type": "application/octet-stream"})
    assert answer.status_code == 200
    assert answer.json()["patient_id"] == original.PatientID
    stored = stored_file(pacs, answer.json()["orthanc_response"]["ID"])
    assert (stored.PatientID, stored.PatientName, stored.PatientSex) == \
        (original.PatientID, original.PatientName, original.PatientSex)
    assert "OriginalAttributesSequence" not in stored


def test_reupload_to_the_same_patient_is_idempotent(pacs):
    first = pacs.post("/neuronova/upload/P-2024-001235", data=read_bytes("CT_small.dcm"), headers=DICOM).json()
    again = pacs.post("/neuronova/upload/P-2024-001235", data=read_bytes("CT_small.dcm"), headers=DICOM).json()
    assert again["orthanc_response"]["Status"] == "AlreadyStored"
    assert again["orthanc_response"]["ID"] == first["orthanc_response"]["ID"]
    stored_bytes = pacs.get(f"/instances/{first['orthanc_response']['ID']}/file").content
    back = pacs.post("/neuronova/upload/P-2024-001235", data=stored_bytes, headers=DICOM).json()
    assert back["orthanc_response"]["Status"] == "AlreadyStored"
    assert len(stored_file(pacs, first["orthanc_response"]["ID"]).OriginalAttributesSequence) == 1
    assert len(pacs.instances()) == 1


def test_percent_encoded_patient_id_in_the_path(pacs):
    pacs.put("/neuronova/patients/MRN%2F42%20A", json={"name": "Slash^Sam", "gender": "male"})
    answer = pacs.post("/neuronova/upload/MRN%2F42%20A", data=read_bytes("CT_small.dcm"), headers=DICOM)
    assert answer.status_code == 200, answer.text
    assert stored_file(pacs, answer.json()["orthanc_response"]["ID"]).PatientID == "MRN/42 A"


@pytest.mark.parametrize("path, data, status, message", [
    ("/neuronova/upload", tiny_jpeg(), 400, "not a DICOM file"),
    ("/neuronova/upload/P-2024-001234", read_bytes("CT_small.dcm")[:6000], 400, "truncated DICOM file"),
    ("/neuronova/upload", read_bytes("rtplan_truncated.dcm"), 400, "truncated DICOM file"),
    ("/neuronova/upload", b"", 400, "empty body"),
    ("/neuronova/upload/NO-SUCH-PATIENT", read_bytes("CT_small.dcm"), 404, "NO-SUCH-PATIENT"),
    ("/neuronova/upload", b"PK\x03\x04 garbage", 400, "unreadable ZIP"),
])
def test_bad_uploads_are_refused_and_store_nothing(pacs, path, data, status, message):
    answer = pacs.post(path, data=data, headers=DICOM)
    assert answer.status_code == status
    assert answer.json()["success"] is False and message in answer.json()["error"]
    assert pacs.instances() == []


def test_zip_stores_good_members_and_reports_the_bad_one(pacs):
    archive = make_zip({"ct.dcm": read_bytes("CT_small.dcm"), "notes/readme.txt": b"hello",
                        "mr.dcm": read_bytes("MR_small.dcm"), "folder/": b""})
    answer = pacs.post("/neuronova/upload/P-2024-001236", data=archive, headers={"Content-Type": "application/zip"})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["total"], body["stored"], body["failed"], body["success"]) == (3, 2, 1, False)
    by_file = {result["file"]: result for result in body["results"]}
    assert by_file["notes/readme.txt"]["success"] is False and "not a DICOM file" in by_file["notes/readme.txt"]["error"]
    assert by_file["ct.dcm"]["orthanc_response"]["Status"] == "Success"
    assert len(pacs.instances()) == 2
    for instance in pacs.instances():
        assert stored_file(pacs, instance).PatientID == "P-2024-001236"


def test_zip_of_good_files_succeeds(pacs):
    archive = make_zip({"a.dcm": read_bytes("CT_small.dcm"), "b.dcm": read_bytes("MR_small.dcm")})
    body = pacs.post("/neuronova/upload", data=archive, headers={"Content-Type": "application/zip"}).json()
    assert body["success"] is True and (body["stored"], body["failed"]) == (2, 0)


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory):
    server = OrthancServer(str(tmp_path_factory.mktemp("limits")), {"NeuroNova": {"Upload": {
        "MaxUploadSizeMB": 1, "MaxUnzippedSizeMB": 2}}}).start()
    yield server
    server.stop()


def test_over_size_body_is_a_413_and_stores_nothing(small_limits):
    body = read_bytes("CT_small.dcm") + b"\0" * (1024 * 1024)
    answer = small_limits.post("/neuronova/upload", data=body, headers=DICOM)
    assert answer.status_code == 413 and "MaxUploadSizeMB" in answer.json()["error"]
    assert small_limits.instances() == [] and small_limits.alive()


def test_zip_bomb_is_a_413_and_stores_nothing(small_limits):
    bomb = make_zip({"ct.dcm": read_bytes("CT_small.dcm"), "zeros.dcm": b"\0" * (3 * 1024 * 1024)})
    assert len(bomb) < 100_000
    answer = small_limits.post("/neuronova/upload", data=bomb, headers={"Content-Type": "application/zip"})
    assert answer.status_code == 413 and "inflate" in answer.json()["error"]
    assert small_limits.instances() == [] and small_limits.alive()


def test_assigning_a_file_of_a_stored_study_to_another_patient_is_a_409(pacs):
    first = pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"), headers=DICOM)
    assert first.status_code == 200
    other = parse(read_bytes("CT_small.dcm"))
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID + ".2"
    from io import BytesIO
    buffer = BytesIO()
    other.save_as(buffer, enforce_file_format=True)
    answer = pacs.post("/neuronova/upload/P-2024-001235", data=buffer.getvalue(), headers=DICOM)
    assert answer.status_code == 409 and "already stored under patient P-2024-001234" in answer.json()["error"]
    assert len(pacs.instances()) == 1 and len(pacs.get("/patients").json()) == 1


def _zip_with_damaged_members() -> tuple[bytes, list[str]]:
    """A ZIP whose members fail in every way an archive can: the good ones must still be stored."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("first.dcm", read_bytes("CT_small.dcm"), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("corrupt-deflate.dcm", read_bytes("MR_small.dcm"), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("corrupt-lzma.dcm", read_bytes("MR_small.dcm"), compress_type=zipfile.ZIP_LZMA)
        archive.writestr("unsupported.dcm", read_bytes("MR_small.dcm"), compress_type=zipfile.ZIP_STORED)
        archive.writestr("last.dcm", read_bytes("rtplan.dcm"), compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(buffer.getvalue())
    for name in ("corrupt-deflate.dcm", "corrupt-lzma.dcm"):  # garble the middle of the compressed stream
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
            info = archive.getinfo(name)
        start = info.header_offset + 30 + len(name.encode()) + len(info.extra)
        for offset in range(start + 40, start + min(info.compress_size, 400)):
            data[offset] ^= 0x5A
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:  # a compression method nobody implements
        info = archive.getinfo("unsupported.dcm")
    struct.pack_into("<H", data, info.header_offset + 8, 99)
    for position in range(len(data) - 4):  # the central directory entry of that member as well
        if data[position:position + 4] == b"PK\x01\x02" and data[position + 46:position + 46 + 15] == b"unsupported.dcm":
            struct.pack_into("<H", data, position + 10, 99)
    return bytes(data), ["first.dcm", "last.dcm"]


def test_every_zip_member_gets_its_own_result_and_the_rest_goes_on(pacs):
    archive, good = _zip_with_damaged_members()
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=archive, headers={"Content-Type": "application/zip"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    results = {result["file"]: result for result in body["results"]}
    assert [name for name, result in results.items() if result["success"]] == good
    for name in ("corrupt-deflate.dcm", "corrupt-lzma.dcm", "unsupported.dcm"):
        assert results[name]["success"] is False and "cannot extract from the ZIP archive" in results[name]["error"]
        assert "Traceback" not in results[name]["error"] and "/" not in results[name]["error"].split(":")[0]
    assert body["stored"] == 2 and body["failed"] == 3
    assert len(pacs.instances()) == 2


def test_members_whose_names_are_not_the_utf8_they_claim_are_stored_all_the_same(pacs):
    """Python's zipfile cannot open such an archive at all: the plugin reads the names byte for byte."""
    archive = bytearray(make_zip({"good.dcm": read_bytes("CT_small.dcm"), "xx.dcm": read_bytes("MR_small.dcm")}))
    for header, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # bit 11: "the names are UTF-8"
        at = archive.find(header)
        while at >= 0:
            struct.pack_into("<H", archive, at + flags_at, struct.unpack_from("<H", archive, at + flags_at)[0] | 0x800)
            at = archive.find(header, at + 4)
    archive = bytearray(bytes(archive).replace(b"xx.dcm", b"\xff\xfe.dcm"))  # not UTF-8, in both headers
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=bytes(archive), headers={"Content-Type": "application/zip"})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [result["success"] for result in results] == [True, True]
    assert results[0]["file"] == "good.dcm" and results[1]["file"].endswith(".dcm")
    assert len(pacs.instances()) == 2


def test_a_member_without_a_name_gets_its_own_result(pacs):
    archive = bytearray(make_zip({"a.dcm": read_bytes("CT_small.dcm"), "Q": read_bytes("MR_small.dcm"),
                                  "c.dcm": read_bytes("rtplan.dcm")}))
    for header, length_at, name_at in ((b"PK\x03\x04", 26, 30), (b"PK\x01\x02", 28, 46)):
        at = archive.find(header)
        while at >= 0:  # the member named "Q": its name's length set to 0 (the byte stays, as extra data)
            length = struct.unpack_from("<H", archive, at + length_at)[0]
            if archive[at + name_at:at + name_at + length] == b"Q":
                struct.pack_into("<H", archive, at + length_at, 0)
                struct.pack_into("<H", archive, at + length_at + 2,
                                 struct.unpack_from("<H", archive, at + length_at + 2)[0] + 1)
            at = archive.find(header, at + 4)
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=bytes(archive), headers={"Content-Type": "application/zip"})
    assert answer.status_code == 200, answer.text
    results = {result["file"]: result for result in answer.json()["results"]}
    assert results["a.dcm"]["success"] and results["c.dcm"]["success"]
    assert "Traceback" not in answer.text and "IndexError" not in answer.text


def test_zip_member_names_stay_out_of_the_log_above_debug(pacs):
    archive = make_zip({"HONG^GILDONG_19800115/broken.dcm": b"not dicom"})
    pacs.post("/neuronova/upload/P-2024-001234", data=archive, headers={"Content-Type": "application/zip"})
    assert [line for line in pacs.log_text().splitlines() if "HONG^GILDONG" in line] == []


def _peak_rss_mib(server) -> float:
    with open(f"/proc/{server.process.pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_a_gigabyte_member_of_zeros_in_a_small_zip_is_refused_without_inflating_it(pacs):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ct.dcm", read_bytes("CT_small.dcm"))
        with archive.open("zeros.dcm", "w", force_zip64=True) as member:
            chunk = bytes(16 * 1024 * 1024)
            for _ in range(64):  # 1 GiB of zeros, about 1 MB once deflated
                member.write(chunk)
    body = buffer.getvalue()
    assert len(body) < 4 * 1024 * 1024
    peak_before = _peak_rss_mib(pacs)
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=body, headers={"Content-Type": "application/zip"})
    assert answer.status_code == 200, answer.text
    results = {result["file"]: result for result in answer.json()["results"]}
    assert results["ct.dcm"]["success"] and not results["zeros.dcm"]["success"]
    assert "no 'DICM' prefix" in results["zeros.dcm"]["error"]
    assert _peak_rss_mib(pacs) - peak_before < 200  # the member was never inflated (it would be 1024 MiB)


def _deflate_bomb(inflated_bytes: int) -> bytes:
    """A deflated DICOM file (1.2.840.10008.1.2.1.99) whose dataset inflates to `inflated_bytes`,
    built a chunk at a time (the test never holds it inflated)."""
    dataset = parse(read_bytes("CT_small.dcm"))
    del dataset.PixelData
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    head = io.BytesIO()
    dataset.save_as(head, enforce_file_format=True)
    meta_end = read_meta(head.getvalue()).end
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    plain = io.BytesIO()
    dataset.save_as(plain, enforce_file_format=True)
    elements = plain.getvalue()[read_meta(plain.getvalue()).end:]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    padding = inflated_bytes - len(elements) - 12
    out = [head.getvalue()[:meta_end], compressor.compress(elements),
           compressor.compress(struct.pack("<HH2sHL", 0x0029, 0x1010, b"OB", 0, padding))]
    chunk = bytes(16 * 1024 * 1024)
    for _ in range(padding // len(chunk)):
        out.append(compressor.compress(chunk))
    out.append(compressor.compress(bytes(padding % len(chunk))))
    out.append(compressor.flush())
    return b"".join(out)


def test_a_deflate_bomb_is_refused_without_being_inflated(pacs):
    bomb = _deflate_bomb(1024 * 1024 * 1024)  # 1 GiB once inflated
    assert len(bomb) < 2 * 1024 * 1024
    peak_before = _peak_rss_mib(pacs)
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=bomb, headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 413 and "MaxInflatedSizeMB" in answer.json()["error"], answer.text
    assert _peak_rss_mib(pacs) - peak_before < 200  # counted 16 MB at a time, never held inflated
    assert pacs.instances() == []
