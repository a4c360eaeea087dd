"""Pure parts of WADO-RS Retrieve Frames (wado_frames.py): Accept negotiation, frame lists,
Content-Location, multipart framing, per-frame decoding (no Orthanc)."""

import numpy as np
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, HTJ2KLossless, ImplicitVRLittleEndian

from neuronova.config import DicomWebSettings, load_settings
from neuronova.errors import BadRequest
from neuronova.dicomweb.frame_decoding import frame_to_little_endian
from neuronova.dicomweb.frames import (Choice, MediaRange, NotAcceptable, check_frames, choices, multipart, parse_accept,
                                   parse_frame_list, pixel_module, public_base, resolve)
from support.dicom_files import parse, read_bytes

OCTET = "application/octet-stream"
J2K, J2K_LOSSY, JPEG_BASELINE, RLE = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.50",
                                      "1.2.840.10008.1.2.5")


@pytest.mark.parametrize("header, expected", [
    (None, [MediaRange()]), ("", [MediaRange()]), ("*/*", [MediaRange(anything=True)]),
    ("multipart/related", [MediaRange()]),
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', [MediaRange(OCTET, "*")]),
    ("Multipart/Related; Type=Image/JPHC", [MediaRange("image/jphc", "")]),
    ('multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.201"',
     [MediaRange(OCTET, HTJ2KLossless)]),  # the nested form of Orthanc's own Content-Type
    ('multipart/related; type="image/jp2";q=0.4, multipart/related; type="image/jphc"',
     [MediaRange("image/jphc", ""), MediaRange("image/jp2", "", 0.4)]),
    ("application/octet-stream, image/jphc", []),  # frames only come as multipart/related
    ('multipart/related; type="image/jp2"; q=0', []),
])
def test_accept_ranges(header, expected):
    assert parse_accept(header) == expected


def test_a_parameter_without_value_is_a_bad_request():
    with pytest.raises(BadRequest):
        parse_accept("multipart/related; type")


@pytest.mark.parametrize("media_range, stored, expected", [
    (MediaRange(), HTJ2KLossless, Choice(f"{OCTET}; transfer-syntax={ExplicitVRLittleEndian}", True)),
    (MediaRange(OCTET, ImplicitVRLittleEndian), HTJ2KLossless,
     Choice(f"{OCTET}; transfer-syntax={ImplicitVRLittleEndian}", True)),
    (MediaRange(OCTET, "*"), HTJ2KLossless, Choice(f"{OCTET}; transfer-syntax={HTJ2KLossless}", False)),
    (MediaRange(OCTET, HTJ2KLossless), HTJ2KLossless, Choice(f"{OCTET}; transfer-syntax={HTJ2KLossless}", False)),
    (MediaRange("image/jphc", ""), HTJ2KLossless, Choice(f"image/jphc; transfer-syntax={HTJ2KLossless}", False)),
    (MediaRange("image/jphc", "*"), HTJ2KLossless, Choice(f"image/jphc; transfer-syntax={HTJ2KLossless}", False)),
    (MediaRange("image/jphc", "1.2.840.10008.1.2.4.203"), HTJ2KLossless, None),
    # lossless transcoding by the plugin's encoders, verified (frame_encoding), from lossless frames only
    (MediaRange("image/jp2", ""), HTJ2KLossless, Choice(f"image/jp2; transfer-syntax={J2K}", True, encode=J2K)),
    (MediaRange("image/jp2", ""), ExplicitVRLittleEndian, Choice(f"image/jp2; transfer-syntax={J2K}", True, encode=J2K)),
    (MediaRange("image/jp2", J2K_LOSSY), ExplicitVRLittleEndian, None),  # no lossy encoding
    (MediaRange(OCTET, J2K), HTJ2KLossless, None),
    # what the DICOMweb plugin 1.7 answers for instances it can read
    (MediaRange(OCTET, "*"), J2K_LOSSY, Choice(f"image/jp2; transfer-syntax={J2K_LOSSY}", False)),
    (MediaRange(OCTET, "*"), RLE, Choice(f"image/dicom-rle; transfer-syntax={RLE}", False)),
    (MediaRange(OCTET, "*"), ImplicitVRLittleEndian,
     Choice(f"{OCTET}; transfer-syntax={ImplicitVRLittleEndian}", False)),
    (MediaRange(OCTET, "*"), ExplicitVRBigEndian, Choice(f"{OCTET}; transfer-syntax={ExplicitVRLittleEndian}", False)),
    (MediaRange("image/jp2", J2K_LOSSY), J2K_LOSSY, Choice(f"image/jp2; transfer-syntax={J2K_LOSSY}", False)),
    (MediaRange("image/jp2", ""), J2K_LOSSY, None),  # lossy frames are never encoded again
    (MediaRange("image/x-jls", ""), "1.2.840.10008.1.2.4.80",
     Choice("image/jls; transfer-syntax=1.2.840.10008.1.2.4.80", False)),
    (MediaRange("image/x-dicom-rle", ""), RLE, Choice(f"image/dicom-rle; transfer-syntax={RLE}", False)),
    (MediaRange("image/jpeg", JPEG_BASELINE), JPEG_BASELINE,
     Choice(f"image/jpeg; transfer-syntax={JPEG_BASELINE}", False)),
    (MediaRange("image/jpeg", ""), JPEG_BASELINE, None),  # the DICOMweb plugin's default is JPEG lossless
    (MediaRange(), "1.2.840.10008.1.2.4.100", None),  # MPEG-2: nothing decodes it here
    (MediaRange(OCTET, "*"), "1.2.840.10008.1.2.4.100",
     Choice(f"{OCTET}; transfer-syntax=1.2.840.10008.1.2.4.100", False)),
])
def test_resolution(media_range, stored, expected):
    assert resolve(media_range, stored) == expected


