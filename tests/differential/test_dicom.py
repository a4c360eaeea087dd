"""Differential, DICOM network: the same real files sent by C-STORE (dcmtk storescu) to a plain Orthanc and to an
Orthanc with the plugin; then C-GET (getscu), C-MOVE (movescu) and POST /modalities/{id}/store towards dcmtk
storescp peers that accept Explicit VR Little Endian only, and a Lua script forwarding every stored instance.
Statuses, stored metadata and the files the peers receive must be the same. Both servers run without the GDCM
plugin (it crashed both at random, see support/differential.py): JPEG 2000 files then reach no Explicit-LE-only
peer from either (NO_DECODER_WITHOUT_GDCM), which the tests check is the same on both."""

import json
import os
import time

import pytest
from pydicom import dcmread

from support.differential import (FILES, NO_DECODER_WITHOUT_GDCM, Masker, StoreScp, assert_same, dataset_json,
                                  drop, make_pair, received_json, run, uids_of, write_files)

STUDIES = sorted({uids_of(name)["study"]: name for name in FILES}.items())
VOLATILE_METADATA = {"ReceptionDate", "LastUpdate"}
REFUSED_PATIENT = "REFUSE-ME"
LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
   if dicom.PatientID == '%s' then
      return false
   end
   return true
end

function OnStoredInstance(instanceId, tags, metadata, origin)
   SendToModality(instanceId, 'target')
end
""" % REFUSED_PATIENT


def _refused_file(directory) -> str:
    """CT_small.dcm with its own UIDs and the patient that the Lua filter of both servers refuses."""
    dataset = dcmread(os.path.join(directory, "CT_small.dcm"))
    dataset.PatientID = REFUSED_PATIENT
    dataset.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1001"
    dataset.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1002"
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1003"
    path = os.path.join(directory, "refused.dcm")
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("dicom"))
    files = write_files(os.path.join(base, "files"))
    refused = _refused_file(os.path.join(base, "files"))
    lua = os.path.join(base, "forward.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    peers, pair = {}, None
    try:
        for side in ("plain", "plugin"):
            peers[side] = {}
            for role, aet in (("target", "LUATARGET"), ("dest", "DEST")):
                peers[side][role] = StoreScp(os.path.join(base, side, role), aet)
        pair = make_pair(tmp_path_factory, "dicom-servers", {"LuaScripts": [lua]})
        for side, server in pair.servers():
            for name, modality in {"target": {"AET": "LUATARGET", "Port": peers[side]["target"].port},
                                   "dest": {"AET": "DEST", "Port": peers[side]["dest"].port},
                                   "movescu": {"AET": "MOVESCU", "Port": 1, "AllowMove": True, "AllowFind": True},
                                   "getscu": {"AET": "GETSCU", "Port": 1, "AllowGet": True, "AllowFind": True}
                                   }.items():
                answer = server.put(f"/modalities/{name}", json={"Host": "127.0.0.1", **modality})
                assert answer.status_code == 200, f"{side}: PUT /modalities/{name}: {answer.status_code} {answer.text}"
        stores = {}
        for name in FILES:
            stores[name] = pair.both(lambda server: _storescu(server, files[name]))
        stores["refused"] = pair.both(lambda server: _storescu(server, refused))
        # Lua's forwarding is asynchronous: wait for the plain one's, then give the plugin's a few more seconds
        deliverable = len(FILES) - len(NO_DECODER_WITHOUT_GDCM)
        for side, timeout in (("plain", 30), ("plugin", 5)):
            deadline = time.monotonic() + timeout
            while len(os.listdir(peers[side]["target"].directory)) < deliverable and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(0.3)
        yield {"pair": pair, "peers": peers, "stores": stores, "files": files, "refused": refused}
    finally:
        if pair is not None:
            pair.stop()
        for side in peers.values():
            for scp in side.values():
                scp.stop()


# storescu proposes each file's own transfer syntax first, as scanners do
PROPOSE = {"1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.2": "-xb",
           "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw"}


def _storescu(server, path):
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return run(["storescu", "-v", PROPOSE[syntax], "-aet", "TESTSCU", "-aec", server.aet, "127.0.0.1",
                str(server.dicom_port), path])


def _tool_result(result):
    return {"exit": result["exit"], "responses": result["responses"]}


@pytest.mark.parametrize("name", FILES)
def test_cstore_status(network, name):
    plain, plugin = network["stores"][name]
    assert plain["exit"] == 0 and plain["responses"] == ["Received Store Response (Success)"], (
        f"the plain Orthanc did not take {name}: {plain['output']}")
    assert_same(f"storescu {name}: exit code and DIMSE responses", _tool_result(plain), _tool_result(plugin),
                f"plugin's storescu output: {plugin['output'][-800:]}")


def test_cstore_refused_by_lua_filter(network):
    """Orthanc 1.10 answers a C-STORE that a Lua ReceivedInstanceFilter refuses with Success and does not store
    it (POST /instances: 200, Status FilteredOut); the plugin's Orthanc must do the same."""
    pair = network["pair"]
    plain, plugin = network["stores"]["refused"]
    assert_same("storescu of a file the Lua ReceivedInstanceFilter refuses: exit code and DIMSE responses",
                _tool_result(plain), _tool_result(plugin), f"plain output: {plain['output'][-800:]}\n"
                                                           f"plugin output: {plugin['output'][-800:]}")
    sop = "1.2.826.0.1.3680043.8.498.1003"
    stored = pair.both(lambda server: server.post("/tools/lookup", data=sop).json())
    assert stored[0] == [], "the plain Orthanc stored the refused file"
    assert_same("POST /tools/lookup of the refused file (it must not be stored)", *stored)
    data = open(network["refused"], "rb").read()
    plain, plugin = pair.both(lambda server: server.post("/instances", data=data))
    assert plain.status_code == plugin.status_code, (
        f"POST /instances of the refused file: plain {plain.status_code} {plain.text[:200]} vs plugin "
        f"{plugin.status_code} {plugin.text[:200]}")
    assert_same("POST /instances of the refused file", plain.json(), plugin.json())


