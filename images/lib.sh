# Shared by images/build.sh, images/push.sh and images/test-images.sh (sourced, not run):
# image names, tags and the one BuildKit `docker build` call all three rely on.

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$IMAGES_DIR")"
# images/<name>/Dockerfile builds dlrm-k8s-<name>.
IMAGE_NAMES=(train preprocess)
DOCKER="${DOCKER:-docker}"

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The version comes from pyproject.toml; dlrm.__version__ must say the same, or the image tag
# and what the code reports about itself would disagree.
project_version() {
  local v pv
  v="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml" | head -n1)"
  pv="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO_ROOT/dlrm/__init__.py" | head -n1)"
  [[ -n "$v" ]] || die "no version in pyproject.toml"
  [[ "$v" == "$pv" ]] || die "pyproject.toml says version $v but dlrm/__init__.py says $pv"
  printf '%s\n' "$v"
}

# Short commit of HEAD, with -dirty when anything that goes into the build context differs from
# it (untracked files count: they are copied into the image too), so a tag never claims a commit
# the image was not built from.
git_revision() {
  local rev
  rev="$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null)" || { echo unknown; return; }
  if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- pyproject.toml README.md dlrm launcher images 2>/dev/null)" ]]; then
    rev="$rev-dirty"
  fi
  printf '%s\n' "$rev"
}

# For the org.opencontainers.image.source label: IMAGE_SOURCE, else the origin remote as https.
image_source() {
  local url="${IMAGE_SOURCE:-$(git -C "$REPO_ROOT" config --get remote.origin.url 2>/dev/null || true)}"
  url="${url/#git@github.com:/https://github.com/}"
  printf '%s\n' "${url%.git}"
}

# Fixed once per script run: others may commit while a build runs, and the tags, labels and
# checks of one run must all name the same revision.
IMAGE_VERSION="$(project_version)"
IMAGE_REVISION="$(git_revision)"

# The local tags of image NAME: <version> and <version>-<revision>.
image_tags() {
  printf 'dlrm-k8s-%s:%s\n' "$1" "$IMAGE_VERSION" "$1" "$IMAGE_VERSION-$IMAGE_REVISION"
}

# build_image NAME [BASE_IMAGE]: builds images/NAME/Dockerfile with BuildKit and both tags.
# DLRM_BUILD_CA: a CA bundle file for networks that intercept TLS; it reaches pip inside the build
# as a BuildKit secret only (mounted per RUN, never stored in a layer).
build_image() {
  local name="$1" base="${2:-}" source
  source="$(image_source)"
  local args=(build --file "$IMAGES_DIR/$name/Dockerfile" --build-arg "VERSION=$IMAGE_VERSION"
    --build-arg "REVISION=$IMAGE_REVISION" --build-arg "SOURCE=${source:-unknown}")
  [[ -n "$base" ]] && args+=(--build-arg "BASE_IMAGE=$base")
  if [[ -n "${DLRM_BUILD_CA:-}" ]]; then
    [[ -s "$DLRM_BUILD_CA" ]] || die "DLRM_BUILD_CA=$DLRM_BUILD_CA is not a readable file"
    args+=(--secret "id=ca,src=$DLRM_BUILD_CA")
  fi
  local tag
  while read -r tag; do args+=(--tag "$tag"); done < <(image_tags "$name")
  log "building dlrm-k8s-$name ${base:+on $base }(version $IMAGE_VERSION, revision $IMAGE_REVISION)"
  # RUN --mount needs BuildKit: Docker 20.10-22 clients have it built in behind DOCKER_BUILDKIT=1,
  # newer clients need the buildx plugin for it.
  DOCKER_BUILDKIT=1 "$DOCKER" "${args[@]}" "$REPO_ROOT"
}
