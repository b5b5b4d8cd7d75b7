# dlrm-k8s. `make demo` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

# Job variables (launcher): make submit NODES=2 GPUS=8 [IMAGE=...] [NAMESPACE=...] [PROFILE=...] [VALUES=...]
#   [DATASET=...] [FEATURE_SPEC=file|s3://...] [DRY_RUN=1] [BACKEND=local] [API=pytorchjob|trainjob]
NODES ?=
GPUS ?=
IMAGE ?=
NAMESPACE ?=
PROFILE ?= criteo-fl15
VALUES ?=
DRY_RUN ?=
BACKEND ?= cluster
NAME ?=
OUT ?=
DATASET ?=
API ?=
FEATURE_SPEC ?=
JOB_ARGS = --profile $(PROFILE) $(if $(VALUES),--values $(VALUES)) $(if $(NODES),--nodes $(NODES)) \
  $(if $(GPUS),--gpus $(GPUS)) $(if $(IMAGE),--image $(IMAGE)) $(if $(NAMESPACE),--namespace $(NAMESPACE)) \
  $(if $(NAME),--name $(NAME)) $(if $(DATASET),--set dataset=$(DATASET)) $(if $(API),--api $(API)) \
  $(if $(FEATURE_SPEC),--feature-spec $(FEATURE_SPEC))
JOB_ARGS += $(if $(QUEUE),--set scheduling.queue=$(QUEUE))  # QUEUE=: Kueue's LocalQueue (README, Kueue)
JOB_ARGS += $(if $(PRIORITY),--set scheduling.workload_priority=$(PRIORITY))  # PRIORITY=: Kueue's WorkloadPriorityClass

.PHONY: setup lint test test-fast demo bench bench-gpu render submit status logs results images push test-images clean

$(VENV)/.installed: pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	@# torch first and pinned: anything else lets pip pick a multi-GB CUDA build
	$(VPY) -m pip install -q torch==$(TORCH_VERSION)
	$(VPY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed

# Every core (pytest-xdist); tests/conftest.py keeps modules with costly fixtures on one worker.
WORKERS ?= auto

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(VPY) -m pytest -q -ra -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: setup
	$(VPY) -m pytest -q -n $(WORKERS) --dist loadgroup -m "not slow and not dist" $(PYTEST_ARGS)

demo: setup
	@bash scripts/demo.sh $(VPY)

bench: setup
	$(VPY) benchmarks/run.py $(BENCH)

# For a machine with an NVIDIA GPU and a CUDA torch already installed (no venv there).
bench-gpu:
	bash benchmarks/gpu/run.sh

render: setup
	$(VPY) -m launcher render $(JOB_ARGS) $(if $(OUT),--out $(OUT))

submit: setup
ifeq ($(BACKEND),local)
	$(VPY) -m launcher run-local $(JOB_ARGS)
else
	$(VPY) -m launcher submit $(JOB_ARGS) $(if $(DRY_RUN),--dry-run)
endif

# BACKEND=local: a job started with `make submit BACKEND=local` (run-local), found by its workdir
LOCAL_FLAG = $(if $(filter local,$(BACKEND)),--local)

status: setup
	$(VPY) -m launcher status $(NAME) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(API),--api $(API)) $(LOCAL_FLAG)

logs: setup
	$(VPY) -m launcher logs $(NAME) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(FOLLOW),-f) $(if $(API),--api $(API)) $(LOCAL_FLAG)

results: setup
	$(VPY) -m launcher results $(NAME) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(OUT),--out $(OUT)) $(if $(API),--api $(API)) $(LOCAL_FLAG)

images:
	bash images/build.sh

push:
	bash images/push.sh $(REGISTRY)

test-images: setup
	bash images/test-images.sh

clean:
	rm -rf runs data .pytest_cache build dist *.egg-info
