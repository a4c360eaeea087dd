"""Differential, REST side: the same real files uploaded by POST /instances to a plain Orthanc and to an Orthanc
with the plugin, then the same read requests to both (files, attachments, metadata, tags, images, DICOMweb,
archives). The plugin must not take anything away: every answer must be the same, except the differences of
support.differential.EXPECTED_DIFFERENCES, each checked to be exactly what its rule says (both servers run
without the GDCM plugin: it crashed both at random, see support/differential.py)."""

import io
import json

import numpy as np
import pytest
from pydicom import dcmread

from support.differential import (FILES, HTJ2K, NO_PIXELS, assert_same, check_attachments,
                                  check_no_pixel_data_frames, check_no_transcoding, check_transcoded_by_plugin,
                                  check_plugin_answers_where_plain_fails, check_statistics, check_stored_htj2k_frames,
                                  dataset_json, dicomdir_records, drop, file_bytes, instance_id, multipart_full,
                                  multipart_parts, pixels_bytes, png_pixels, replace_urls, stored_syntax, uids_of,
                                  zip_members)

VOLATILE_METADATA = {"ReceptionDate", "LastUpdate"}
STUDIES = sorted({uids_of(name)["study"]: name for name in FILES}.items())  # (Study UID, first file of it)
PATIENTS = sorted({uids_of(name)["patient"] for name in FILES if uids_of(name)["patient"]})


def _study_id(answers, name):
    return answers[name][0].json()["ParentStudy"]


def _same_status(what, plain, plugin):
    assert plain.status_code == plugin.status_code, (
        f"{what}: HTTP status plain {plain.status_code} vs plugin {plugin.status_code} "
        f"(plain: {plain.text[:200]!r}; plugin: {plugin.text[:200]!r})")


def _json_or_text(response):
    try:
        return response.json()
    except ValueError:
        return response.text


def _get_both(pair, path, **kwargs):
    return pair.both(lambda server: server.get(path, **kwargs))


@pytest.mark.parametrize("name", FILES)
def test_post_instances_answer(uploaded, name):
    pair, answers = uploaded
    plain, plugin = answers[name]
    _same_status(f"POST /instances {name}", plain, plugin)
    assert_same(f"POST /instances {name} answer", plain.json(), plugin.json())


@pytest.mark.parametrize("name", FILES)
def test_file_is_the_uploaded_bytes(uploaded, name):
    pair, answers = uploaded
    path = f"/instances/{instance_id(answers, name)}/file"
    plain, plugin = _get_both(pair, path)
    _same_status(f"GET {path} ({name})", plain, plugin)
    original = file_bytes(name)
    assert plain.content == original, f"GET {path} ({name}): the plain Orthanc itself changed the file"
    if plugin.content != original:
        detail = f"{len(original)} bytes uploaded, {len(plugin.content)} bytes answered"
        try:
            detail += (f"; plugin answer: {dataset_json(plugin.content)['meta']} "
                       f"vs uploaded {dataset_json(original)['meta']}")
        except Exception as error:  # noqa: BLE001
            detail += f"; plugin answer is not DICOM: {error}"
        pytest.fail(f"GET {path} ({name}): plugin does not give back the uploaded bytes: {detail}")
    for header in ("Content-Type", "Content-Length"):
        assert plain.headers.get(header) == plugin.headers.get(header), (
            f"GET {path} ({name}) header {header}: plain {plain.headers.get(header)} "
            f"vs plugin {plugin.headers.get(header)}")


@pytest.mark.parametrize("name", FILES)
def test_verify_md5(uploaded, name):
    pair, answers = uploaded
    path = f"/instances/{instance_id(answers, name)}/attachments/dicom/verify-md5"
    plain, plugin = pair.both(lambda server: server.post(path))
    _same_status(f"POST {path} ({name})", plain, plugin)
    assert_same(f"POST {path} ({name})", _json_or_text(plain), _json_or_text(plugin))