def test_rest_refuses_non_dicom(network):
    pair = network["pair"]
    for body in (b"not a DICOM file at all", b"\0" * 128 + b"DICM" + b"\x02\x00"):
        plain, plugin = pair.both(lambda server: server.post("/instances", data=body))
        assert plain.status_code == plugin.status_code, (
            f"POST /instances {body[:20]!r}...: plain {plain.status_code} {plain.text[:200]} vs plugin "
            f"{plugin.status_code} {plugin.text[:200]}")
        assert_same(f"POST /instances {body[:20]!r}... answer", plain.json(), plugin.json())


def _instance(network, name):
    uids = uids_of(name)
    answer = network["pair"].plain.post("/tools/lookup", data=uids["sop"]).json()
    assert answer, f"{name} is not on the plain Orthanc"
    return answer[0]["ID"]


@pytest.mark.parametrize("name", FILES)
def test_cstore_metadata(network, name):
    pair = network["pair"]
    path = f"/instances/{_instance(network, name)}/metadata?expand"
    plain, plugin = pair.both(lambda server: server.get(path))
    assert plain.status_code == plugin.status_code == 200, f"GET {path} ({name}): {plain.status_code} " \
                                                           f"vs {plugin.status_code} {plugin.text[:200]}"
    metadata = plain.json()
    assert (metadata["Origin"], metadata["RemoteAET"], metadata["CalledAET"]) == ("DicomProtocol", "TESTSCU",
                                                                                  "NEURONOVA")
    assert_same(f"GET {path} ({name}, stored by C-STORE)", drop(plain.json(), VOLATILE_METADATA),
                drop(plugin.json(), VOLATILE_METADATA))


@pytest.mark.parametrize("name", FILES)
def test_cstore_stored_file(network, name):
    pair = network["pair"]
    path = f"/instances/{_instance(network, name)}/file"
    plain, plugin = pair.both(lambda server: server.get(path))
    assert plain.status_code == plugin.status_code, f"GET {path} ({name}): {plain.status_code} vs " \
                                                    f"{plugin.status_code}"
    if plain.content != plugin.content:
        assert_same(f"GET {path} ({name}, stored by C-STORE) parsed", dataset_json(plain.content),
                    dataset_json(plugin.content))
        pytest.fail(f"GET {path} ({name}, stored by C-STORE): same dataset, other bytes "
                    f"(plain {len(plain.content)}, plugin {len(plugin.content)})")


@pytest.mark.parametrize("name", FILES)
def test_lua_forwarding(network, name):
    sop = uids_of(name)["sop"]
    received = {side: network["peers"][side]["target"].files() for side in ("plain", "plugin")}
    if name in NO_DECODER_WITHOUT_GDCM:
        assert_same(f"Lua SendToModality of {name} (no JPEG 2000 decoder without GDCM): forwarded?",
                    sop in received["plain"], sop in received["plugin"])
        return
    assert sop in received["plain"], f"the plain Orthanc's Lua did not forward {name}; got {sorted(received['plain'])}"
    assert sop in received["plugin"], (f"Lua SendToModality on the plugin's Orthanc did not deliver {name} "
                                       f"(plain did); the plugin peer got {len(received['plugin'])} files")
    assert_same(f"Lua OnStoredInstance -> SendToModality('target') of {name}: the file the peer received",
                dataset_json(received["plain"][sop]), dataset_json(received["plugin"][sop]))


def test_lua_forwarding_count(network):
    counts = {side: sorted(network["peers"][side]["target"].files()) for side in ("plain", "plugin")}
    assert_same("SOP Instance UIDs forwarded by Lua", counts["plain"], counts["plugin"])


def _study_id(network, study_uid):
    answer = network["pair"].plain.post("/tools/lookup", data=study_uid).json()
    return answer[0]["ID"]


def _peer_files(network, role):
    return {side: received_json(network["peers"][side][role].files()) for side in ("plain", "plugin")}


