#!/usr/bin/env bash
# `make push REGISTRY=registry.example.com/team`: tag the images `make images` built with the
# registry prefix and push both tags of each; prints the pushed digests to pin in job values.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

registry="${1:-}"
[[ -n "$registry" ]] || die "usage: make push REGISTRY=registry.example.com/team"
registry="${registry%/}"

# A <version>-<sha> tag must mean that commit: refuse to publish images of a modified tree.
[[ "$IMAGE_REVISION" != *-dirty && "$IMAGE_REVISION" != unknown ]] \
  || die "the tree differs from its commit (revision $IMAGE_REVISION): commit, then make images && make push"

for name in "${IMAGE_NAMES[@]}"; do
  while read -r tag; do
    "$DOCKER" image inspect "$tag" >/dev/null 2>&1 || die "$tag is not built: run make images first"
    "$DOCKER" tag "$tag" "$registry/$tag"
    log "pushing $registry/$tag"
    "$DOCKER" push "$registry/$tag"
  done < <(image_tags "$name")
done

log "pushed (pin these digests in the job values):"
for name in "${IMAGE_NAMES[@]}"; do
  "$DOCKER" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$(image_tags "$name" | tail -n1)" \
    | grep -F "$registry/" || true
done
