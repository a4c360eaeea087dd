"""Static checks of the Docker deployment files: Dockerfile, docker-compose.yml and docker/orthanc.json.

No Docker engine is needed (none exists on the development machines or in CI): the files are parsed
and checked against the repository and against the project's own orthanc.json. docker-compose.yml is
read with a small block-YAML reader below, so that the tests need no PyYAML.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKER_CONFIG = REPO / "docker" / "orthanc.json"
PROJECT_CONFIG = REPO / "orthanc.json"
SERVICE = "orthanc"
ORTHANC_DATA = "/var/lib/orthanc/db"  # where the orthancteam/orthanc image keeps its storage


# --------------------------------------------------------------------------------------------------
# A reader for the block-style YAML subset that compose files use: mappings, sequences, plain or
# quoted scalars, [flow, lists], comments. Anything else raises, naming the line.

_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[^\s'"\[\]{}#&*!|>%@`-][^:]*?|-[^\s:][^:]*?)\s*:(?:\s+(.*))?$""")


def _strip_comment(line: str) -> str:
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
    return line


def _scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part) for part in text[1:-1].split(",") if part.strip()]
    if text.startswith(("{", "&", "*", "!", "|", ">")):
        raise ValueError(f"unsupported YAML value: {text!r}")
    return None if text in ("", "~", "null") else text


def _lines(text: str) -> list[tuple[int, str]]:
    lines = []
    for raw in text.splitlines():
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"tab in YAML indentation: {raw!r}")
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        indent, content = len(line) - len(line.lstrip(" ")), line.strip()
        # "- key: value" opens a mapping inside a sequence: split it into "-" and "key: value".
        if content.startswith("- ") and _KEY.match(content[2:].strip()):
            lines.append((indent, "-"))
            lines.append((indent + 2, content[2:].strip()))
        else:
            lines.append((indent, content))
    return lines


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


def _parse(lines: list[tuple[int, str]], index: int, indent: int):
    if _is_item(lines[index][1]):
        items = []
        while index < len(lines) and lines[index][0] == indent and _is_item(lines[index][1]):
            rest = lines[index][1][1:].strip()
            index += 1
            if rest:
                items.append(_scalar(rest))
            elif index < len(lines) and lines[index][0] > indent:
                value, index = _parse(lines, index, lines[index][0])
                items.append(value)
            else:
                items.append(None)
        return items, index
    mapping = {}
    while index < len(lines) and lines[index][0] == indent:
        match = _KEY.match(lines[index][1])
        if not match:
            raise ValueError(f"unsupported YAML line: {lines[index][1]!r}")
        key, rest = _scalar(match.group(1)), match.group(2)
        index += 1
        if rest is not None and rest.strip():
            mapping[key] = _scalar(rest)
        elif index < len(lines) and (lines[index][0] > indent
                                     or (lines[index][0] == indent and _is_item(lines[index][1]))):
            mapping[key], index = _parse(lines, index, lines[index][0])
        else:
            mapping[key] = None
    return mapping, index


def load_yaml(text: str):
    lines = _lines(text)
    if not lines:
        return None
    value, index = _parse(lines, 0, lines[0][0])
    if index != len(lines):
        raise ValueError(f"unexpected indentation at YAML line: {lines[index][1]!r}")
    return value


def test_yaml_reader_handles_the_compose_shapes():
    text = """
# comment
services:
  web:
    build: {context}
    ports:
      - "8042:8042"   # trailing comment
      - 4242:4242
    environment:
      - A=1
    volumes:
    - type: bind
      source: ./x
      target: /y
    command: ["a", "b"]
volumes:
  data:
""".replace("{context}", "'.'")
    assert load_yaml(text) == {
        "services": {"web": {
            "build": ".",
            "ports": ["8042:8042", "4242:4242"],
            "environment": ["A=1"],
            "volumes": [{"type": "bind", "source": "./x", "target": "/y"}],
            "command": ["a", "b"],
        }},
        "volumes": {"data": None},
    }


