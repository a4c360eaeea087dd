"""The plugin's one configuration section ("NeuroNova" in orthanc.json), parsed once into frozen objects.

Unknown keys and bad values raise ConfigError naming the key, which stops the plugin at start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .errors import ConfigError
from .nifti.service import NiftiSettings
from .reconcile import ReconcileSettings
from .storage.area import StorageSettings
from .storage.background import BackgroundSettings
from .storage.container import PACKABLE_SYNTAXES, PackSettings

SECTION = "NeuroNova"
BUNDLED_SEED = os.path.join(os.path.dirname(__file__), "data", "demo_patients.json")
MIB = 1024 * 1024


@dataclass(frozen=True)
class FhirSettings:
    """NeuroNova.Directory.Fhir: the hospital EMR's FHIR R4 server (Backend "fhir")."""

    base_url: str
    mrn_system: str  # the identifier system of the hospital's canonical MRN
    auth_type: str = "none"  # none | bearer | basic
    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    issuer_systems: tuple[tuple[str, str], ...] = ()  # (DICOM Issuer of Patient ID, FHIR identifier system)
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    cache_seconds: float = 60.0  # patients found
    miss_cache_seconds: float = 10.0  # identifiers the EMR does not know
    retry_after_seconds: float = 10.0  # after a failure, fail at once for this long instead of waiting again


@dataclass(frozen=True)
class DirectorySettings:
    backend: str = "embedded"
    database: str = ""  # SQLite file of the embedded registry
    seed_file: str = BUNDLED_SEED
    search_max_limit: int = 500
    fhir: FhirSettings | None = None


@dataclass(frozen=True)
class UploadSettings:
    max_upload_bytes: int = 1024 * MIB  # one request body
    max_zip_members: int = 10000
    max_unzipped_bytes: int = 8192 * MIB  # sum of a ZIP's members once inflated: the zip-bomb guard
    max_member_bytes: int = 2048 * MIB
    max_inflated_bytes: int = 512 * MIB  # a deflated DICOM file once inflated (280 kB can inflate to 1.35 GB)


@dataclass(frozen=True)
class DicomWebSettings:
    """What the plugin reads of the DICOMweb plugin's own section ("DicomWeb"), which it does not check."""

    enabled: bool = True  # "Enable": the DICOMweb plugin registers its routes
    root: str = "/dicom-web/"  # "Root", with a leading and a trailing slash
    host: str = ""  # "Host": the public host of Content-Location URLs (else Forwarded / Host headers)
    ssl: bool = False  # "Ssl": https in Content-Location URLs

    @classmethod
    def from_orthanc(cls, section: object) -> "DicomWebSettings":
        section = section if isinstance(section, dict) else {}
        root = str(section.get("Root", "/dicom-web/") or "")
        root = root if root.startswith("/") else "/" + root
        root = root if root.endswith("/") else root + "/"
        return cls(enabled=section.get("Enable", True) is not False, root=root,
                   host=str(section.get("Host", "") or ""), ssl=section.get("Ssl", False) is True)


@dataclass(frozen=True)
class ViewerSettings:
    """NeuroNova.Viewer: the OHIF Viewer under /neuronova/viewer/."""

    enabled: bool = True
    directory: str = ""  # an OHIF dist/ folder; "" for the one `make setup` installs


@dataclass(frozen=True)
class SharedStateSettings:
    """NeuroNova.SharedState: where the claims, the history and the embedded registry live. PostgreSQL
    (Backend "postgresql", or "auto" with Orthanc's own index in PostgreSQL) for several servers on one
    index; SQLite under the storage folder for one server."""

    backend: str = "sqlite"  # the backend in force: "sqlite" or "postgresql"
    connection: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # libpq keywords (password inside)
    pool_size: int = 4
    server: str = ""  # names this server in the history rows: DatabaseServerIdentifier, else Name


_LIBPQ_KEYS = (("Host", "host"), ("Port", "port"), ("Database", "dbname"), ("Username", "user"),
               ("Password", "password"))