def test_nothing_acceptable_is_a_406_naming_what_is():
    with pytest.raises(NotAcceptable, match=r"transfer-syntax=\*"):
        choices(parse_accept(f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}'), HTJ2KLossless)
    accept = f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}, ' \
             'multipart/related; transfer-syntax=*, */*'
    assert [choice.decode for choice in choices(parse_accept(accept), HTJ2KLossless)] == [False, True]


@pytest.mark.parametrize("text, expected", [
    (None, None), ("", None), ("1", [1]), ("3,1,3", [3, 1, 3]), ("2%2C4", [2, 4]), ("2%2c4", [2, 4]),
    ("+2", [2]), ("007", [7]),
])
def test_frame_lists(text, expected):
    assert parse_frame_list(text) == expected


def test_orthanc_1_12_hands_a_plus_over_as_a_space():
    assert parse_frame_list(" 7,3", plus_as_space=True) == [7, 3]
    with pytest.raises(BadRequest):
        parse_frame_list(" 7")  # Orthanc 1.10 keeps "+": a space there is the client's


@pytest.mark.parametrize("text", ["0", "-1", "1,x", "1,,2", "1,", " 1", "1.5", "99999999999", "1;2", "7" * 5000])
def test_malformed_frame_lists_are_bad_requests(text):
    with pytest.raises(BadRequest):
        parse_frame_list(text)


def test_frame_range():
    assert check_frames(None, 3) == [1, 2, 3]
    assert check_frames([3, 1], 3) == [3, 1]
    with pytest.raises(BadRequest, match="frame 4 does not exist"):
        check_frames([1, 4], 3)
    with pytest.raises(BadRequest, match="no pixel data"):
        check_frames(None, 0)


def test_public_base_as_the_dicomweb_plugin():
    settings = DicomWebSettings()
    assert public_base(settings, {"host": "pacs:8042"}) == "http://pacs:8042/dicom-web/"
    assert public_base(settings, {}) == "http://localhost:8042/dicom-web/"
    forwarded = "for=1.2.3.4;host=web.example;proto=https, for=x"
    assert public_base(settings, {"host": "pacs:8042", "forwarded": forwarded}) == "https://web.example/dicom-web/"
    configured = DicomWebSettings(root="/wado-rs/", host="public.example", ssl=True)
    assert public_base(configured, {"host": "pacs:8042", "forwarded": "host=o"}) == "https://public.example/wado-rs/"


def test_dicomweb_settings_from_orthancs_configuration():
    assert load_settings({}).dicomweb == DicomWebSettings()
    settings = load_settings({"DicomWeb": {"Root": "dicomweb", "Host": "h", "Ssl": True, "Enable": False}}).dicomweb
    assert settings == DicomWebSettings(enabled=False, root="/dicomweb/", host="h", ssl=True)


def test_multipart_framing_is_the_dicomweb_plugins():
    body = multipart([("http://h/f/1", b"ab"), ("http://h/f/2", b"")], "image/jp2; transfer-syntax=1", "B")
    assert body == (b"--B\r\nContent-Location: http://h/f/1\r\nContent-Type: image/jp2; transfer-syntax=1\r\n"
                    b"Content-Length: 2\r\nMIME-Version: 1.0\r\n\r\nab\r\n"
                    b"--B\r\nContent-Location: http://h/f/2\r\nContent-Type: image/jp2; transfer-syntax=1\r\n"
                    b"Content-Length: 0\r\nMIME-Version: 1.0\r\n\r\n\r\n--B--\r\n")


@pytest.mark.parametrize("name", ["emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm", "SC_rgb_rle_2frame.dcm",
                                  "US1_J2KR.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm"])
def test_one_frame_decodes_as_pydicom_decodes_the_whole_instance(name):
    data = read_bytes(name)
    dataset = parse(data)
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    reference = parse(data)
    reference.decompress(as_rgb=False, generate_instance_uid=False)  # pydicom's decoders (pylibjpeg, own RLE)
    copy = reference.PixelData
    frames = [frame_to_little_endian(frame, dataset, dataset.file_meta.TransferSyntaxUID)
              for frame in generate_frames(dataset.PixelData, number_of_frames=count)]
    assert len({len(frame) for frame in frames}) == 1
    assert b"".join(frames) == copy[:len(frames[0]) * count]
    assert np.frombuffer(b"".join(frames), np.uint8).size * 8 == (
        count * dataset.Rows * dataset.Columns * dataset.SamplesPerPixel * dataset.BitsAllocated)


def test_pixel_module_from_orthancs_short_tags():
    module = pixel_module({"0028,0010": "64", "0028,0011": "32", "0028,0004": "MONOCHROME2 ", "0028,0100": "16",
                           "0028,0101": "", "0028,0103": "1", "0010,0010": "Doe^John"})
    assert (module.Rows, module.Columns, module.PhotometricInterpretation, module.BitsAllocated,
            module.PixelRepresentation) == (64, 32, "MONOCHROME2", 16, 1)
    assert "BitsStored" not in module and "PatientName" not in module


@pytest.mark.parametrize("accept, label", [
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', f"{OCTET}; transfer-syntax={HTJ2KLossless}"),
    (f'multipart/related; type="application/octet-stream"; transfer-syntax={HTJ2KLossless}',
     f"{OCTET}; transfer-syntax={HTJ2KLossless}"),
    ('multipart/related; type="image/jphc"', f"image/jphc; transfer-syntax={HTJ2KLossless}"),
    ("*/*", f"{OCTET}; transfer-syntax={HTJ2KLossless}"),
])
def test_kept_htj2k_codestreams_answer_whoever_accepts_htj2k(accept, label):
    best = choices(parse_accept(accept), ExplicitVRLittleEndian, HTJ2KLossless)[0]
    assert (best.content_type, best.kept, best.decode) == (label, True, False)


@pytest.mark.parametrize("accept", [None, 'multipart/related; type="application/octet-stream"',
                                    f'multipart/related; type="application/octet-stream"; transfer-syntax={ExplicitVRLittleEndian}'])
def test_without_htj2k_in_accept_the_received_frames_answer_as_dicomweb_does(accept):
    assert choices(parse_accept(accept), ExplicitVRLittleEndian, HTJ2KLossless) == \
        choices(parse_accept(accept), ExplicitVRLittleEndian)
    assert not any(choice.kept for choice in choices(parse_accept(accept), ExplicitVRLittleEndian, HTJ2KLossless))