# --------------------------------------------------------------------------------------------------
# Dockerfile reading

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comment lines dropped (as Docker does)."""
    instructions, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, arguments = current.partition(" ")
        instructions.append((word.upper(), arguments.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"
    return instructions


def split_flags(arguments: str) -> tuple[list[str], str]:
    flags = []
    while arguments.startswith("--"):
        flag, _, arguments = arguments.partition(" ")
        flags.append(flag)
        arguments = arguments.lstrip()
    return flags, arguments


def copy_instruction(arguments: str) -> tuple[list[str], list[str], str]:
    """(flags, sources, destination) of a COPY or ADD."""
    flags, rest = split_flags(arguments)
    paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    assert len(paths) >= 2, f"COPY/ADD needs a source and a destination: {arguments!r}"
    return flags, paths[:-1], paths[-1]


def env_assignments(arguments: str) -> dict[str, str]:
    tokens = shlex.split(arguments)
    if tokens and "=" not in tokens[0]:  # legacy form: ENV NAME value with spaces
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def substitute_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), text)


def image_reference(reference: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference such as orthancteam/orthanc:25.2.0."""
    name, _, digest = reference.partition("@")
    tag = None
    last_colon = name.rfind(":")
    if last_colon > name.rfind("/"):
        name, tag = name[:last_colon], name[last_colon + 1:]
    return name, tag, digest or None


def normalized(path: str) -> str:
    return str(PurePosixPath(path.strip()).as_posix()).removeprefix("./").rstrip("/") or "."


# --------------------------------------------------------------------------------------------------
# Fixtures

