"""The plugin's one configuration section ("NeuroNova" in orthanc.json), parsed once into frozen objects.

Unknown keys and bad values raise ConfigError naming the key, which stops the plugin at start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .errors import ConfigError
from .transcoder import TranscodeSettings

SECTION = "NeuroNova"
BUNDLED_SEED = os.path.join(os.path.dirname(__file__), "data", "demo_patients.json")
MIB = 1024 * 1024
UNCOMPRESSED_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                         DeflatedExplicitVRLittleEndian)


@dataclass(frozen=True)
class DirectorySettings:
    backend: str = "embedded"
    database: str = ""  # SQLite file of the embedded registry
    seed_file: str = BUNDLED_SEED
    search_max_limit: int = 500


@dataclass(frozen=True)
class UploadSettings:
    max_upload_bytes: int = 1024 * MIB  # one request body
    max_zip_members: int = 10000
    max_unzipped_bytes: int = 8192 * MIB  # sum of a ZIP's members once inflated: the zip-bomb guard
    max_member_bytes: int = 2048 * MIB


@dataclass(frozen=True)
class Settings:
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    transcoding: TranscodeSettings = field(default_factory=TranscodeSettings)


class _Section:
    """Reads one JSON object, checking each key's type; `done()` refuses keys nobody asked for."""

    def __init__(self, raw: object, path: str):
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: must be a JSON object")
        self.raw, self.path, self.seen = raw, path, set()

    def get(self, key: str, kind: type, default, check=None, rule: str = ""):
        self.seen.add(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(f"{self.path}.{key}: must be {kind.__name__}, got {value!r}")
        if check is not None and not check(value):
            raise ConfigError(f"{self.path}.{key}: {rule}, got {value!r}")
        return value

    def section(self, key: str) -> "_Section":
        self.seen.add(key)
        return _Section(self.raw.get(key, {}), f"{self.path}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.path}.{unknown[0]}: unknown configuration key")


def _positive(value: int) -> bool:
    return value > 0


def load_settings(orthanc_config: dict) -> Settings:
    """Build Settings from Orthanc's whole configuration (its storage folder gives default paths)."""
    root = _Section(orthanc_config.get(SECTION, {}), SECTION)
    storage = orthanc_config.get("StorageDirectory", "OrthancStorage")

    directory = root.section("Directory")
    directory_settings = DirectorySettings(
        backend=directory.get("Backend", str, "embedded", lambda v: v == "embedded", "must be 'embedded'"),
        database=directory.get("Database", str, "") or os.path.join(storage, "neuronova", "registry.sqlite"),
        seed_file=directory.get("SeedFile", str, "") or BUNDLED_SEED,
        search_max_limit=directory.get("SearchMaxLimit", int, 500, _positive, "must be positive"),
    )
    directory.done()

    upload = root.section("Upload")
    upload_settings = UploadSettings(
        max_upload_bytes=upload.get("MaxUploadSizeMB", int, 1024, _positive, "must be positive") * MIB,
        max_zip_members=upload.get("MaxZipMembers", int, 10000, _positive, "must be positive"),
        max_unzipped_bytes=upload.get("MaxUnzippedSizeMB", int, 8192, _positive, "must be positive") * MIB,
        max_member_bytes=upload.get("MaxMemberSizeMB", int, 2048, _positive, "must be positive") * MIB,
    )
    upload.done()

    transcoding = root.section("Transcoding")
    syntaxes = transcoding.get("TranscodableSyntaxes", list, list(UNCOMPRESSED_SYNTAXES),
                               lambda v: set(v) <= set(UNCOMPRESSED_SYNTAXES),
                               f"must list only uncompressed syntaxes {', '.join(UNCOMPRESSED_SYNTAXES)}")
    transcode_settings = TranscodeSettings(
        target=transcoding.get("Target", str, "htj2k", lambda v: v in ("htj2k", "j2k", "none"),
                               "must be 'htj2k', 'j2k' or 'none'"),
        verify=transcoding.get("Verify", bool, True),
        transcodable_syntaxes=frozenset(syntaxes),
        min_pixel_bytes=transcoding.get("MinPixelBytes", int, 0, lambda v: v >= 0, "must be 0 or more"),
        fallback_to_j2k=transcoding.get("FallbackToJ2K", bool, True),
        frame_threads=transcoding.get("FrameThreads", int, 2, _positive, "must be positive"),
    )
    transcoding.done()

    root.done()
    return Settings(directory_settings, upload_settings, transcode_settings)