def _shared_state_settings(section: "_Section", orthanc_config: dict) -> SharedStateSettings:
    backend = section.get("Backend", str, "auto", lambda v: v in ("auto", "sqlite", "postgresql"),
                          "must be 'auto', 'sqlite' or 'postgresql'")
    uri = section.get("ConnectionUri", str, "", lambda v: v.startswith(("postgresql://", "postgres://")),
                      "must be a postgresql:// URI")
    pool_size = section.get("PoolSize", int, 4, lambda v: 1 <= v <= 100, "must be between 1 and 100")
    server = section.get("ServerName", str, "")
    section.done()
    orthanc_pg = orthanc_config.get("PostgreSQL")
    orthanc_pg = orthanc_pg if isinstance(orthanc_pg, dict) else {}
    if backend == "auto":
        backend = "postgresql" if orthanc_pg.get("EnableIndex") is True else "sqlite"
    server = (server or str(orthanc_config.get("DatabaseServerIdentifier", "") or "")
              or str(orthanc_config.get("Name", "") or "") or "orthanc")
    if backend == "sqlite":
        return SharedStateSettings(server=server)
    if uri:
        connection: tuple = (("conninfo", uri),)
    elif isinstance(orthanc_pg.get("ConnectionUri"), str) and orthanc_pg["ConnectionUri"]:
        connection = (("conninfo", orthanc_pg["ConnectionUri"]),)
    elif orthanc_pg:  # the same database as Orthanc's index, in a schema of the plugin's own ("neuronova")
        connection = tuple((keyword, str(orthanc_pg[key])) for key, keyword in _LIBPQ_KEYS
                           if orthanc_pg.get(key) not in (None, ""))
    else:
        raise ConfigError(f"{section.path}.ConnectionUri: required with Backend 'postgresql' when Orthanc's "
                          "configuration has no \"PostgreSQL\" section")
    return SharedStateSettings("postgresql", connection, pool_size, server)


@dataclass(frozen=True)
class WorklistSettings:
    """NeuroNova.Worklist: re-verification of what the EMR could not answer."""

    reverify_seconds: float = 300.0  # the schedule; 0: only when the EMR answers again
    retry_seconds: float = 15.0  # while studies wait for an unavailable EMR, how often it is asked again


@dataclass(frozen=True)
class Settings:
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    storage: StorageSettings = field(default_factory=lambda: StorageSettings(root="OrthancStorage"))
    background: BackgroundSettings = field(default_factory=BackgroundSettings)
    reconciliation: ReconcileSettings = field(default_factory=ReconcileSettings)
    history_database: str = ""
    ledger_database: str = ""
    dicomweb: DicomWebSettings = field(default_factory=DicomWebSettings)
    requests: RequestSettings = field(default_factory=lambda: RequestSettings(16))
    nifti: NiftiSettings = field(default_factory=NiftiSettings)
    viewer: ViewerSettings = field(default_factory=ViewerSettings)
    shared: SharedStateSettings = field(default_factory=SharedStateSettings)
    worklist: WorklistSettings = field(default_factory=WorklistSettings)
    authentication: bool = False  # Orthanc's HTTP authentication is on: request user names are checked ones


@dataclass(frozen=True)
class RequestSettings:
    """NeuroNova.Requests: how many plugin requests run at once (the rest get 503 with Retry-After)."""

    concurrent: int  # "Concurrent"; by default a third of Orthanc's HttpThreadsCount (a route may need a second)
    retry_after: int = 2  # "RetryAfterSeconds"


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


def _seconds(section: _Section, key: str, default: float, allow_zero: bool = False) -> float:
    value = section.get(key, object, default,
                        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0),
                        "must be a number of seconds, 0 or more" if allow_zero else "must be a positive number of seconds")
    return float(value)


def _fhir_settings(fhir: _Section, required: bool) -> FhirSettings | None:
    """NeuroNova.Directory.Fhir; BaseUrl and MrnSystem are required when Backend is "fhir"."""
    base_url = fhir.get("BaseUrl", str, "", lambda v: v.startswith(("http://", "https://")),
                        "must be an http:// or https:// URL")
    mrn_system = fhir.get("MrnSystem", str, "")
    auth = fhir.section("Auth")
    auth_type = auth.get("Type", str, "none", lambda v: v in ("none", "bearer", "basic"),
                         "must be 'none', 'bearer' or 'basic'")
    token, username, password = auth.get("Token", str, ""), auth.get("Username", str, ""), auth.get("Password", str, "")
    auth.done()
    issuers = fhir.get("IssuerSystems", dict, {}, lambda v: all(isinstance(s, str) and s for s in v.values()),
                       "must map DICOM issuer texts to FHIR identifier system URIs")
    settings = dict(
        connect_timeout=_seconds(fhir, "ConnectTimeoutSeconds", 3.0),
        read_timeout=_seconds(fhir, "ReadTimeoutSeconds", 10.0),
        cache_seconds=_seconds(fhir, "CacheSeconds", 60.0, allow_zero=True),
        miss_cache_seconds=_seconds(fhir, "MissCacheSeconds", 10.0, allow_zero=True),
        retry_after_seconds=_seconds(fhir, "RetryAfterSeconds", 10.0, allow_zero=True),
    )
    fhir.done()
    if not required:
        return None
    for key, value in (("BaseUrl", base_url), ("MrnSystem", mrn_system)):
        if not value.strip():
            raise ConfigError(f"{fhir.path}.{key}: required when NeuroNova.Directory.Backend is 'fhir'")
    if auth_type == "bearer" and not token:
        raise ConfigError(f"{auth.path}.Token: required when {auth.path}.Type is 'bearer'")
    if auth_type == "basic" and not username:
        raise ConfigError(f"{auth.path}.Username: required when {auth.path}.Type is 'basic'")
    return FhirSettings(base_url=base_url.strip(), mrn_system=mrn_system.strip(), auth_type=auth_type, token=token,
                        username=username, password=password, issuer_systems=tuple(issuers.items()), **settings)