@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml is missing"
    document = load_yaml(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def service(compose) -> dict:
    assert list(compose["services"]) == [SERVICE], "docker-compose.yml must define exactly one service, orthanc"
    return compose["services"][SERVICE]


@pytest.fixture(scope="module")
def build(service) -> tuple[Path, Path]:
    """(build context, Dockerfile) of the orthanc service, as absolute paths."""
    spec = service.get("build")
    assert spec, "the orthanc service must be built from the Dockerfile (build:)"
    if isinstance(spec, str):
        spec = {"context": spec}
    context = (COMPOSE_FILE.parent / spec.get("context", ".")).resolve()
    dockerfile = (context / spec.get("dockerfile", "Dockerfile")).resolve()
    return context, dockerfile


@pytest.fixture(scope="module")
def instructions(build) -> list[tuple[str, str]]:
    _, dockerfile = build
    assert dockerfile.is_file(), f"{dockerfile} is missing"
    return dockerfile_instructions(dockerfile.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def copies(instructions) -> list[tuple[list[str], list[str], str]]:
    return [copy_instruction(arguments) for word, arguments in instructions if word in ("COPY", "ADD")]


@pytest.fixture(scope="module")
def image_env(instructions) -> dict[str, str]:
    env = {}
    for word, arguments in instructions:
        if word == "ENV":
            env.update(env_assignments(arguments))
    return env


@pytest.fixture(scope="module")
def service_env(service) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


@pytest.fixture(scope="module")
def docker_config() -> dict:
    assert DOCKER_CONFIG.is_file(), "docker/orthanc.json is missing"
    with DOCKER_CONFIG.open(encoding="utf-8") as config_file:
        return json.load(config_file)


@pytest.fixture(scope="module")
def project_config() -> dict:
    with PROJECT_CONFIG.open(encoding="utf-8") as config_file:
        return json.load(config_file)


def plugin_destination(copies) -> str:
    destinations = [dest for flags, sources, dest in copies
                    if not any(flag.startswith("--from") for flag in flags)
                    and any(normalized(source) == "plugin" for source in sources)]
    assert len(destinations) == 1, "the Dockerfile must COPY plugin/ exactly once"
    return destinations[0].rstrip("/")


# --------------------------------------------------------------------------------------------------
# Paths the files reference exist

def test_build_context_and_dockerfile_exist(build):
    context, dockerfile = build
    assert context.is_dir(), f"build context {context} does not exist"
    assert dockerfile.is_file(), f"Dockerfile {dockerfile} does not exist"
    assert context == REPO, "the build context must be the repository root (the Dockerfile copies plugin/ etc.)"


def test_every_copy_source_exists_in_the_build_context(build, copies):
    context, _ = build
    assert copies, "the Dockerfile copies nothing"
    for flags, sources, _ in copies:
        if any(flag.startswith("--from") for flag in flags):
            continue  # copied from another build stage or image, not from the repository
        for source in sources:
            if re.match(r"^[a-z]+://", source):
                continue  # ADD from a URL
            assert not PurePosixPath(source).is_absolute() and ".." not in PurePosixPath(source).parts, \
                f"COPY source {source!r} must stay inside the build context"
            if any(char in source for char in "*?["):
                assert list(context.glob(source)), f"COPY source {source!r} matches nothing"
            else:
                assert (context / source).exists(), f"COPY source {source!r} does not exist in {context}"


def test_every_bind_mount_in_compose_exists(service):
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source = volume.get("source") if volume.get("type") == "bind" else None
        else:
            source = volume.split(":")[0] if ":" in volume else None
            if source and not source.startswith((".", "/", "~")):
                source = None  # a named volume
        if source:
            assert not source.startswith("~"), f"bind mount {source!r} depends on the user's home"
            path = Path(source) if source.startswith("/") else COMPOSE_FILE.parent / source
            assert path.exists(), f"bind-mounted path {source!r} does not exist"


def test_compose_env_files_exist(service):
    env_files = service.get("env_file") or []
    for env_file in [env_files] if isinstance(env_files, str) else env_files:
        path = env_file if isinstance(env_file, str) else env_file.get("path")
        required = isinstance(env_file, str) or env_file.get("required", "true") != "false"
        if required:
            assert (COMPOSE_FILE.parent / path).is_file(), f"env_file {path!r} does not exist"


# --------------------------------------------------------------------------------------------------
# Dockerfile

def test_base_image_is_a_pinned_orthancteam_image(instructions):
    args, stages, external = {}, set(), []
    for word, arguments in instructions:
        if word == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            args[name.strip()] = default.strip().strip("'\"")
        elif word == "FROM":
            _, rest = split_flags(arguments)
            parts = substitute_args(rest, args).split()
            reference = parts[0]
            if reference.lower() not in stages and reference != "scratch":
                external.append(reference)
            if len(parts) == 3 and parts[1].lower() == "as":
                stages.add(parts[2].lower())
    assert external, "the Dockerfile has no FROM"
    for reference in external:
        name, tag, digest = image_reference(reference)
        assert tag or digest, f"base image {reference!r} is not pinned: give it a tag"
        assert tag != "latest", f"base image {reference!r} uses the moving 'latest' tag"
    assert any(image_reference(ref)[0] == "orthancteam/orthanc" for ref in external), \
        "the image must be based on orthancteam/orthanc"


def test_dependencies_are_installed_into_the_image_python(copies, instructions):
    assert any(normalized(source) == "requirements.txt" for flags, sources, _ in copies for source in sources), \
        "the Dockerfile must COPY requirements.txt"
    runs = [arguments for word, arguments in instructions if word == "RUN"]
    installs = [run for run in runs if "pip install" in run and "requirements.txt" in run and "-r" in run.split()]
    assert installs, "the Dockerfile must pip install -r requirements.txt"
    # The image's Python is Debian's system Python, marked externally managed (PEP 668).
    assert all("--break-system-packages" in run for run in installs)


def test_plugin_is_on_the_image_pythonpath(copies, image_env, service_env):
    destination = plugin_destination(copies)
    assert destination == "/opt/neuronova/plugin"
    pythonpath = service_env.get("PYTHONPATH") or image_env.get("PYTHONPATH", "")
    assert destination in [entry.rstrip("/") for entry in pythonpath.split(":")], \
        f"PYTHONPATH ({pythonpath!r}) must include {destination}"


def test_docker_config_is_installed_where_the_image_reads_it(copies):
    targets = [dest for flags, sources, dest in copies for source in sources
               if normalized(source) == "docker/orthanc.json"]
    assert targets, "the Dockerfile must COPY docker/orthanc.json"
    for target in targets:
        # The image's entrypoint merges every /etc/orthanc/*.json.
        assert target.rstrip("/") == "/etc/orthanc" or re.fullmatch(r"/etc/orthanc/[^/]+\.json", target), target


def test_the_plugins_the_project_needs_are_enabled(image_env, service_env, docker_config):
    env = {**image_env, **service_env}
    for variable in ("PYTHON_PLUGIN_ENABLED", "DICOM_WEB_PLUGIN_ENABLED"):
        assert env.get(variable) == "true", f"{variable} must be true"
    # GDCM 1.8 (the image's) kills Orthanc 1.12 on the transcoding DICOMweb asks of it
    assert env.get("GDCM_PLUGIN_ENABLED") == "false"
    assert "PythonScript" in docker_config and docker_config.get("DicomWeb", {}).get("Enable") is True
    # orthanc-python 5.0 in the image: SDK calls release the GIL (the storage area needs it)
    assert docker_config.get("Python", {}).get("AllowThreads") is True


# --------------------------------------------------------------------------------------------------
# docker/orthanc.json

def test_neuronova_section_matches_the_project_config_except_the_database(docker_config, project_config):
    docker_section = json.loads(json.dumps(docker_config.get("NeuroNova")))
    project_section = json.loads(json.dumps(project_config.get("NeuroNova")))
    assert isinstance(docker_section, dict) and isinstance(project_section, dict)
    docker_database = docker_section["Directory"].pop("Database")
    project_section["Directory"].pop("Database")
    assert docker_section == project_section, "docker/orthanc.json's NeuroNova section drifted from orthanc.json's"
    assert docker_database == "/var/lib/orthanc/db/neuronova/registry.sqlite"


def test_storage_is_in_the_persistent_volume(docker_config, service, compose):
    assert docker_config["StorageDirectory"] == ORTHANC_DATA
    assert docker_config["IndexDirectory"] == ORTHANC_DATA
    assert docker_config["NeuroNova"]["Directory"]["Database"].startswith(ORTHANC_DATA + "/")
    named = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume":
                named.append((volume.get("source"), volume.get("target")))
        elif ":" in volume and not volume.startswith((".", "/", "~")):
            source, target = volume.split(":")[:2]
            named.append((source, target))
    mounted = [source for source, target in named if target and target.rstrip("/") == ORTHANC_DATA]
    assert mounted, f"a named volume must be mounted on {ORTHANC_DATA}"
    assert mounted[0] in (compose.get("volumes") or {}), f"volume {mounted[0]!r} is not declared under volumes:"


def test_python_script_is_where_the_dockerfile_copies_the_plugin(docker_config, copies):
    destination = plugin_destination(copies)
    script = PurePosixPath(docker_config["PythonScript"])
    assert script.is_absolute()
    if not script.is_relative_to(destination):
        pytest.fail(f"PythonScript {script} is not under {destination}, where the Dockerfile copies plugin/")
    relative = script.relative_to(destination)
    assert (REPO / "plugin" / relative).is_file(), f"plugin/{relative} does not exist"


def test_authentication_is_on(docker_config, service_env):
    assert docker_config.get("RemoteAccessAllowed") is True, "the container is reached from outside"
    auth = docker_config.get("AuthenticationEnabled")
    if "ORTHANC__AUTHENTICATION_ENABLED" in service_env:
        auth = service_env["ORTHANC__AUTHENTICATION_ENABLED"].lower() == "true"
    assert auth is True, "HTTP authentication must be enabled"
    users = docker_config.get("RegisteredUsers") or json.loads(service_env.get("ORTHANC__REGISTERED_USERS", "{}"))
    assert isinstance(users, dict) and users, "no user is registered"
    assert all(user and password for user, password in users.items())


def test_credentials_come_from_the_environment_with_defaults(docker_config, service_env):
    text = DOCKER_CONFIG.read_text(encoding="utf-8")
    # The image substitutes $NAME / ${NAME} / ${NAME:-default} in the whole file: only deliberate references.
    references = re.findall(r"\$\{(\w+)(?::-[^}]*)?\}", text)
    assert text.count("$") == len(references), "docker/orthanc.json has a '$' that is not a ${VAR} reference"
    user_references = set(re.findall(r"\$\{(\w+)", json.dumps(docker_config.get("RegisteredUsers", {}))))
    assert user_references, "RegisteredUsers must come from the environment"
    for variable in references:
        assert variable in service_env, f"docker-compose.yml must pass {variable} to the container"
        assert re.fullmatch(r"\$\{%s:-[^}]+\}" % variable, service_env[variable]), \
            f"{variable} in docker-compose.yml must read ${{{variable}:-default}}"


# --------------------------------------------------------------------------------------------------
# docker-compose.yml

def test_compose_publishes_http_and_dicom_ports(service):
    targets = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            targets.add(str(port.get("target")))
        else:
            targets.add(str(port).split("/")[0].rsplit(":", 1)[-1])
    assert {"8042", "4242"} <= targets


def test_compose_restarts_unless_stopped(service):
    assert service.get("restart") == "unless-stopped"


def test_dicom_stores_are_accepted_only_from_listed_modalities(docker_config, project_config):
    """Orthanc has no DICOM bind address: its port listens on every interface, so both shipped
    configurations refuse C-STORE from senders they do not list, their IP address checked."""
    for config in (docker_config, project_config):
        assert config["DicomAlwaysAllowStore"] is False
        assert config["DicomCheckModalityHost"] is True
        for modality in config["DicomModalities"].values():
            assert modality["Host"].replace(".", "").isdigit(), "DicomCheckModalityHost needs IP addresses"


# --------------------------------------------------------------------------------------------------
# docker-compose.scale-out.yml: PostgreSQL, two Orthancs, nginx, one storage volume (issue 12)

SCALE_OUT_FILE = REPO / "docker-compose.scale-out.yml"
SCALE_OUT_CONFIG = REPO / "docker" / "scale-out.json"
SCALE_OUT_NGINX = REPO / "docker" / "nginx-scale-out.conf"
ORTHANCS = ("orthanc-1", "orthanc-2")


@pytest.fixture(scope="module")
def scale_out() -> dict:
    assert SCALE_OUT_FILE.is_file(), "docker-compose.scale-out.yml is missing"
    document = load_yaml(SCALE_OUT_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def scale_out_config() -> dict:
    with SCALE_OUT_CONFIG.open(encoding="utf-8") as config_file:
        return json.load(config_file)


def _mounts(service_spec: dict) -> dict[str, str]:
    """{target: source} of a service's volumes (short syntax)."""
    mounts = {}
    for volume in service_spec.get("volumes") or []:
        source, target = volume.split(":")[:2]
        mounts[target.rstrip("/")] = source
    return mounts


def _environment(service_spec: dict) -> dict[str, str]:
    return {key: "" if value is None else str(value) for key, value in (service_spec.get("environment") or {}).items()}


def test_scale_out_has_postgresql_two_orthancs_and_a_balancer(scale_out):
    assert set(scale_out["services"]) == {"postgres", *ORTHANCS, "nginx"}
    for name in ("postgres", "nginx"):
        name_, tag, digest = image_reference(scale_out["services"][name]["image"])
        assert (tag or digest) and tag != "latest", f"{name}'s image must be pinned"
    first, second = (scale_out["services"][name] for name in ORTHANCS)
    assert first["build"]["context"] == "." and first["build"]["dockerfile"] == "Dockerfile"
    assert first["image"] == second["image"], "both Orthancs run the one image built from the Dockerfile"
    for name in ORTHANCS:
        assert scale_out["services"][name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_scale_out_orthancs_share_the_storage_volume_and_mount_the_postgresql_config(scale_out):
    storage = {_mounts(scale_out["services"][name])[ORTHANC_DATA] for name in ORTHANCS}
    assert len(storage) == 1 and storage <= set(scale_out.get("volumes") or {}), "one named storage volume for all"
    for name in ORTHANCS:
        source = _mounts(scale_out["services"][name])["/etc/orthanc/scale-out.json"]
        assert (REPO / source.removeprefix("./")).resolve() == SCALE_OUT_CONFIG
    nginx_source = _mounts(scale_out["services"]["nginx"])["/etc/nginx/nginx.conf"]
    assert (REPO / nginx_source.removeprefix("./")).resolve() == SCALE_OUT_NGINX


def test_scale_out_servers_are_named_apart_and_get_every_variable_their_config_reads(scale_out, docker_config,
                                                                                   scale_out_config):
    texts = DOCKER_CONFIG.read_text(encoding="utf-8") + SCALE_OUT_CONFIG.read_text(encoding="utf-8")
    needed = set(re.findall(r"\$\{(\w+)", texts))
    names = set()
    for name in ORTHANCS:
        env = _environment(scale_out["services"][name])
        assert needed <= set(env), f"{name} lacks {sorted(needed - set(env))}"
        names.add(env["ORTHANC_SERVER_ID"])
    assert len(names) == len(ORTHANCS), "each Orthanc needs its own DatabaseServerIdentifier"
    assert scale_out_config["DatabaseServerIdentifier"] == "${ORTHANC_SERVER_ID}"
    postgres_env = _environment(scale_out["services"]["postgres"])
    assert postgres_env["POSTGRES_PASSWORD"] == _environment(scale_out["services"]["orthanc-1"])["POSTGRES_PASSWORD"]


def test_scale_out_index_is_postgresql_without_its_lock_and_images_stay_in_the_volume(scale_out, docker_config,
                                                                                     scale_out_config):
    section = scale_out_config["PostgreSQL"]
    assert section["EnableIndex"] is True and section["EnableStorage"] is False and section["Lock"] is False
    assert section["Host"] == "postgres"
    postgres_env = _environment(scale_out["services"]["postgres"])
    assert (section["Database"], section["Username"]) == (postgres_env["POSTGRES_DB"], postgres_env["POSTGRES_USER"])
    # The image merges every /etc/orthanc/*.json: the added file may not redefine a key of docker/orthanc.json.
    assert not set(scale_out_config) & set(docker_config)
    from neuronova.config import load_settings  # the plugin puts its own state in PostgreSQL too
    merged = load_settings({**docker_config, **scale_out_config})
    assert merged.shared.backend == "postgresql" and merged.shared.server == "${ORTHANC_SERVER_ID}"


def test_scale_out_balancer_is_sticky_and_reaches_both_orthancs(scale_out):
    text = SCALE_OUT_NGINX.read_text(encoding="utf-8")
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", text)
    assert upstream, "nginx needs an upstream block"
    assert "ip_hash;" in upstream.group(2), "Orthanc's jobs live per server: routing must be sticky"
    assert set(re.findall(r"server\s+([\w-]+):8042;", upstream.group(2))) == set(ORTHANCS)
    assert f"proxy_pass http://{upstream.group(1)};" in text
    assert "listen 8042;" in text and "8042:8042" in scale_out["services"]["nginx"]["ports"]
    assert "X-Forwarded-Host $http_host" in text, "the plugin's Origin check compares with the forwarded host"
    dicom = [port.split(":")[0] for name in ORTHANCS for port in scale_out["services"][name]["ports"]]
    assert len(set(dicom)) == len(ORTHANCS), "each Orthanc publishes its own DICOM port"


def test_the_health_check_asks_the_plugin_with_the_image_credentials(copies, instructions, docker_config):
    checks = [arguments for word, arguments in instructions if word == "HEALTHCHECK"]
    assert len(checks) == 1, "the Dockerfile needs one HEALTHCHECK"
    command = json.loads(checks[0].split(" CMD ", 1)[1])
    assert command[0] == "python3" and len(command) == 2
    assert any(dest == command[1] and normalized(source) == "docker/healthcheck.py"
               for flags, sources, dest in copies for source in sources), "the HEALTHCHECK runs the copied script"
    script = (REPO / "docker" / "healthcheck.py").read_text(encoding="utf-8")
    # the same variables and defaults as the user the image's configuration registers
    assert docker_config["RegisteredUsers"] == {"${ORTHANC_USER:-admin}": "${ORTHANC_PASSWORD:-change-me}"}
    assert 'os.environ.get("ORTHANC_USER", "admin")' in script
    assert 'os.environ.get("ORTHANC_PASSWORD", "change-me")' in script
    assert f"127.0.0.1:{docker_config['HttpPort']}/neuronova/ready" in script
