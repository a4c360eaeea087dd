"""DICOM egress of a mixed study (HTJ2K instances and a JPEG 2000 one kept as it arrived) to real peers:
dcmtk storescp accepting only uncompressed syntaxes, dcmtk storescp preferring JPEG 2000 lossless,
and a pynetdicom SCP accepting HTJ2K (DCMTK 3.6.7 does not know it). By /modalities/{id}/store and by
C-MOVE from dcmtk movescu; every received instance pixel-identical (pydicom + pylibjpeg-openjpeg)."""

import os
import subprocess
import threading

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import (HTJ2K, ExplicitVRLittleEndian, HTJ2KLossless, HTJ2KLosslessRPCL, ImplicitVRLittleEndian,
                         JPEG2000, JPEG2000Lossless, generate_uid)

from support.dicom_files import parse, read_bytes
from support.servers import OrthancServer, free_port, wait_until

MIXED = ["emri_small.dcm", "693_UNCR.dcm", "US1_UNCR.dcm", "JPEG2000.dcm"]  # the last one stays JPEG 2000
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class StoreScp:
    """dcmtk storescp; default options accept the uncompressed transfer syntaxes only."""

    def __init__(self, directory, aet, *options):
        self.directory, self.aet, self.port = str(directory), aet, free_port()
        os.makedirs(self.directory, exist_ok=True)
        self.process = subprocess.Popen(["storescp", *options, "-aet", aet, "-od", self.directory, str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def received(self) -> dict:
        files = {}
        for name in os.listdir(self.directory):
            dataset = dcmread(os.path.join(self.directory, name))
            files[dataset.SOPInstanceUID] = dataset
        return files

    def clear(self):
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


class PynetdicomScp:
    """A storage SCP that accepts HTJ2K, JPEG 2000 and uncompressed for every storage SOP class."""

    def __init__(self, aet):
        from pynetdicom import AE, StoragePresentationContexts, evt

        self.aet, self.port, self.files, self.lock = aet, free_port(), {}, threading.Lock()
        self.originators = {}  # SOP Instance UID -> Move Originator AET of the C-STORE
        ae = AE(ae_title=aet)
        syntaxes = [HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K, JPEG2000Lossless, JPEG2000, ExplicitVRLittleEndian,
                    ImplicitVRLittleEndian]
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.4.1", syntaxes)  # Enhanced MR
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event):
        from io import BytesIO

        dataset = dcmread(BytesIO(event.encoded_dataset()))
        originator = event.request.MoveOriginatorApplicationEntityTitle
        with self.lock:
            self.files[dataset.SOPInstanceUID] = dataset
            self.originators[dataset.SOPInstanceUID] = str(originator or "").strip()
        return 0x0000

    def received(self) -> dict:
        with self.lock:
            return dict(self.files)

    def clear(self):
        with self.lock:
            self.files.clear()

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    base = tmp_path_factory.mktemp("peers")
    scps = {"uncompressed": StoreScp(base / "uncompressed", "UNCOMP"),
            "j2k": StoreScp(base / "j2k", "J2KSCP", "+xv"),
            "htj2k": PynetdicomScp("HTSCP")}
    yield scps
    for scp in scps.values():
        scp.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, peers):
    modalities = {name: [scp.aet, "127.0.0.1", scp.port] for name, scp in peers.items()}
    modalities["closed"] = ["CLOSED", "127.0.0.1", free_port()]  # nobody listens there
    modalities["movescu"] = ["MOVESCU", "127.0.0.1", free_port()]
    orthanc = OrthancServer(str(tmp_path_factory.mktemp("egress")), {"DicomModalities": modalities}).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def study(server):
    """The mixed study: {SOP Instance UID: (original dataset, stored instance ID)} and the study ID."""
    study_uid, instances = generate_uid(), {}
    for name in MIXED:
        dataset = parse(read_bytes(name))
        dataset.StudyInstanceUID, dataset.PatientID, dataset.PatientName = study_uid, "EGRESS-1", "Egress^Test"
        from io import BytesIO

        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        answer = server.post("/instances", data=buffer.getvalue()).json()
        instances[dataset.SOPInstanceUID] = (parse(read_bytes(name)), answer["ID"])
        study_id = answer["ParentStudy"]
    syntaxes = {uid: server.get(f"/instances/{i}/header").json()["0002,0010"]["Value"].strip("\0 ")
                for uid, (_, i) in instances.items()}
    assert sorted(syntaxes.values()) == sorted([HTJ2KLossless] * 3 + [JPEG2000])
    return {"instances": instances, "id": study_id, "uid": study_uid, "syntaxes": syntaxes}


@pytest.fixture
def clean(peers):
    for scp in peers.values():
        scp.clear()
    yield peers


