"""Differential, modifications: anonymize / modify (instance, series, study; Replace, Keep, Transcode), merge and
split, the same on a plain Orthanc and on an Orthanc with the plugin. Generated UIDs and IDs are replaced by
placeholders numbered in order of appearance (same structure = same answer); the IDs of the uploaded resources stay
(ModifiedFrom / AnonymizedFrom must name the same source); the clock's dates are dropped. Sizes in /statistics:
support.differential EXPECTED_DIFFERENCES["until-pixel-data-statistics"]. Both servers run without GDCM."""

import json

import pytest

from support.differential import (FILES, Masker, assert_same, check_statistics, dataset_json, drop, file_bytes,
                                  known_uids, make_pair, uids_of, upload_all)

STUDIES = sorted({uids_of(name)["study"]: name for name in FILES}.items())
KNOWN = known_uids()
# Tags that hold the clock or a random value in an anonymized/modified instance (besides UIDs, masked anyway)
CLOCK = {"InstanceCreationDate", "InstanceCreationTime", "0008,0012", "0008,0013"}
SOURCE_IDS: set = set()  # Orthanc IDs of the uploaded resources (the same on both servers: hashes of the UIDs)
VOLATILE_METADATA = {"ReceptionDate", "LastUpdate"}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    pair = make_pair(tmp_path_factory, "modify")
    try:
        answers = upload_all(pair)
        for name, (plain, plugin) in answers.items():
            assert plain.status_code == 200, f"plain Orthanc refused {name}"
        stored_answers = {name: plain.json() for name, (plain, _) in answers.items()}
        SOURCE_IDS.update(answer[key] for answer in stored_answers.values()
                          for key in ("ID", "ParentSeries", "ParentStudy", "ParentPatient"))
        yield pair, stored_answers
    finally:
        pair.stop()


def _status(what, plain, plugin):
    assert plain.status_code == plugin.status_code, (
        f"{what}: HTTP status plain {plain.status_code} vs plugin {plugin.status_code} "
        f"(plain: {plain.text[:300]!r}; plugin: {plugin.text[:300]!r})")


def _file_json(data: bytes):
    return dataset_json(data, Masker(KNOWN), volatile=CLOCK | {"ContributingEquipmentSequence", "0018,a001"})


def _instances_of(server, level, resource_id):
    """Per new instance: its simplified tags and its file, masked; sorted (their order is not defined)."""
    result = []
    for instance in server.get(f"/{level}/{resource_id}/instances").json():
        tags = server.get(f"/instances/{instance['ID']}/tags?simplify").json()
        masker = Masker(KNOWN, SOURCE_IDS)
        result.append({"tags": masker(drop(tags, CLOCK)),
                       "file": _file_json(server.get(f"/instances/{instance['ID']}/file").content),
                       "metadata": masker(drop(server.get(f"/instances/{instance['ID']}/metadata?expand").json(),
                                               VOLATILE_METADATA))})
    return sorted(result, key=lambda item: json.dumps(item, sort_keys=True))


# --- instance level: the answer is the new file ----------------------------------------------------------------

INSTANCE_OPERATIONS = {
    "modify-replace": ("modify", {"Replace": {"PatientName": "Differential^Test", "InstitutionName": "Diff"},
                                  "Remove": ["ReferringPhysicianName"]}),
    "modify-transcode": ("modify", {"Transcode": "1.2.840.10008.1.2.1"}),
    "modify-keep-uids": ("modify", {"Replace": {"SeriesDescription": "Kept"}, "Keep": ["SOPInstanceUID"],
                                    "Force": True}),
    "anonymize": ("anonymize", {}),
    "anonymize-keep": ("anonymize", {"Keep": ["StudyDescription", "SeriesDescription"],
                                     "Replace": {"PatientName": "Anon^Differential"}}),
    "anonymize-transcode": ("anonymize", {"Transcode": "1.2.840.10008.1.2.1"}),
}


@pytest.mark.parametrize("operation", sorted(INSTANCE_OPERATIONS))
@pytest.mark.parametrize("name", FILES)
def test_instance_modification(stored, name, operation):
    pair, answers = stored
    route, body = INSTANCE_OPERATIONS[operation]
    path = f"/instances/{answers[name]['ID']}/{route}"
    plain, plugin = pair.both(lambda server: server.post(path, json=body))
    what = f"POST {path} {json.dumps(body)} ({name})"
    _status(what, plain, plugin)
    if plain.status_code != 200:
        return
    assert_same(what + " resulting file", _file_json(plain.content), _file_json(plugin.content))


