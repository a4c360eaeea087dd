# make run  : install what is missing, then run Orthanc with the plugin (HTTP 8042, DICOM 4242, ./data)
# make test : install what is missing, then run the whole test suite against real servers
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: run test unit setup system-packages bench clean

run: setup
	exec scripts/run.sh

test: setup
	$(PYTHON) -m pytest tests

unit: setup
	$(PYTHON) -m pytest tests/unit

bench: setup
	$(PYTHON) bench/ingest_bench.py

setup: system-packages $(VENV)/.installed

system-packages:
	@EXTRA_PACKAGES="$(EXTRA_PACKAGES)" scripts/install-system-packages.sh

# The venv is made from Debian's /usr/bin/python3: the interpreter orthanc-python embeds.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	/usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) data
