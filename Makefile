# dlrm-k8s. `make demo` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

# `make render | kubectl apply -f -`: stdout carries the command's output only. Recipe lines are not
# echoed (@) and setup's pip output goes to stderr. (make -C DIR prints "Entering directory" itself,
# before reading this file: add -s there.)

# Job variables (launcher): make submit NODES=2 GPUS=8 [IMAGE=...] [NAMESPACE=...] [PROFILE=...] [VALUES=...]
#   [DATASET=...] [FEATURE_SPEC=file|s3://...] [DRY_RUN=1] [BACKEND=local] [API=pytorchjob|trainjob]
#   [SET="train.epochs=2 cluster.efa=4"] (each word one --set) [RESUME=1] (continue the run in the job's output)
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
SET ?=
RESUME ?=
JOB_ARGS = --profile $(PROFILE) $(if $(VALUES),--values $(VALUES)) $(if $(NODES),--nodes $(NODES)) \
  $(if $(GPUS),--gpus $(GPUS)) $(if $(IMAGE),--image $(IMAGE)) $(if $(NAMESPACE),--namespace $(NAMESPACE)) \
  $(if $(NAME),--name $(NAME)) $(if $(DATASET),--set dataset=$(DATASET)) $(if $(API),--api $(API)) \
  $(if $(FEATURE_SPEC),--feature-spec $(FEATURE_SPEC)) $(foreach s,$(SET),--set '$(s)') $(if $(RESUME),--resume)
JOB_ARGS += $(if $(QUEUE),--set scheduling.queue=$(QUEUE))  # QUEUE=: Kueue's LocalQueue (README, Kueue)
JOB_ARGS += $(if $(PRIORITY),--set scheduling.workload_priority=$(PRIORITY))  # PRIORITY=: Kueue's WorkloadPriorityClass

.PHONY: setup bytecode lint test test-fast demo bench bench-gpu render submit status logs results cancel list images push test-images clean

# Its output goes to stderr: `make render` and friends may set up first, and their stdout is the job's YAML.
$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV) (torch $(TORCH_VERSION), then the project)" >&2
	@test -x $(VPY) || $(PY) -m venv $(VENV) >&2
	@$(VPY) -m pip install -q --upgrade pip >&2
	@# torch first and pinned: anything else lets pip pick a multi-GB CUDA build
	@$(VPY) -m pip install -q torch==$(TORCH_VERSION) >&2
	@$(VPY) -m pip install -q -e '.[dev]' >&2
	@touch $@

setup: $(VENV)/.installed

# Every core (pytest-xdist); tests/conftest.py keeps modules with costly fixtures on one worker.
WORKERS ?= auto

lint: setup
	$(VENV)/bin/ruff check .

# The suite starts hundreds of Python processes that load the dlrm/ and launcher/ modules. Where
# PYTHONDONTWRITEBYTECODE is set (containers often set it) none of them caches its bytecode, so
# each would compile the sources again (~0.2 CPU-s a process): compile them once, up front.
# compileall skips what is current, and __pycache__/ is git-ignored.
bytecode: setup
	@$(VPY) -m compileall -q dlrm launcher tests benchmarks images

test: lint bytecode
	$(VPY) -m pytest -q -ra -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: bytecode
	$(VPY) -m pytest -q -n $(WORKERS) --dist loadgroup -m "not slow and not dist" $(PYTEST_ARGS)

demo: setup
	@bash scripts/demo.sh $(VPY)

bench: setup
	$(VPY) benchmarks/run.py $(BENCH)

# For a machine with an NVIDIA GPU and a CUDA torch already installed (no venv there).
bench-gpu:
	bash benchmarks/gpu/run.sh

render: setup
	@$(VPY) -m launcher render $(JOB_ARGS) $(if $(OUT),--out $(OUT))

submit: setup
ifeq ($(BACKEND),local)
	@$(VPY) -m launcher run-local $(JOB_ARGS)
else
	@$(VPY) -m launcher submit $(JOB_ARGS) $(if $(DRY_RUN),--dry-run)
endif

# BACKEND=local: a job started with `make submit BACKEND=local` (run-local), found by its workdir
LOCAL_FLAG = $(if $(filter local,$(BACKEND)),--local)

status: setup
	@$(VPY) -m launcher status $(NAME) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(API),--api $(API)) $(LOCAL_FLAG)

logs: setup
	@$(VPY) -m launcher logs $(NAME) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(FOLLOW),-f) $(if $(API),--api $(API)) $(LOCAL_FLAG)

results: setup
	@$(VPY) -m launcher results $(NAME) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(OUT),--out $(OUT)) $(if $(API),--api $(API)) $(LOCAL_FLAG)

cancel: setup
	@$(VPY) -m launcher cancel $(NAME) $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(API),--api $(API)) $(LOCAL_FLAG)

list: setup
	@$(VPY) -m launcher list $(if $(NAMESPACE),--namespace $(NAMESPACE)) $(if $(API),--api $(API)) $(LOCAL_FLAG)

images:
	bash images/build.sh

push:
	bash images/push.sh $(REGISTRY)

test-images: setup
	bash images/test-images.sh

clean:
	rm -rf runs data .pytest_cache build dist *.egg-info

# The cluster admin's bundle (launcher/admin.py), a kustomize base: make admin VALUES=site.yaml [OUT=admin]
# [SET="admin.runtime=dlrm-h100"], then `kubectl apply -k admin` (its README.md says what to install first).
.PHONY: admin
admin: setup
	@$(VPY) -m launcher admin --profile $(PROFILE) $(foreach v,$(VALUES),--values $(v)) $(foreach s,$(SET),--set '$(s)') --out $(or $(OUT),admin)
