# The README's commands. `make demo` and `make test` do all the set-up they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export SYNTHDATA_HOME ?= $(CURDIR)/.synthdata
export DAGSTER_HOME   := $(SYNTHDATA_HOME)/dagster

.PHONY: setup demo test test-fast ui lint format clean check-gpu-extra

setup: $(STAMP)

# pip resolves torch==2.13.0 to the CPU build where no GPU stack is wanted; vLLM is the
# optional extra `.[vllm]` and is never installed here. -qq keeps pip to errors: its warnings
# here are about index locations of the machine's pip configuration, not the project.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	SYNTHDATA_PRESET=$${SYNTHDATA_PRESET:-demo} $(BIN)/synthdata run

# Two test processes (pytest-xdist), each taking whole modules, so that a module's fixtures are
# built once: most tests hold one core, and the suite took an hour in one process on a 2-core CPU
# without AVX-512. TEST_PROCESSES=0 runs it in this process (a debugger, -x).
TEST_PROCESSES ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

test: $(STAMP)
	$(PYTEST)

# Everything but the end-to-end materializations (marker `slow`).
test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

ui: $(STAMP)
	$(BIN)/synthdata ui

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(SYNTHDATA_HOME)

# The GPU extra `.[vllm]` resolves together with the project's pins, for Linux x86-64 with
# CUDA wheels, on both supported Pythons: uv's resolver reads the packages' metadata only,
# so nothing of the CUDA stack is downloaded (the `vllm` extra is never installed here).
check-gpu-extra: $(STAMP)
	for py in 3.11 3.12; do \
		$(BIN)/uv pip compile pyproject.toml --extra vllm --python-version $$py \
			--python-platform x86_64-manylinux_2_28 --quiet --no-header -o /dev/null \
			|| exit 1; \
	done
	@echo "check-gpu-extra: .[vllm] resolves with the project's pins (Python 3.11, 3.12)"

include vllm.mk