@pytest.mark.parametrize("name", FILES)
def test_attachment_info(uploaded, name):
    pair, answers = uploaded
    instance = instance_id(answers, name)
    base = f"/instances/{instance}/attachments"
    results = {}
    for route in ("", "/dicom/size", "/dicom/md5", "/dicom/compressed-size", "/dicom/compressed-md5",
                  "/dicom/is-compressed", "/dicom/data"):
        plain, plugin = _get_both(pair, base + route)
        _same_status(f"GET {base}{route} ({name})", plain, plugin)
        results[route] = (plain.content, plugin.content)
    plain_list, plugin_list = (json.loads(answer) for answer in results.pop(""))
    check_attachments(f"GET {base} ({name})", pair.plugin, instance, file_bytes(name), plain_list, plugin_list)
    for route, (plain, plugin) in results.items():
        assert plain == plugin, f"GET {base}{route} ({name}): plain {plain[:100]!r} vs plugin {plugin[:100]!r}"
    info = [drop(answer.json(), {"Uuid"}) for answer in _get_both(pair, base + "/dicom/info")]
    assert_same(f"GET {base}/dicom/info ({name}) (without Uuid)", *info)


def _instances_below(server, level, resource_id):
    if level == "instances":
        return [resource_id]
    return [item["ID"] for item in server.get(f"/{level}/{resource_id}/instances").json()]


@pytest.mark.parametrize("name", FILES)
def test_resources(uploaded, name):
    """GET /instances/{id}, its series, study and patient (FileUuid is random: dropped), their statistics."""
    pair, answers = uploaded
    answer = answers[name][0].json()
    for path in (f"/instances/{answer['ID']}", f"/series/{answer['ParentSeries']}",
                 f"/studies/{answer['ParentStudy']}", f"/patients/{answer['ParentPatient']}"):
        plain, plugin = _get_both(pair, path)
        _same_status(f"GET {path} ({name})", plain, plugin)
        assert_same(f"GET {path} ({name})", drop(plain.json(), {"FileUuid", "LastUpdate"}),
                    drop(plugin.json(), {"FileUuid", "LastUpdate"}))
    for level, resource in (("instances", answer["ID"]), ("series", answer["ParentSeries"]),
                            ("studies", answer["ParentStudy"]), ("patients", answer["ParentPatient"])):
        path = f"/{level}/{resource}/statistics"
        plain, plugin = _get_both(pair, path)
        _same_status(f"GET {path} ({name})", plain, plugin)
        check_statistics(f"GET {path} ({name})", plain.json(), plugin.json(), pair.plugin,
                         _instances_below(pair.plugin, level, resource))


def test_statistics(uploaded):
    pair, _ = uploaded
    plain, plugin = _get_both(pair, "/statistics")
    check_statistics("GET /statistics", plain.json(), plugin.json(), pair.plugin, pair.plugin.instances())


@pytest.mark.parametrize("name", FILES)
def test_metadata(uploaded, name):
    pair, answers = uploaded
    path = f"/instances/{instance_id(answers, name)}/metadata?expand"
    plain, plugin = _get_both(pair, path)
    _same_status(f"GET {path} ({name})", plain, plugin)
    assert_same(f"GET {path} ({name}) (without {sorted(VOLATILE_METADATA)})",
                drop(plain.json(), VOLATILE_METADATA), drop(plugin.json(), VOLATILE_METADATA))
    assert plain.json().get("Origin") == "RestApi"


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("route", ["tags", "tags?simplify", "simplified-tags", "header", "tags?short", "frames",
                                   "pdf", "content/0028,0010"])
def test_tags(uploaded, name, route):
    pair, answers = uploaded
    path = f"/instances/{instance_id(answers, name)}/{route}"
    plain, plugin = _get_both(pair, path)
    _same_status(f"GET {path} ({name})", plain, plugin)
    assert_same(f"GET {path} ({name})", _json_or_text(plain), _json_or_text(plugin))


