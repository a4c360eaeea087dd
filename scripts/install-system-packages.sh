#!/bin/sh
# Install the Debian packages the project needs, only those missing (needs root on a fresh machine).
set -eu
# chromium: the headless browser of the UI tests (tests/browser), driven by pip playwright;
# fonts-nanum: Hangul glyphs for the Korean UI in its screenshots (without it Chromium draws boxes).
# dcm2niix and dicom3tools (dciodvfy): a reader and the validator of what the NIfTI import stores (tests);
# postgresql and orthanc-postgresql: the scale-out tests' real PostgreSQL server and Orthanc's index in it.
PACKAGES="orthanc orthanc-python orthanc-gdcm orthanc-dicomweb dcmtk python3-venv chromium fonts-nanum dcm2niix \
dicom3tools postgresql orthanc-postgresql ${EXTRA_PACKAGES:-}"
missing=""
for package in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
[ -z "$missing" ] && exit 0
echo "Installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update
# Debian's orthanc postinst tries to start a service; the project starts Orthanc itself.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $missing