def _clear(network, role):
    for side in ("plain", "plugin"):
        network["peers"][side][role].clear()


@pytest.mark.parametrize("study_uid,name", STUDIES)
def test_store_to_modality(network, study_uid, name):
    pair = network["pair"]
    _clear(network, "dest")
    study = _study_id(network, study_uid)
    body = {"Resources": [study], "Synchronous": True}
    plain, plugin = pair.both(lambda server: server.post("/modalities/dest/store", json=body))
    what = f"POST /modalities/dest/store {json.dumps(body)} (study of {name}) to a peer taking Explicit LE only"
    assert plain.status_code == plugin.status_code, (f"{what}: plain {plain.status_code} {plain.text[:300]} vs "
                                                     f"plugin {plugin.status_code} {plugin.text[:300]}")
    assert_same(what + " answer", Masker()(plain.json()), Masker()(plugin.json()))
    received = _peer_files(network, "dest")
    assert_same(what + ": files received by the peer", received["plain"], received["plugin"])


@pytest.mark.parametrize("study_uid,name", STUDIES)
def test_cmove(network, study_uid, name):
    pair = network["pair"]
    _clear(network, "dest")
    results = pair.both(lambda server: run(["movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", server.aet, "-aem",
                                            "DEST", "-k", "QueryRetrieveLevel=STUDY", "-k",
                                            f"StudyInstanceUID={study_uid}", "127.0.0.1", str(server.dicom_port)]))
    what = f"movescu -S STUDY {study_uid} (study of {name}) to DEST (Explicit LE only)"
    assert_same(what + ": exit code and responses", _move_result(results[0]), _move_result(results[1]),
                f"plugin's output: {results[1]['output'][-800:]}")
    received = _peer_files(network, "dest")
    assert received["plain"] or name in NO_DECODER_WITHOUT_GDCM, (
        f"{what}: the plain Orthanc delivered nothing: {results[0]['output']}")
    assert_same(what + ": files received by the peer", received["plain"], received["plugin"])


def _move_result(result):
    """exit code, the response lines and the sub-operation counts of movescu/getscu."""
    import re
    counts = re.findall(r"(Completed|Failed|Warning|Remaining) Suboperations\s*:\s*(\w+)", result["output"])
    return {"exit": result["exit"], "responses": result["responses"], "counts": counts}


@pytest.mark.parametrize("transfer", ["default", "explicit-little"])
@pytest.mark.parametrize("study_uid,name", STUDIES)
def test_cget(network, tmp_path, study_uid, name, transfer):
    pair = network["pair"]
    options = ["+xe"] if transfer == "explicit-little" else []
    directories = {side: tmp_path / side for side in ("plain", "plugin")}
    for directory in directories.values():
        directory.mkdir()

    def getscu(server):
        side = "plain" if server is pair.plain else "plugin"
        return run(["getscu", "-v", "-S", *options, "-aet", "GETSCU", "-aec", server.aet, "-od",
                    str(directories[side]), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                    "127.0.0.1", str(server.dicom_port)])

    results = pair.both(getscu)
    what = f"getscu -S {' '.join(options)} STUDY {study_uid} (study of {name})"
    assert_same(what + ": exit code and responses", _move_result(results[0]), _move_result(results[1]),
                f"plugin's output: {results[1]['output'][-800:]}")
    received = {}
    for side, directory in directories.items():
        files = {}
        for entry in sorted(os.listdir(directory)):
            data = (directory / entry).read_bytes()
            files[str(dcmread(directory / entry, stop_before_pixels=True).SOPInstanceUID)] = data
        received[side] = received_json(files)
    assert_same(what + ": files received by getscu", received["plain"], received["plugin"])


def test_echo(network):
    pair = network["pair"]
    results = pair.both(lambda server: run(["echoscu", "-v", "-aet", "TESTSCU", "-aec", server.aet, "127.0.0.1",
                                            str(server.dicom_port)]))
    assert_same("echoscu", {"exit": results[0]["exit"]}, {"exit": results[1]["exit"]})
    answers = pair.both(lambda server: server.post("/modalities/dest/echo", json={}))
    assert answers[0].status_code == answers[1].status_code, "POST /modalities/dest/echo"


def test_cfind(network):
    pair = network["pair"]
    results = pair.both(lambda server: run(["findscu", "-v", "-S", "-aet", "MOVESCU", "-aec", server.aet,
                                            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                                            "-k", "PatientID", "-k", "ModalitiesInStudy", "-k",
                                            "NumberOfStudyRelatedInstances", "127.0.0.1", str(server.dicom_port)]))
    import re

    def answers(result):
        return sorted(re.findall(r"\((?:0020,000d|0010,0020|0008,0061|0020,1208)\)[^\n]*", result["output"]))
    assert_same("findscu STUDY", {"exit": results[0]["exit"], "answers": answers(results[0])},
                {"exit": results[1]["exit"], "answers": answers(results[1])})
