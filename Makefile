# dicomnode — the two Quick-start commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Debian packages the test suite drives as real peers.
APT_PACKAGES := dcmtk orthanc orthanc-dicomweb dicom3tools postgresql libgdcm-tools docker-compose openssl chromium chromium-driver
PYTEST_ARGS ?=

VIEWER := tests/viewer

.PHONY: demo test install system-deps viewer-deps lint typecheck bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(STAMP)

# Without a GPU, take the CPU-capable torch/torchvision pair that lies on local disk
# first (PyPI's plain `torch` is a multi-GB CUDA download); with one, the range in
# pyproject.toml pulls a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	if ! command -v nvidia-smi >/dev/null; then $(PIP) install -q torch==2.14.1 torchvision==0.29.1; fi
	$(PIP) install -q -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/dicomnode demo

# Installs the real peers when run as root and one of them is missing. DCMTK's tools are
# recognised by their --version banner: pynetdicom's storescu in the venv has the same name.
system-deps:
	@missing=0; for tool in dciodvfy Orthanc docker-compose openssl chromium chromedriver; do command -v $$tool >/dev/null || missing=1; done; \
	for tool in storescu dsrdump; do dcmtk=0; for dir in $$(echo "$$PATH" | tr : ' ') /usr/bin; do \
	  "$$dir/$$tool" --version 2>/dev/null | grep -q '^\$$dcmtk:' && dcmtk=1; done; \
	  [ $$dcmtk = 1 ] || missing=1; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	if [ $$missing = 1 ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else echo "make test: missing $(APT_PACKAGES); install them (as root) first" >&2; exit 1; fi; \
	fi

# Readers we did not write, for tests/test_viewers.py: the Cornerstone3D adapters (npm ci,
# from the committed lock file) and the prebuilt OHIF viewer (its integrity pinned in
# tests/viewer/package.json). Node.js and npm come from Debian when root and missing.
viewer-deps: $(VIEWER)/node_modules/.installed $(VIEWER)/ohif-dist/.version

$(VIEWER)/node_modules/.installed: $(VIEWER)/package.json $(VIEWER)/package-lock.json
	@command -v npm >/dev/null || { if [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "make test: install Node.js and npm first" >&2; exit 1; fi; }
	cd $(VIEWER) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(VIEWER)/ohif-dist/.version: $(VIEWER)/package.json | $(VIEWER)/node_modules/.installed
	python3 $(VIEWER)/install_ohif.py

lint: install
	$(VENV)/bin/ruff check dicomnode tests bench train

typecheck: install
	$(VENV)/bin/mypy dicomnode train

test: install system-deps viewer-deps
	$(VENV)/bin/ruff check dicomnode tests bench train
	$(VENV)/bin/mypy dicomnode train
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install system-deps
	$(PY) bench/ingest.py
	$(PY) bench/results.py
	$(PY) bench/queue.py
	$(PY) bench/lung_nodule.py
	$(PY) bench/lung_followup.py
	$(PY) bench/brain_tumor.py
	$(PY) bench/fundus.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache $(VIEWER)/node_modules $(VIEWER)/ohif-dist
