#!/bin/sh
# Run Orthanc in the foreground with the NeuroNova plugin. Honours HTTP_PORT, DICOM_PORT,
# DATA_DIR and CONFIG so that several instances can run side by side.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HTTP_PORT=${HTTP_PORT:-8042}
DICOM_PORT=${DICOM_PORT:-4242}
DATA_DIR=${DATA_DIR:-$ROOT/data}
CONFIG=${CONFIG:-$ROOT/orthanc.json}

mkdir -p "$DATA_DIR"
RUNTIME_CONFIG="$DATA_DIR/orthanc.runtime.json"
"$ROOT/.venv/bin/python" "$ROOT/scripts/runtime_config.py" --config "$CONFIG" \
    --http-port "$HTTP_PORT" --dicom-port "$DICOM_PORT" --data-dir "$DATA_DIR" --out "$RUNTIME_CONFIG"

# Orthanc embeds Debian's /usr/bin/python3: give it the venv's packages and the plugin package.
PYTHONPATH="$ROOT/plugin:$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export PYTHONPATH
echo "NeuroNova: Orthanc on http://127.0.0.1:$HTTP_PORT/ (DICOM port $DICOM_PORT), data in $DATA_DIR"
exec Orthanc "$RUNTIME_CONFIG"