IMAGE_ROUTES = ["preview", "rendered", "image-uint8", "image-uint16", "image-int16", "numpy", "matlab",
                "frames/0/preview", "frames/0/rendered", "frames/0/image-uint16", "frames/0/raw", "frames/0/numpy",
                "rendered?quality=90", "rendered?width=32"]


def _decoded(response, route):
    content_type = response.headers.get("Content-Type", "")
    if response.status_code != 200:
        return {"status": response.status_code}
    if content_type.startswith("image/png"):
        return {"type": content_type, **png_pixels(response.content)}
    if content_type.startswith("image/jpeg"):
        from PIL import Image
        image = Image.open(io.BytesIO(response.content))
        return {"type": content_type, "size": list(image.size), "mode": image.mode,
                "pixels": np.array(image).astype(int).tolist() if image.size[0] * image.size[1] < 5000 else
                np.array(image).mean().round(3).item()}
    if "numpy" in route:
        array = np.load(io.BytesIO(response.content))
        return {"type": content_type, "shape": list(array.shape), "dtype": str(array.dtype),
                "sha": __import__("hashlib").sha256(array.tobytes()).hexdigest()}
    return {"type": content_type, "bytes": __import__("hashlib").sha256(response.content).hexdigest(),
            "length": len(response.content)}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("route", IMAGE_ROUTES)
def test_images(uploaded, name, route):
    pair, answers = uploaded
    path = f"/instances/{instance_id(answers, name)}/{route}"
    accept = {"Accept": "image/png"} if route in ("preview", "rendered", "frames/0/preview",
                                                  "frames/0/rendered", "image-uint8", "image-uint16",
                                                  "image-int16", "frames/0/image-uint16") else {}
    plain, plugin = _get_both(pair, path, headers=accept)
    _same_status(f"GET {path} ({name})", plain, plugin)
    assert_same(f"GET {path} ({name}) decoded", _decoded(plain, route), _decoded(plugin, route))


@pytest.mark.parametrize("frame", range(10))
def test_multiframe_frames(uploaded, frame):
    pair, answers = uploaded
    for route in (f"frames/{frame}/preview", f"frames/{frame}/image-uint16", f"frames/{frame}/raw"):
        path = f"/instances/{instance_id(answers, 'emri_small.dcm')}/{route}"
        plain, plugin = _get_both(pair, path, headers={"Accept": "image/png"})
        _same_status(f"GET {path}", plain, plugin)
        assert_same(f"GET {path} decoded", _decoded(plain, route), _decoded(plugin, route))


# --- DICOMweb --------------------------------------------------------------------------------------------------

def _parts(response, what):
    """The parts of a multipart answer, keyed by SOP Instance UID when DICOM, in order otherwise."""
    parts = multipart_parts(response)
    keyed = {}
    for index, (content_type, body) in enumerate(parts):
        if content_type == "application/dicom":
            keyed[str(dataset_json(body)["dataset"].get("00080018", {}).get("Value", [index])[0])] = body
        else:
            keyed[str(index)] = (content_type, body)
    return keyed


def _compare_dicom_parts(what, plain, plugin):
    a, b = _parts(plain, what), _parts(plugin, what)
    assert sorted(a) == sorted(b), f"{what}: parts plain {sorted(a)} vs plugin {sorted(b)}"
    for key in a:
        if a[key] != b[key]:
            if isinstance(a[key], bytes):
                assert_same(f"{what} part {key} (parsed)", dataset_json(a[key]), dataset_json(b[key]))
                pytest.fail(f"{what} part {key}: the same dataset, different bytes "
                            f"(plain {len(a[key])} bytes, plugin {len(b[key])} bytes)")
            assert_same(f"{what} part {key}", [a[key][0], len(a[key][1])], [b[key][0], len(b[key][1])])
            pytest.fail(f"{what} part {key}: different bytes ({a[key][0]})")


