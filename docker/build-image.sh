#!/usr/bin/env bash
# `make image`: build the Dockerfile with every version from requirements.lock, tag it with the configured
# image reference (image.repository:image.tag) and print that reference as the last line of stdout.
#
# BASE=auto (default): python:3.11-slim-bookworm when it is present or can be pulled, else the bookworm base
#   that docker/build-base.sh makes from Debian's packages (where no container registry is reachable).
# BASE=debootstrap: always that base. BASE=<image>: that image.
# The debootstrap base is kept under a tag named by the script's hash, so only a changed script rebuilds it;
# Docker's layer cache does the rest (dependencies are one layer, keyed on pyproject.toml and the lock).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${STOREFLOW_PYTHON:-.venv/bin/python}"
default_base="python:3.11-slim-bookworm"

debootstrap_base() {
  local tag="storeflow-base:bookworm-$(sha256sum docker/build-base.sh | cut -c1-12)"
  if ! docker image inspect "$tag" >/dev/null 2>&1; then
    echo "building $tag with debootstrap (a few minutes, once)" >&2
    bash docker/build-base.sh "$tag" >/dev/null
  fi
  echo "$tag"
}

docker info >/dev/null 2>&1 || { echo "no Docker engine answers (start dockerd, or see .ci/run)" >&2; exit 1; }
reference="$("$python" -c 'from storeflow.components.config import load_settings; print(load_settings().image.reference)')"
base="${BASE:-auto}"
case "$base" in
  auto)
    if docker image inspect "$default_base" >/dev/null 2>&1; then
      base="$default_base" why="present locally"
    elif timeout 120 docker pull -q "$default_base" >/dev/null 2>&1; then
      base="$default_base" why="pulled"
    else
      base="$(debootstrap_base)" why="$default_base cannot be pulled here: Debian bookworm from docker/build-base.sh"
    fi ;;
  debootstrap) base="$(debootstrap_base)" why="BASE=debootstrap" ;;
  *) why="BASE=$base" ;;
esac
echo "base image: $base ($why)" >&2

commit="$(git rev-parse HEAD 2>/dev/null || true)"
DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$base" --build-arg "STOREFLOW_GIT_COMMIT=$commit" \
  -t "$reference" . >&2
size="$(docker image inspect --format '{{.Size}}' "$reference")"
echo "built $reference on $base: $((size / 1000000)) MB" >&2
echo "$reference"
