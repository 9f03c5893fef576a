# linetap: `make demo` and `make test` set up everything they need (venv, Python packages,
# and, when run as root on Debian/Ubuntu, the Debian packages listed below).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Build: compilers and headers for pyalsaaudio; test signals and tools nobody here wrote.
DEB_PACKAGES := python3-venv python3-dev gcc libasound2-dev alsa-utils libsndfile1 \
                sox espeak-ng minimodem multimon-ng age flac opus-tools \
                mosquitto mosquitto-clients tmux strace chromium device-tree-compiler \
                dpkg-dev lintian

.PHONY: demo test test-slow lint bench sysdeps clean

demo: $(BIN)/.installed
	@rm -rf demo-out
	$(BIN)/python -m demo --out demo-out

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

test-slow: $(BIN)/.installed
	$(BIN)/pytest -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/.installed
	$(BIN)/python bench/capture_rtf.py
	$(BIN)/python bench/recorder_memory.py
	$(BIN)/python bench/age_throughput.py
	$(BIN)/python bench/sealing_rtf.py
	$(BIN)/python bench/sealing_memory.py
	$(BIN)/python bench/upload_throughput.py
	$(BIN)/python bench/upload_latency.py
	$(BIN)/python bench/upload_receiver_capacity.py
	$(BIN)/python bench/upload_receiver_capacity.py --load replay
	$(BIN)/python bench/receiver_cost.py
	$(BIN)/python bench/office_scaleout.py
	$(BIN)/python bench/office_flood.py
	$(BIN)/python bench/dsp_rtf.py
	$(BIN)/python bench/dtmf_accuracy.py
	$(BIN)/python bench/cid_accuracy.py

sysdeps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "installing Debian packages:$$missing"; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    else \
	        echo "missing Debian packages:$$missing" >&2; \
	        echo "install them with: sudo apt-get install$$missing" >&2; exit 1; \
	    fi; \
	fi

$(BIN)/.installed: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) demo-out .mypy_cache .ruff_cache .pytest_cache *.egg-info

# Raspberry Pi SD-card image (image/README.md): Debian trixie arm64 from Debian's archive,
# built as root with qemu-user binfmt; image-test boots it under qemu-system-aarch64.
.PHONY: image image-test image-check

image-check:
	@image/check-host.sh

image: image-check
	image/build.sh

image-test: $(BIN)/.installed
	@image/check-host.sh --test
	$(BIN)/pytest -m slow -s tests/test_image.py

# Power cuts in the VM (tests/test_powercut.py, slow: about 25 min here): seeded cuts into
# provisioning, calls, sealing, uploads and retention, then every promise checked from the
# card read back. LINETAP_POWERCUT_SEED / _CUTS vary the run; LINETAP_POWERCUT_MUTANT=
# journal-fsync or outbox-dirsync plants a bug in the test copy, and the test must fail.
.PHONY: test-powercut
test-powercut: $(BIN)/.installed
	@image/check-host.sh --test
	$(BIN)/pytest -m slow -s tests/test_powercut.py

# The drivers on the image's own kernel (tests/test_vm_kernel.py, slow: about 5 min here,
# plus about 15 min once to build gpio-sim.ko, cached in image/build/gpio-sim/): the gpiod
# contract suite on gpio-sim lines and the snd-aloop capture tests, run by pytest in the
# guest. LINETAP_VM_SOURCE=<tree> runs another tree's drivers and tests there.
.PHONY: test-vm-kernel
test-vm-kernel: $(BIN)/.installed
	@image/check-host.sh --test
	$(BIN)/pytest -m slow -s tests/test_vm_kernel.py

# Debian package for Raspberry Pi OS (trixie, arm64): image/deb/build.sh with dpkg-deb,
# offline, into image/build/deb/. deb-test installs, upgrades and purges it in a Debian
# trixie arm64 root (mmdebstrap + qemu-user, as root; the root is cached in image/build/).
.PHONY: deb deb-test

deb:
	image/deb/build.sh

deb-test: $(BIN)/.installed
	@image/check-host.sh --deb
	$(BIN)/pytest -m slow -s tests/test_deb.py
