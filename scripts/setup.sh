#!/usr/bin/env bash
# Install everything siamese-sweep needs on a Debian/Ubuntu machine (idempotent).
#   scripts/setup.sh          runtime: the package + Fashion-MNIST
#   scripts/setup.sh --test   also test tools: PostgreSQL, pgbouncer, Slurm + MUNGE, nginx, Chromium, Playwright,
#                             docker compose plugin
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

apt_install() {
  command -v apt-get >/dev/null 2>&1 || { echo "setup: no apt-get; install these yourself: $*" >&2; return 0; }
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else echo "setup: not root and no sudo; install: $*" >&2; return 0; fi
  fi
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

packages=(dataset-fashion-mnist)
# slurm-wlm (slurmctld, slurmd, client commands) + munge: tests/cluster starts a private one-node
# cluster from these binaries; the packages' own services are not used (no systemd needed).
# pgbouncer: tests/distributed runs the budget lock through a private transaction-pooling pgbouncer
# nginx-light: tests/registry/test_serving.py runs deploy/serving's request-size proxy in a real nginx
[ $WITH_TEST -eq 1 ] && packages+=(postgresql pgbouncer chromium slurm-wlm munge nginx-light)
apt_install "${packages[@]}"

extras="distributed"
[ $WITH_TEST -eq 1 ] && extras="distributed,test"
# pip takes ~20 s even when nothing changed (measured: `time bash scripts/setup.sh` on an installed clone), a
# third of the 5-minute quickstart: skip it while this clone is the installed one and pyproject.toml is the same
stamp_of() { { cat pyproject.toml; echo "$1"; "$PYTHON" -c 'import sys; print(sys.executable)'; } | sha256sum | cut -d' ' -f1; }
installed_here() {
  [ "$(cd / && "$PYTHON" -c 'import pathlib, sweeps; print(pathlib.Path(sweeps.__file__).resolve().parents[1])' \
        2>/dev/null)" = "$(pwd -P)" ]
}
stamp_dir=.siamese-sweep
if installed_here && { [ "$(cat "$stamp_dir/setup-$extras" 2>/dev/null)" = "$(stamp_of "$extras")" ] \
     || { [ $WITH_TEST -eq 0 ] && [ "$(cat "$stamp_dir/setup-distributed,test" 2>/dev/null)" = "$(stamp_of "distributed,test")" ]; }; }; then
  echo "setup: siamese-sweep[$extras] already installed from here (pyproject.toml unchanged)"
else
  "$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
  mkdir -p "$stamp_dir" && stamp_of "$extras" > "$stamp_dir/setup-$extras"
fi

if [ $WITH_TEST -eq 1 ] && command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  bash docker/install-compose-plugin.sh || echo "setup: docker compose plugin not installed; its config test will skip" >&2
fi
echo "setup: done"