def load_settings(orthanc_config: dict) -> Settings:
    """Build Settings from Orthanc's whole configuration (its storage folder gives default paths)."""
    root = _Section(orthanc_config.get(SECTION, {}), SECTION)
    storage = orthanc_config.get("StorageDirectory", "OrthancStorage")

    directory = root.section("Directory")
    directory_settings = DirectorySettings(
        backend=directory.get("Backend", str, "embedded", lambda v: v in ("embedded", "fhir"),
                              "must be 'embedded' or 'fhir'"),
        database=directory.get("Database", str, "") or os.path.join(storage, "neuronova", "registry.sqlite"),
        seed_file=directory.get("SeedFile", str, "") or BUNDLED_SEED,
        search_max_limit=directory.get("SearchMaxLimit", int, 500, _positive, "must be positive"),
    )
    fhir_settings = _fhir_settings(directory.section("Fhir"), required=directory_settings.backend == "fhir")
    directory_settings = replace(directory_settings, fhir=fhir_settings)
    directory.done()

    upload = root.section("Upload")
    upload_settings = UploadSettings(
        max_upload_bytes=upload.get("MaxUploadSizeMB", int, 1024, _positive, "must be positive") * MIB,
        max_zip_members=upload.get("MaxZipMembers", int, 10000, _positive, "must be positive"),
        max_unzipped_bytes=upload.get("MaxUnzippedSizeMB", int, 8192, _positive, "must be positive") * MIB,
        max_member_bytes=upload.get("MaxMemberSizeMB", int, 2048, _positive, "must be positive") * MIB,
        max_inflated_bytes=upload.get("MaxInflatedSizeMB", int, 512, _positive, "must be positive") * MIB,
    )
    upload.done()

    transcoding = root.section("Transcoding")
    for retired, why in (("Verify", "verification is always on: every container is restored and compared"
                                    " byte for byte before it replaces the received file"),):
        if retired in transcoding.raw:
            raise ConfigError(f"{transcoding.path}.{retired}: no longer a setting: {why}")
    syntaxes = transcoding.get("TranscodableSyntaxes", list, sorted(PACKABLE_SYNTAXES),
                               lambda v: set(v) <= PACKABLE_SYNTAXES,
                               f"must list only {', '.join(sorted(PACKABLE_SYNTAXES))}")
    pack_settings = PackSettings(
        target=transcoding.get("Target", str, "htj2k", lambda v: v in ("htj2k", "j2k", "none"),
                               "must be 'htj2k', 'j2k' or 'none'"),
        syntaxes=frozenset(syntaxes),
        min_pixel_bytes=transcoding.get("MinPixelBytes", int, 0, lambda v: v >= 0, "must be 0 or more"),
        max_object_bytes=transcoding.get("MaxObjectSizeMB", int, 2048, _positive, "must be positive") * MIB,
        fallback_to_j2k=transcoding.get("FallbackToJ2K", bool, True),
        frame_threads=transcoding.get("FrameThreads", int, 2, _positive, "must be positive"),
    )
    when = transcoding.get("When", str, "ingest", lambda v: v in ("ingest", "background"),
                           "must be 'ingest' or 'background'")
    background = transcoding.section("Background")
    background_settings = BackgroundSettings(
        threads=background.get("Threads", int, 2, _positive, "must be positive"),
        max_per_second=float(background.get("MaxFilesPerSecond", int, 0, lambda v: v >= 0, "must be 0 or more")),
    )
    background.done()
    transcoding.done()
    storage_settings = StorageSettings(root=storage, when=when, sync=orthanc_config.get("SyncStorageArea", False) is True,
                                       pack=pack_settings)

    reconciliation = root.section("Reconciliation")
    if "CallingAETs" in reconciliation.raw:
        raise ConfigError(f"{reconciliation.path}.CallingAETs: no longer a setting: Orthanc rewrites an instance "
                          "before it tells the calling AE title, so reconciliation applies to every sender")
    reconcile_settings = ReconcileSettings(
        enabled=reconciliation.get("Enabled", bool, True),
        unknown_patient=reconciliation.get("UnknownPatient", str, "accept", lambda v: v in ("accept", "reject"),
                                           "must be 'accept' or 'reject'"),
        study_conflict=reconciliation.get("StudyConflict", str, "follow", lambda v: v in ("follow", "reject"),
                                          "must be 'follow' or 'reject'"),
        cache_seconds=float(reconciliation.get("CacheSeconds", int, 600, lambda v: v >= 0, "must be 0 or more")),
        reject_status=reconciliation.get("RejectStatus", int, 0xC000, lambda v: 0xA000 <= v <= 0xCFFF,
                                         "must be a DIMSE failure status (0xA000 to 0xCFFF)"),
    )
    reconciliation.done()

    requests_section = root.section("Requests")
    http_threads = orthanc_config.get("HttpThreadsCount", 50)
    http_threads = http_threads if isinstance(http_threads, int) and http_threads > 0 else 50
    request_settings = RequestSettings(
        concurrent=requests_section.get("Concurrent", int, max(2, http_threads // 3),
                                        lambda v: 1 <= v <= max(1, http_threads // 2),
                                        f"must be between 1 and half of HttpThreadsCount ({http_threads // 2})"),
        retry_after=requests_section.get("RetryAfterSeconds", int, 2, _positive, "must be positive"),
    )
    requests_section.done()

    nifti = root.section("Nifti")
    nifti_settings = NiftiSettings(
        float_companion=nifti.get("FloatCompanion", bool, False),
        max_dimension=nifti.get("MaxDimension", int, 2048, lambda v: 1 <= v <= 65535, "must be 1 to 65535"),
        max_voxels=nifti.get("MaxVoxels", int, 256 * MIB, _positive, "must be positive"),
        max_inflated_bytes=nifti.get("MaxInflatedSizeMB", int, 4096, _positive, "must be positive") * MIB,
    )
    nifti.done()

    history = root.section("History")
    history_database = history.get("Database", str, "") or os.path.join(storage, "neuronova", "history.sqlite")
    history.done()

    viewer = root.section("Viewer")
    viewer_settings = ViewerSettings(enabled=viewer.get("Enabled", bool, True),
                                     directory=viewer.get("Directory", str, ""))
    viewer.done()
    shared = _shared_state_settings(root.section("SharedState"), orthanc_config)
    ledger_name = "storage.sqlite" if shared.backend == "sqlite" else f"storage-{_file_safe(shared.server)}.sqlite"

    worklist = root.section("Worklist")
    worklist_settings = WorklistSettings(reverify_seconds=_seconds(worklist, "ReverifySeconds", 300.0, allow_zero=True),
                                         retry_seconds=_seconds(worklist, "RetrySeconds", 15.0))
    worklist.done()

    root.done()
    for key, wanted in (("StorageCompression", False), ("IngestTranscoding", "")):
        if orthanc_config.get(key, wanted) not in (wanted, None, False, ""):
            raise ConfigError(f"{key}: must stay off with the NeuroNova plugin: it compresses in the storage "
                              "area itself, where Orthanc's core never looks")
    return Settings(directory_settings, upload_settings, storage_settings, background_settings, reconcile_settings,
                    history_database, os.path.join(storage, "neuronova", ledger_name),
                    DicomWebSettings.from_orthanc(orthanc_config.get("DicomWeb")), request_settings,
                    nifti_settings, viewer_settings, shared, worklist_settings, _authentication(orthanc_config))


def _authentication(orthanc_config: dict) -> bool:
    """Orthanc's own rule: "AuthenticationEnabled", by default on when "RemoteAccessAllowed" is."""
    enabled = orthanc_config.get("AuthenticationEnabled")
    if isinstance(enabled, bool):
        return enabled
    return orthanc_config.get("RemoteAccessAllowed", False) is True


def _file_safe(name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in name)[:64]
