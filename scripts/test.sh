#!/usr/bin/env bash
# Installs everything the test suite needs, then runs it. Needs root: the
# tests load real BPF programs and capture real local HTTPS traffic.
#   sudo scripts/test.sh            # the whole suite
#   sudo scripts/test.sh -k ssl     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (sudo scripts/test.sh): the tests load BPF programs" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
packages="clang llvm libbpf-dev libbpf1 libelf1 bpftool curl ca-certificates util-linux"
# node: any version will do; only install Debian's if there is none.
command -v node >/dev/null || packages="$packages nodejs"
echo "scripts/test.sh: installing system packages: $packages"
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends $packages >/dev/null

PYTHON=${PYTHON:-python3}
echo "scripts/test.sh: installing agentsight and its test dependencies"
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[test]"

exec "$PYTHON" -m pytest "$@"
