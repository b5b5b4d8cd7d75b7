#!/usr/bin/env bash
# `make images`: build dlrm-k8s-train and dlrm-k8s-preprocess with the Docker you point at
# (DOCKER_HOST as usual), tagged <version> and <version>-<git revision>.
#
#   TRAIN_BASE_IMAGE=nvcr.io/nvidia/pytorch:25.06-py3 make images    # another CUDA PyTorch base
#   DLRM_BUILD_CA=/etc/ssl/certs/ca-certificates.crt make images     # behind a TLS-intercepting proxy
#
# Without a *_BASE_IMAGE the Dockerfiles' defaults apply (a CUDA PyTorch image for train).
# A train base without torch needs a torch wheel in images/wheels/ (see images/README.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

"$DOCKER" version --format '{{.Server.Version}}' >/dev/null || die "cannot reach a Docker daemon (DOCKER_HOST=${DOCKER_HOST:-unset})"
[[ -s "$IMAGES_DIR/requirements.lock" ]] || die "images/requirements.lock is missing: run .venv/bin/python images/lock.py"

build_image train "${TRAIN_BASE_IMAGE:-}"
build_image preprocess "${PREPROCESS_BASE_IMAGE:-}"

log "built:"
for name in "${IMAGE_NAMES[@]}"; do image_tags "$name"; done