def assert_received_everything(server, study, received, expect):
    assert sorted(received) == sorted(study["instances"]), "every instance arrives, once"
    for uid, (original, instance_id) in study["instances"].items():
        copy = received[uid]
        syntax = copy.file_meta.TransferSyntaxUID
        assert syntax in expect(study["syntaxes"][uid]), (uid, syntax)
        assert np.array_equal(copy.pixel_array, original.pixel_array), uid
        if syntax in (HTJ2KLossless,):  # HTJ2K sent untouched: the very same codestreams
            stored = parse(server.get(f"/instances/{instance_id}/file").content)
            frames = int(stored.get("NumberOfFrames", 1) or 1)
            assert list(generate_frames(copy.PixelData, number_of_frames=frames)) == list(
                generate_frames(stored.PixelData, number_of_frames=frames))
        if original.SamplesPerPixel == 3:
            assert copy.PhotometricInterpretation in ("RGB", "YBR_RCT")


def store(server, modality, body):
    return server.post(f"/modalities/{modality}/store", json=body)


def test_store_to_a_peer_that_accepts_only_uncompressed(server, study, clean):
    answer = store(server, "uncompressed", {"Resources": [study["id"]]})
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert (payload["InstancesCount"], payload["FailedInstancesCount"], payload["RemoteAet"]) == (4, 0, "UNCOMP")
    assert payload["NeuroNova"]["SentByOrthanc"] == 1  # the JPEG 2000 instance: Orthanc's own store
    assert [i["TransferSyntax"] for i in payload["NeuroNova"]["Instances"]] == [ExplicitVRLittleEndian] * 3
    wait_until(lambda: len(clean["uncompressed"].received()) == 4, 20, "storescp files")
    assert_received_everything(server, study, clean["uncompressed"].received(), lambda stored: UNCOMPRESSED)


def test_store_to_a_peer_that_accepts_htj2k_sends_it_untouched(server, study, clean):
    answer = store(server, "htj2k", [study["id"]])
    assert answer.status_code == 200, answer.text
    assert answer.json()["FailedInstancesCount"] == 0
    assert_received_everything(server, study, clean["htj2k"].received(), lambda stored: (stored,))


def test_store_to_a_peer_that_prefers_jpeg_2000_lossless(server, study, clean):
    answer = store(server, "j2k", {"Resources": [study["id"]], "Synchronous": True})
    assert answer.status_code == 200, answer.text
    assert [i["TransferSyntax"] for i in answer.json()["NeuroNova"]["Instances"]] == [JPEG2000Lossless] * 3
    wait_until(lambda: len(clean["j2k"].received()) == 4, 20, "storescp files")
    assert_received_everything(server, study, clean["j2k"].received(),
                               lambda stored: (JPEG2000Lossless,) + UNCOMPRESSED)


def test_requests_without_htj2k_are_orthancs_own(server, study, clean):
    (jpeg2000,) = [i for uid, (_, i) in study["instances"].items() if study["syntaxes"][uid] == JPEG2000]
    answer = store(server, "uncompressed", {"Resources": [jpeg2000]})
    assert answer.status_code == 200 and "NeuroNova" not in answer.json()
    job = store(server, "uncompressed", {"Resources": [jpeg2000], "Asynchronous": True}).json()
    assert set(job) == {"ID", "Path"}  # Orthanc's own job
    bare = server.post("/modalities/uncompressed/store", data=jpeg2000)
    assert bare.status_code == 200 and bare.json()["InstancesCount"] == 1