# --- series and study level: a new resource is stored ---------------------------------------------------------

RESOURCE_OPERATIONS = {
    "modify-replace": ("modify", {"Replace": {"StudyDescription": "Modified", "PatientName": "Modified^Name"}}),
    "modify-keep-study-uid": ("modify", {"Replace": {"StudyDescription": "Kept UID"}, "Keep": ["StudyInstanceUID"],
                                         "Force": True}),
    "modify-transcode": ("modify", {"Transcode": "1.2.840.10008.1.2.1", "Replace": {"StudyID": "TRANSCODED"}}),
    "anonymize-keep": ("anonymize", {"Keep": ["StudyDescription", "SeriesDescription", "PatientSex"]}),
}


def _modify_resource(pair, level, resource_id, operation, what_suffix):
    route, body = RESOURCE_OPERATIONS[operation]
    if level == "series" and operation == "modify-keep-study-uid":
        body = {"Replace": {"SeriesDescription": "Kept UID"}, "Keep": ["SeriesInstanceUID"], "Force": True}
    if level == "series":
        body = {**body, "Replace": {k: v for k, v in body.get("Replace", {}).items() if k != "PatientName"}}
    path = f"/{level}/{resource_id}/{route}"
    plain, plugin = pair.both(lambda server: server.post(path, json=body))
    what = f"POST {path} {json.dumps(body)} ({what_suffix})"
    _status(what, plain, plugin)
    if plain.status_code != 200:
        return
    assert_same(what + " answer", Masker(KNOWN)(plain.json()), Masker(KNOWN)(plugin.json()))
    new = (plain.json()["ID"], plugin.json()["ID"])
    level_path = "series" if level == "series" else "studies"
    results = [_instances_of(server, level_path, new_id) for (_, server), new_id in zip(pair.servers(), new)]
    assert_same(what + " new resource's instances (tags, file, metadata)", *results)
    resources = [drop(Masker(KNOWN)(server.get(f"/{level_path}/{new_id}").json()), {"LastUpdate"})
                 for (_, server), new_id in zip(pair.servers(), new)]
    assert_same(what + f" GET /{level_path}/<new>", *resources)


@pytest.mark.parametrize("operation", sorted(RESOURCE_OPERATIONS))
@pytest.mark.parametrize("study_uid,name", STUDIES)
def test_study_modification(stored, study_uid, name, operation):
    pair, answers = stored
    _modify_resource(pair, "studies", answers[name]["ParentStudy"], operation, f"study of {name}")


@pytest.mark.parametrize("operation", ["modify-replace", "modify-transcode", "anonymize-keep"])
@pytest.mark.parametrize("name", ["CT_small.dcm", "US1_UNCR.dcm", "emri_small.dcm", "MR_small_bigendian.dcm",
                                  "image_dfl.dcm", "JPEG2000.dcm", "rtplan.dcm"])
def test_series_modification(stored, name, operation):
    pair, answers = stored
    _modify_resource(pair, "series", answers[name]["ParentSeries"], operation, f"series of {name}")


# --- the metadata Orthanc gives a modified instance --------------------------------------------------------------

@pytest.mark.parametrize("level", ["studies", "series"])
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "emri_small.dcm", "image_dfl.dcm", "MR_small_jp2klossless.dcm"])
def test_modified_instance_metadata(stored, name, level):
    """Origin, ModifiedFrom, TransferSyntax, SopClassUid, IndexInSeries... of the instances a modification
    stores: the same on both (the source's ID itself, not a placeholder), Origin RestApi on plain."""
    pair, answers = stored
    source = answers[name]["ParentStudy" if level == "studies" else "ParentSeries"]
    body = {"Replace": {"StudyDescription" if level == "studies" else "SeriesDescription": "Metadata"}}
    path = f"/{level}/{source}/modify"
    plain, plugin = pair.both(lambda server: server.post(path, json=body))
    _status(f"POST {path} {body} ({name})", plain, plugin)
    assert plain.status_code == 200, f"POST {path} ({name}): plain {plain.status_code} {plain.text[:300]}"
    metadata = []
    for (_, server), answer in zip(pair.servers(), (plain.json(), plugin.json())):
        instances = server.get(f"/{level}/{answer['ID']}/instances").json()
        metadata.append([server.get(f"/instances/{i['ID']}/metadata?expand").json() for i in instances])
    of_source = [m for m in metadata[0] if m.get("ModifiedFrom") == answers[name]["ID"]]
    assert len(of_source) == 1 and of_source[0].get("Origin") == "RestApi", (
        f"the plain Orthanc's instances modified from {name}: {metadata[0]}")
    # each masked on its own (the order of a resource's instances is not defined), then sorted
    masked = [sorted((Masker(KNOWN, SOURCE_IDS)(drop(m, VOLATILE_METADATA)) for m in side),
                     key=lambda m: json.dumps(m, sort_keys=True)) for side in metadata]
    assert_same(f"POST {path} ({name}): GET /instances/<new>/metadata?expand (without {sorted(VOLATILE_METADATA)})",
                *masked)