ACCEPTS = {"default": None,
           "any": 'multipart/related; type="application/dicom"; transfer-syntax=*',
           "explicit": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'}


@pytest.mark.parametrize("accept", sorted(ACCEPTS))
@pytest.mark.parametrize("study_uid,name", STUDIES)
def test_dicomweb_retrieve_study(uploaded, study_uid, name, accept):
    pair, _ = uploaded
    path = f"/dicom-web/studies/{study_uid}"
    headers = {"Accept": ACCEPTS[accept]} if ACCEPTS[accept] else {}
    plain, plugin = _get_both(pair, path, headers=headers)
    what = f"GET {path} Accept {ACCEPTS[accept]} ({name})"
    _same_status(what, plain, plugin)
    _compare_dicom_parts(what, plain, plugin)


@pytest.mark.parametrize("name", FILES)
def test_dicomweb_retrieve_instance(uploaded, name):
    pair, _ = uploaded
    uids = uids_of(name)
    path = f"/dicom-web/studies/{uids['study']}/series/{uids['series']}/instances/{uids['sop']}"
    for accept in ACCEPTS.values():
        headers = {"Accept": accept} if accept else {}
        plain, plugin = _get_both(pair, path, headers=headers)
        what = f"GET {path} Accept {accept} ({name})"
        _same_status(what, plain, plugin)
        _compare_dicom_parts(what, plain, plugin)


@pytest.mark.parametrize("study_uid,name", STUDIES)
def test_dicomweb_metadata(uploaded, study_uid, name):
    pair, _ = uploaded
    urls = [pair.plain.url, pair.plugin.url]
    for path in (f"/dicom-web/studies/{study_uid}/metadata", f"/dicom-web/studies/{study_uid}/series"):
        plain, plugin = _get_both(pair, path)
        _same_status(f"GET {path} ({name})", plain, plugin)
        key = lambda item: str(item.get("00080018", item.get("0020000E", {})).get("Value"))  # noqa: E731
        assert_same(f"GET {path} ({name})", sorted(replace_urls(plain.json(), urls), key=key),
                    sorted(replace_urls(plugin.json(), urls), key=key))


@pytest.mark.parametrize("name", FILES)
def test_dicomweb_instance_metadata_and_rendered(uploaded, name):
    pair, _ = uploaded
    urls = [pair.plain.url, pair.plugin.url]
    uids = uids_of(name)
    base = f"/dicom-web/studies/{uids['study']}/series/{uids['series']}/instances/{uids['sop']}"
    plain, plugin = _get_both(pair, base + "/metadata")
    _same_status(f"GET {base}/metadata ({name})", plain, plugin)
    assert_same(f"GET {base}/metadata ({name})", replace_urls(plain.json(), urls), replace_urls(plugin.json(), urls))
    for accept in ("image/png", "image/jpeg"):
        plain, plugin = _get_both(pair, base + "/rendered", headers={"Accept": accept})
        _same_status(f"GET {base}/rendered Accept {accept} ({name})", plain, plugin)
        assert_same(f"GET {base}/rendered Accept {accept} ({name}) decoded", _decoded(plain, "rendered"),
                    _decoded(plugin, "rendered"))


FRAME_ACCEPTS = {
    "octet-stream": 'multipart/related; type="application/octet-stream"',
    "explicit": 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
    "any": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    "htj2k": f'multipart/related; type="application/octet-stream"; transfer-syntax={HTJ2K}',
    "jphc": 'multipart/related; type="image/jphc"',
    "anything": "*/*",
    "jp2-lossless": 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90',
    "jpeg-lossless": 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70',
}
# the Accepts under which the plugin answers the stored HTJ2K codestreams, and the part type it then labels
HTJ2K_ACCEPTS = {"any": "application/octet-stream", "htj2k": "application/octet-stream", "jphc": "image/jphc",
                 "anything": "application/octet-stream"}
# compressed syntaxes asked by name: (part media type, transfer syntax)
COMPRESSED_ACCEPTS = {"jp2-lossless": ("image/jp2", "1.2.840.10008.1.2.4.90"),
                      "jpeg-lossless": ("image/jpeg", "1.2.840.10008.1.2.4.70"),
                      "htj2k": ("application/octet-stream", HTJ2K), "jphc": ("image/jphc", HTJ2K)}
FRAME_LISTS = {"emri_small.dcm": "3,1,10"}  # multi-frame: several frames, out of order
_REFERENCE: dict = {}


def _frames_path(name):
    uids = uids_of(name)
    return (f"/dicom-web/studies/{uids['study']}/series/{uids['series']}/instances/{uids['sop']}"
            f"/frames/{FRAME_LISTS.get(name, '1')}")


def _header(name):
    return dcmread(io.BytesIO(file_bytes(name)), stop_before_pixels=True, force=True)


def _uncompressed_frames(pair, name):
    """Plain's uncompressed frames ((headers, bytes) per part): its octet-stream answer; where plain cannot
    decode (JPEG 2000 without GDCM), imagecodecs' decoding of the frames plain answers under transfer-syntax=*."""
    key = (pair.plain.url, name)
    if key not in _REFERENCE:
        import imagecodecs
        path = _frames_path(name)
        answer = pair.plain.get(path, headers={"Accept": FRAME_ACCEPTS["octet-stream"]})
        if answer.status_code == 200:
            _REFERENCE[key] = multipart_full(answer)
        else:
            raw = pair.plain.get(path, headers={"Accept": FRAME_ACCEPTS["any"]})
            assert raw.status_code == 200, f"GET {path}: plain answers neither uncompressed nor stored frames"
            bits = int(_header(name).BitsAllocated)
            _REFERENCE[key] = [(headers, pixels_bytes(imagecodecs.imread(body), bits))
                               for headers, body in multipart_full(raw)]
    return _REFERENCE[key]


@pytest.mark.parametrize("accept", sorted(FRAME_ACCEPTS))
@pytest.mark.parametrize("name", FILES)
def test_dicomweb_frames(uploaded, name, accept):
    pair, answers = uploaded
    urls = [pair.plain.url, pair.plugin.url]
    path = _frames_path(name)
    plain, plugin = _get_both(pair, path, headers={"Accept": FRAME_ACCEPTS[accept]})
    what = f"GET {path} Accept {FRAME_ACCEPTS[accept]} ({name})"
    received_syntax = str(_header(name).file_meta.TransferSyntaxUID)
    kept_as_htj2k = stored_syntax(pair.plugin, instance_id(answers, name)) == HTJ2K
    if kept_as_htj2k and accept in HTJ2K_ACCEPTS:
        check_stored_htj2k_frames(what, plugin, _uncompressed_frames(pair, name), HTJ2K_ACCEPTS[accept],
                                  int(_header(name).BitsAllocated), urls)
        return
    if name == NO_PIXELS and plain.status_code >= 500 and plugin.status_code != 406:
        check_no_pixel_data_frames(what, plain, plugin)
        return
    if accept in COMPRESSED_ACCEPTS and COMPRESSED_ACCEPTS[accept][1] != received_syntax:
        if plugin.status_code == 200 and accept == "jp2-lossless":
            check_transcoded_by_plugin(what, plain, plugin, [body for _, body in _uncompressed_frames(pair, name)],
                                       int(_header(name).BitsAllocated))
        else:
            check_no_transcoding(what, plain, plugin, *COMPRESSED_ACCEPTS[accept])
        return
    if plain.status_code >= 500 and plugin.status_code == 200:
        check_plugin_answers_where_plain_fails(what, plain, plugin,
                                               [body for _, body in _uncompressed_frames(pair, name)])
        return
    _same_status(what, plain, plugin)
    if plain.status_code != 200:
        return
    assert plain.headers["Content-Type"].split("; boundary=")[0] == plugin.headers["Content-Type"].split(
        "; boundary=")[0], f"{what}: Content-Type plain {plain.headers['Content-Type']} vs plugin " \
                           f"{plugin.headers['Content-Type']}"
    a, b = multipart_full(plain), multipart_full(plugin)
    assert_same(f"{what}: part headers", replace_urls([h for h, _ in a], urls), replace_urls([h for h, _ in b], urls))
    for index, ((_, x), (_, y)) in enumerate(zip(a, b)):
        assert x == y, f"{what}: part {index} differs (plain {len(x)} bytes, plugin {len(y)} bytes)"


@pytest.mark.parametrize("level", ["studies", "series", "instances"])
@pytest.mark.parametrize("patient", PATIENTS)
def test_qido(uploaded, patient, level):
    pair, _ = uploaded
    urls = [pair.plain.url, pair.plugin.url]
    path = f"/dicom-web/{level}?PatientID={patient}&includefield=all"
    plain, plugin = _get_both(pair, path)
    _same_status(f"GET {path}", plain, plugin)
    key = lambda item: json_key(item)  # noqa: E731
    assert_same(f"GET {path}", sorted(replace_urls(plain.json(), urls), key=key),
                sorted(replace_urls(plugin.json(), urls), key=key))


def json_key(item):
    import json
    return json.dumps(item, sort_keys=True)


def test_tools_find(uploaded):
    pair, _ = uploaded
    body = {"Level": "Instance", "Query": {}, "Expand": True}
    plain, plugin = pair.both(lambda server: server.post("/tools/find", json=body))
    key = lambda item: item["ID"]  # noqa: E731
    assert_same("POST /tools/find Instance expand", sorted(drop(plain.json(), {"FileUuid"}), key=key),
                sorted(drop(plugin.json(), {"FileUuid"}), key=key))


# --- archives ----------------------------------------------------------------------------------------------------

def _compare_zips(what, plain, plugin):
    _same_status(what, plain, plugin)
    a, b = zip_members(plain.content), zip_members(plugin.content)
    assert sorted(a) == sorted(b), f"{what}: ZIP members plain {sorted(a)} vs plugin {sorted(b)}"
    sizes = ({k: len(v) for k, v in a.items()}, {k: len(v) for k, v in b.items()})
    for member in sorted(a):
        if a[member] == b[member]:
            continue
        if member.endswith("DICOMDIR"):
            assert_same(f"{what} {member} records", dicomdir_records(a[member]), dicomdir_records(b[member]))
            continue
        assert_same(f"{what} member {member} (parsed)", dataset_json(a[member]), dataset_json(b[member]))
        pytest.fail(f"{what} member {member}: same dataset, other bytes: plain {sizes[0][member]} bytes, "
                    f"plugin {sizes[1][member]} bytes")


@pytest.mark.parametrize("route", ["archive", "media", "media?extended"])
@pytest.mark.parametrize("study_uid,name", STUDIES)
def test_study_archives(uploaded, study_uid, name, route):
    pair, answers = uploaded
    path = f"/studies/{_study_id(answers, name)}/{route}"
    plain, plugin = _get_both(pair, path)
    _compare_zips(f"GET {path} ({name})", plain, plugin)


@pytest.mark.parametrize("route", ["archive", "media"])
def test_tools_create_archive(uploaded, route):
    pair, answers = uploaded
    resources = sorted({_study_id(answers, name) for name in FILES})
    path = f"/tools/create-{route}"
    plain, plugin = pair.both(lambda server: server.post(path, json={"Resources": resources, "Synchronous": True}))
    _compare_zips(f"POST {path} (every study)", plain, plugin)


@pytest.mark.parametrize("name", [NO_PIXELS, "CT_small.dcm"])
def test_instance_archive_routes(uploaded, name):
    pair, answers = uploaded
    for path in (f"/series/{answers[name][0].json()['ParentSeries']}/archive",
                 f"/patients/{answers[name][0].json()['ParentPatient']}/media"):
        plain, plugin = _get_both(pair, path)
        _compare_zips(f"GET {path} ({name})", plain, plugin)
