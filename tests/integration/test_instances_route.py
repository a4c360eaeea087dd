"""Orthanc's own POST /instances with the plugin loaded: every way clients use that route keeps
working, and what it stores is compressed on disk (by the storage area) and read back as received."""

from support.dicom_files import make_zip, parse, read_bytes


def test_multipart_upload_as_orthanc_explorer_sends_it_is_stored_as_htj2k(pacs):
    # Orthanc Explorer's uploader posts multipart/form-data; Orthanc hands the plugin each part.
    answer = pacs.post("/instances", files={"files[]": ("ct.dcm", read_bytes("CT_small.dcm"), "application/dicom")})
    assert answer.status_code == 200
    (instance,) = pacs.instances()
    assert pacs.get(f"/instances/{instance}/file").content == read_bytes("CT_small.dcm")
    assert parse(pacs.stored_file(instance)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.201"


def test_raw_post_answers_like_orthanc(pacs):
    first = pacs.post("/instances", data=read_bytes("CT_small.dcm"))
    assert first.status_code == 200
    assert set(first.json()) >= {"ID", "ParentPatient", "ParentSeries", "ParentStudy", "Path", "Status"}
    assert first.json()["Status"] == "Success"
    assert pacs.post("/instances", data=read_bytes("CT_small.dcm")).json()["Status"] == "AlreadyStored"
    not_dicom = pacs.post("/instances", data=b"hello")
    assert not_dicom.status_code == 400


def test_zip_post_is_unpacked_by_orthanc(pacs):
    answer = pacs.post("/instances", data=make_zip({"a.dcm": read_bytes("CT_small.dcm"),
                                                    "b.dcm": read_bytes("MR_small.dcm")}))
    assert answer.status_code == 200 and len(answer.json()) == 2
    assert len(pacs.instances()) == 2


def test_get_instances_still_answers(pacs):
    pacs.post("/instances", data=read_bytes("CT_small.dcm"))
    assert len(pacs.get("/instances").json()) == 1
    expanded = pacs.get("/instances?expand").json()
    assert expanded[0]["Type"] == "Instance"
    assert len(pacs.get("/instances?since=0&limit=5").json()) == 1
    assert pacs.get("/instances?limit=1").status_code == 400  # Orthanc wants "since" with "limit"