# --- merge and split ---------------------------------------------------------------------------------------------

def _check_statistics(pair, what):
    """GET /statistics: counts equal, sizes as EXPECTED_DIFFERENCES["until-pixel-data-statistics"] says."""
    plain, plugin = pair.both(lambda server: server.get("/statistics").json())
    check_statistics(what + ": GET /statistics", plain, plugin, pair.plugin, pair.plugin.instances())


def _study_shape(server, study_id):
    study = server.get(f"/studies/{study_id}").json()
    return {"series": len(study.get("Series", [])),
            "instances": sorted(len(server.get(f"/series/{s}").json()["Instances"]) for s in study.get("Series", []))}


def test_merge(stored):
    pair, answers = stored
    target = answers["CT_small.dcm"]["ParentStudy"]
    resources = [answers["MR_small.dcm"]["ParentSeries"], answers["rtplan.dcm"]["ParentSeries"],
                 answers["JPEG2000.dcm"]["ID"]]
    body = {"Resources": resources, "KeepSource": False}
    path = f"/studies/{target}/merge"
    plain, plugin = pair.both(lambda server: server.post(path, json=body))
    _status(f"POST {path} {body}", plain, plugin)
    assert_same(f"POST {path} answer", Masker(KNOWN)(plain.json()), Masker(KNOWN)(plugin.json()))
    assert_same(f"after POST {path}: the target study", *pair.both(lambda s: _study_shape(s, target)))
    _check_statistics(pair, f"after POST {path}")
    merged = pair.both(lambda server: _instances_of(server, "studies", target))
    assert_same(f"after POST {path}: the merged study's instances", *merged)


def test_split(stored):
    pair, answers = stored
    source = answers["693_UNCR.dcm"]["ParentStudy"]
    body = {"Series": [answers["693_UNCR.dcm"]["ParentSeries"]], "Replace": {"StudyDescription": "Split"},
            "KeepSource": True}
    path = f"/studies/{source}/split"
    plain, plugin = pair.both(lambda server: server.post(path, json=body))
    _status(f"POST {path} {body}", plain, plugin)
    assert_same(f"POST {path} answer", Masker(KNOWN)(plain.json()), Masker(KNOWN)(plugin.json()))
    if plain.status_code != 200:
        return
    targets = (plain.json()["TargetStudy"], plugin.json()["TargetStudy"])
    shapes = [_study_shape(server, t) for (_, server), t in zip(pair.servers(), targets)]
    assert_same(f"after POST {path}: the new study", *shapes)
    _check_statistics(pair, f"after POST {path}")
    new = [_instances_of(server, "studies", t) for (_, server), t in zip(pair.servers(), targets)]
    assert_same(f"after POST {path}: the new study's instances", *new)


def test_split_without_keep_source(stored):
    pair, answers = stored
    source = answers["SC_rgb.dcm"]["ParentStudy"]
    body = {"Series": [answers["SC_rgb.dcm"]["ParentSeries"]]}
    path = f"/studies/{source}/split"
    plain, plugin = pair.both(lambda server: server.post(path, json=body))
    _status(f"POST {path} {body}", plain, plugin)
    assert_same(f"POST {path} answer", Masker(KNOWN)(plain.json()), Masker(KNOWN)(plugin.json()))
    _check_statistics(pair, f"after POST {path}")


def test_upload_again_after_modifications(stored):
    """The originals, uploaded again: the same AlreadyStored answers on both."""
    pair, _ = stored
    for name in FILES:
        plain, plugin = pair.both(lambda server: server.post("/instances", data=file_bytes(name)))
        _status(f"POST /instances {name} again", plain, plugin)
        assert_same(f"POST /instances {name} again", plain.json(), plugin.json())