def test_asynchronous_store_is_a_job_as_orthanc_explorer_expects(server, study, clean):
    # Orthanc Explorer 1.10 posts {"Synchronous": false, "Resources": [id]} and opens the job page
    job = store(server, "htj2k", {"Synchronous": False, "Resources": [study["id"]]}).json()
    assert set(job) == {"ID", "Path"} and job["Path"] == f"/jobs/{job['ID']}"
    done = wait_until(lambda: (lambda j: j if j["State"] != "Running" else None)(server.get(job["Path"]).json()),
                      60, "the store job")
    assert (done["State"], done["Type"], done["Progress"]) == ("Success", "DicomModalityStore", 100)
    assert done["Content"]["InstancesCount"] == 4 and done["Content"]["FailedInstancesCount"] == 0
    assert_received_everything(server, study, clean["htj2k"].received(), lambda stored: (stored,))
    failing = store(server, "closed", {"Asynchronous": True, "Resources": [study["id"]]}).json()
    failed = wait_until(lambda: (lambda j: j if j["State"] != "Running" else None)(server.get(failing["Path"]).json()),
                        60, "the failing job")
    assert failed["State"] == "Failure" and failed["ErrorCode"] == 9 and "4 of 4" in failed["ErrorDetails"]
    # Orthanc's own jobs still answer through the same URI
    (jpeg2000,) = [i for uid, (_, i) in study["instances"].items() if study["syntaxes"][uid] == JPEG2000]
    orthanc_job = store(server, "uncompressed", {"Resources": [jpeg2000], "Asynchronous": True}).json()
    assert server.get(f"/jobs/{orthanc_job['ID']}").json()["Type"] == "DicomModalityStore"
    assert server.get("/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


def test_failures_are_reported_per_instance(server, study, clean):
    answer = store(server, "closed", {"Resources": [study["id"]]})
    assert answer.status_code == 500
    payload = answer.json()
    assert payload["FailedInstancesCount"] == 4 and payload["InstancesCount"] == 4
    assert all(not i["Success"] and "association" in i["Error"] for i in payload["NeuroNova"]["Instances"])
    permissive = store(server, "closed", {"Resources": [study["id"]], "Permissive": True})
    assert permissive.status_code == 200 and permissive.json()["FailedInstancesCount"] == 4
    assert store(server, "nonexistent", [study["id"]]).status_code == 404
    assert server.post("/modalities/uncompressed/store", data=b"garbage{").status_code == 400
    assert server.alive()


def movescu(server, destination, level, **keys):
    arguments = ["movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", "NEURONOVA", "-aem", destination,
                 "-k", f"QueryRetrieveLevel={level}"]
    for key, value in keys.items():
        arguments += ["-k", f"{key}={value}"]
    return subprocess.run(arguments + ["127.0.0.1", str(server.dicom_port)], capture_output=True, text=True,
                          timeout=120)


def test_c_move_to_an_uncompressed_only_peer(server, study, clean):
    moved = movescu(server, "UNCOMP", "STUDY", StudyInstanceUID=study["uid"])
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: len(clean["uncompressed"].received()) == 4, 20, "storescp files")
    assert_received_everything(server, study, clean["uncompressed"].received(), lambda stored: UNCOMPRESSED)


def test_c_move_to_a_peer_that_accepts_htj2k(server, study, clean):
    moved = movescu(server, "HTSCP", "STUDY", StudyInstanceUID=study["uid"])
    assert moved.returncode == 0, moved.stderr
    assert_received_everything(server, study, clean["htj2k"].received(), lambda stored: (stored,))
    assert set(clean["htj2k"].originators.values()) == {"MOVESCU"}  # Orthanc's part and ours alike


def test_c_move_at_patient_level_and_of_an_instance_orthanc_sends_itself(server, study, clean):
    moved = movescu(server, "UNCOMP", "PATIENT", PatientID="EGRESS-1")
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: len(clean["uncompressed"].received()) == 4, 20, "storescp files")
    assert_received_everything(server, study, clean["uncompressed"].received(), lambda stored: UNCOMPRESSED)
    clean["uncompressed"].clear()
    (original, _), = [value for uid, value in study["instances"].items() if study["syntaxes"][uid] == JPEG2000]
    moved = movescu(server, "UNCOMP", "IMAGE", StudyInstanceUID=study["uid"],
                    SeriesInstanceUID=original.SeriesInstanceUID, SOPInstanceUID=original.SOPInstanceUID)
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: len(clean["uncompressed"].received()) == 1, 20, "storescp file")
    copy = clean["uncompressed"].received()[original.SOPInstanceUID]
    assert copy.file_meta.TransferSyntaxUID in UNCOMPRESSED  # decoded by Orthanc (GDCM) itself
    assert np.array_equal(copy.pixel_array, original.pixel_array)


def test_c_move_by_series_and_instance_and_failures(server, study, clean):
    original, instance_id = next(iter(study["instances"].values()))
    moved = movescu(server, "UNCOMP", "IMAGE", StudyInstanceUID=study["uid"],
                    SeriesInstanceUID=original.SeriesInstanceUID, SOPInstanceUID=original.SOPInstanceUID)
    assert moved.returncode == 0, moved.stderr
    wait_until(lambda: len(clean["uncompressed"].received()) == 1, 20, "storescp file")
    # Plugin 4.0's move callback is one sub-operation for the whole request: a failure shows as
    # "completed, one or more failures" (0xB000), whatever went wrong
    for destination, uid in (("CLOSED", study["uid"]), ("NOBODY", study["uid"]), ("UNCOMP", "1.2.3.4")):
        failed = movescu(server, destination, "STUDY", StudyInstanceUID=uid)
        assert failed.returncode != 0 and "SubOperationsCompleteOneOrMoreFailures" in failed.stderr, destination
    assert server.alive()
