"""Pure parts of the egress work: Orthanc's rendering rules, content negotiation, presentation
contexts, store request parsing, decoding to Explicit VR Little Endian (no Orthanc)."""

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless

from neuronova import rendering
from neuronova.dicom_sender import Item, batches, candidate_syntaxes, presentation_contexts
from neuronova.egress import StoreRequest
from neuronova.errors import BadRequest, NotFound
from neuronova.transcoder import TranscodeSettings, transcode
from neuronova.uncompressed import CannotDecode, _has_colour_marker, _jpeg_precision, to_explicit_little_endian
from support.dicom_files import parse, read_bytes


@pytest.mark.parametrize("accept, expected", [
    (None, rendering.PNG), ("*/*", rendering.PNG), ("image/*", rendering.PNG),
    ("image/jpeg", rendering.JPEG), ("image/x-portable-arbitrarymap", rendering.PAM),
    ("image/jpeg;q=0.5, image/png;q=0.9", rendering.PNG),
    ("image/*;q=1, image/jpeg;q=0.1", rendering.JPEG),  # the most specific range wins over quality
    ("text/html, image/jpeg", rendering.JPEG), ("text/html", None), ("", None),
])
def test_negotiation_follows_orthanc(accept, expected):
    assert rendering.negotiate(accept) == expected


def test_negotiation_refuses_a_quality_out_of_range():
    with pytest.raises(rendering.UnsupportedImage):
        rendering.negotiate("image/png;q=2")


def test_render_arguments_are_checked_in_orthancs_order_and_statuses():
    assert rendering.RenderArguments.parse({"window-center": "-600.5", "width": "+32", "smooth": "1"}) == \
        rendering.RenderArguments(-600.5, None, 32, 0, True)
    for query in ({"window-width": "abc"}, {"width": "-3"}, {"height": "1.5"}):
        with pytest.raises(NotFound):
            rendering.RenderArguments.parse(query)
    with pytest.raises(rendering.UnsupportedImage):
        rendering.RenderArguments.parse({"smooth": "yes"})
    with pytest.raises(rendering.UnsupportedImage):
        rendering.jpeg_quality({"quality": "0"})


@pytest.mark.parametrize("size, arguments, expected", [
    ((256, 100), rendering.RenderArguments(width=128), (128, 50)),
    ((256, 100), rendering.RenderArguments(height=25), (64, 25)),
    ((256, 100), rendering.RenderArguments(width=300, height=300), (300, 117)),  # 117.1875 rounds down
    ((3, 3), rendering.RenderArguments(width=5), (5, 5)),
    ((64, 64), rendering.RenderArguments(), (64, 64)),
])
def test_target_size_keeps_the_aspect_ratio(size, arguments, expected):
    assert rendering.target_size(*size, arguments) == expected


def test_smoothing_in_integers_equals_orthancs_float32_convolution():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    kernel = np.array([1, 4, 6, 4, 1], np.float32)
    padded = np.pad(image.astype(np.float32), 2, mode="edge")
    horizontal = sum(kernel[k] * padded[:, k:k + 17] for k in range(5))
    vertical = sum(kernel[k] * horizontal[k:k + 13] for k in range(5)) * np.float32(1 / 256)
    assert np.array_equal(rendering.smooth_gaussian_5x5(image), vertical.astype(np.uint8))
    colour = rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)  # narrower than the kernel
    assert rendering.smooth_gaussian_5x5(colour).shape == colour.shape


def test_resize_is_nearest_neighbour_and_contiguous():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    resized = rendering.resize_nearest(image, 2, 2)
    assert resized.tolist() == [[5, 7], [13, 15]] and resized.flags["C_CONTIGUOUS"]


def test_windowing_defaults_and_per_frame_groups():
    dataset = Dataset()
    dataset.BitsStored = 12
    assert rendering.default_windowing(dataset, 0) == (2048.0, 4096.0)
    assert rendering.rescale(dataset, 0) == (0.0, 1.0)
    item, voi, transform = Dataset(), Dataset(), Dataset()
    voi.WindowCenter, voi.WindowWidth = "40", "400"
    transform.RescaleIntercept, transform.RescaleSlope = "-1024", "2"
    item.FrameVOILUTSequence, item.PixelValueTransformationSequence = [voi], [transform]
    dataset.PerFrameFunctionalGroupsSequence = [Dataset(), item]
    assert rendering.default_windowing(dataset, 1) == (40.0, 400.0)
    assert rendering.rescale(dataset, 1) == (-1024.0, 2.0)
    dataset.WindowCenter, dataset.WindowWidth = ["10", "20"], ["100", "200"]  # the first window is used
    assert rendering.default_windowing(dataset, 1) == (10.0, 100.0)


def test_raw_modes_clamp_and_refuse_colour():
    image = np.array([[-5, 300, 70000 % 65536]], np.int32).astype(np.int16)
    assert rendering.extract(image, rendering.UINT8).tolist() == [[0, 255, 255]]
    assert rendering.extract(np.array([[40000]], np.uint16), rendering.INT16).tolist() == [[32767]]
    with pytest.raises(rendering.UnsupportedImage):
        rendering.extract(np.zeros((2, 2, 3), np.uint8), rendering.UINT16)


def test_pam_is_big_endian_with_orthancs_header():
    pam = rendering.to_pam(np.array([[1, 258]], np.uint16))
    assert pam == b"P7\nWIDTH 2\nHEIGHT 1\nDEPTH 1\nMAXVAL 65535\nTUPLTYPE GRAYSCALE\nENDHDR\n\x00\x01\x01\x02"


def test_candidate_syntaxes_and_presentation_contexts():
    assert candidate_syntaxes(HTJ2KLossless) == [HTJ2KLossless, JPEG2000Lossless, ExplicitVRLittleEndian,
                                                 ImplicitVRLittleEndian]
    assert candidate_syntaxes(HTJ2KLossless, prefer_j2k=False)[1] == ExplicitVRLittleEndian
    assert candidate_syntaxes(ImplicitVRLittleEndian) == [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    assert candidate_syntaxes(JPEG2000) == [JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    items = [Item("a", "1.2.3", HTJ2KLossless, bytes), Item("b", "1.2.3", JPEG2000, bytes),
             Item("c", "1.2.4", ExplicitVRLittleEndian, bytes)]
    assert presentation_contexts(items) == [
        ("1.2.3", [HTJ2KLossless]), ("1.2.3", [JPEG2000Lossless]),
        ("1.2.3", [ExplicitVRLittleEndian, ImplicitVRLittleEndian]), ("1.2.3", [JPEG2000]),
        ("1.2.4", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]


def test_batches_keep_every_association_under_128_contexts():
    items = [Item(str(i), f"1.2.{i}", HTJ2KLossless, bytes) for i in range(100)]  # 3 contexts each
    groups = batches(items)
    assert sum(len(group) for group in groups) == 100
    assert all(len(presentation_contexts(group)) <= 128 for group in groups) and len(groups) == 3


@pytest.mark.parametrize("body, resources, options", [
    (b"0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d", ["0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d"], {}),
    (b'"x"', ["x"], {}),
    (b'["x", "y"]', ["x", "y"], {}),
    (b'{"Resources": ["x"], "Synchronous": false}', ["x"], {"Resources": ["x"], "Synchronous": False}),
])
def test_store_requests_are_read_as_orthanc_reads_them(body, resources, options):
    request = StoreRequest.parse(body)
    assert (request.resources, request.options) == (resources, options)


def test_store_request_flags_and_errors():
    assert StoreRequest.parse(b'{"Resources": [], "Synchronous": false}').asynchronous
    assert StoreRequest.parse(b'{"Resources": [], "Asynchronous": true}').asynchronous
    assert not StoreRequest.parse(b'["x"]').asynchronous
    assert StoreRequest.parse(b'{"Resources": [], "MoveOriginatorAet": "A", "MoveOriginatorID": 7}').originator == ("A", 7)
    for body in (b"garbage{", b'{"Foo": 1}', b"3"):
        with pytest.raises(BadRequest):
            StoreRequest.parse(body)


def test_htj2k_decodes_back_to_the_original_pixels_and_rgb():
    for name in ("US1_UNCR.dcm", "emri_small.dcm", "693_UNCR.dcm"):
        htj2k = transcode(read_bytes(name), TranscodeSettings()).data
        copy, original = parse(to_explicit_little_endian(htj2k)), parse(read_bytes(name))
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert copy.PhotometricInterpretation == original.PhotometricInterpretation  # YBR_RCT back to RGB
        assert np.array_equal(copy.pixel_array, original.pixel_array)


def test_unknown_compressed_syntaxes_are_refused():
    dataset = parse(read_bytes("MR_small_RLE.dcm"))
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer)
    with pytest.raises(CannotDecode):
        to_explicit_little_endian(buffer.getvalue())


def test_jpeg_marker_helpers():
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(parse(read_bytes("JPGExtended.dcm")).PixelData, number_of_frames=1))
    assert _jpeg_precision(frame) == 12
    baseline = next(generate_frames(parse(read_bytes("SC_rgb_jpeg_dcmtk.dcm")).PixelData, number_of_frames=1))
    assert _jpeg_precision(baseline) == 8 and _has_colour_marker(baseline)
    plain = next(generate_frames(parse(read_bytes("SC_jpeg_no_color_transform.dcm")).PixelData, number_of_frames=1))
    assert not _has_colour_marker(plain)
