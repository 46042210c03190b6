#!/usr/bin/env bash
# Installs everything the test suite needs, then runs it. Needs root: the
# tests load real BPF programs and capture real local HTTPS traffic.
#   sudo scripts/test.sh            # the whole suite
#   sudo scripts/test.sh -k ssl     # extra arguments go to pytest
#
# Python packages come only from pyproject.toml: every run builds a new
# virtualenv (AGENTSIGHT_TEST_VENV, default .test-venv in the checkout),
# installs .[test] into it and runs pytest from it, so nothing the machine's
# own interpreter happens to have can stand in for a missing declaration.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (sudo scripts/test.sh): the tests load BPF programs" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# chromium: BoringSSL in a stripped executable, built by another toolchain;
# g++: the BoringSSL-shaped test program is built by gcc as well as clang.
packages="clang llvm libbpf-dev libbpf1 libelf1 bpftool curl ca-certificates util-linux gnutls-bin
          python3-venv mmdebstrap golang-go systemd chromium g++ gcc libc6-dev binutils"
# node and npm: any version will do; only install Debian's if there are none.
command -v node >/dev/null || packages="$packages nodejs"
command -v npm >/dev/null || packages="$packages npm"
echo "scripts/test.sh: installing system packages:" $packages
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends $packages >/dev/null

# Bun, the stock build from the npm registry: a stripped executable with
# BoringSSL inside, like the agents built on it.
bun_dir=/opt/agentsight-test/bun
if [ ! -x "$bun_dir/package/bin/bun" ]; then
    echo "scripts/test.sh: installing Bun into $bun_dir"
    mkdir -p "$bun_dir"
    (cd "$bun_dir" && npm pack --silent @oven/bun-linux-x64 >/dev/null && tar xzf oven-bun-linux-x64-*.tgz \
        && rm -f oven-bun-linux-x64-*.tgz)
fi
export AGENTSIGHT_TEST_BUN="$bun_dir/package/bin/bun"

# esbuild releases from the npm registry: stripped Go programs built by Go
# 1.16 (refused: stack ABI), 1.17, 1.19, 1.20 and 1.23.
esbuild_dir=/opt/agentsight-test/esbuild
for v in 0.11.23 0.12.29 0.14.54 0.19.12 0.25.12; do
    [ -x "$esbuild_dir/esbuild-$v" ] && continue
    case $v in 0.1[0-4].*|0.[0-9].*) pkg=esbuild-linux-64 ;; *) pkg=@esbuild/linux-x64 ;; esac
    echo "scripts/test.sh: installing esbuild $v into $esbuild_dir"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$pkg@$v" >/dev/null && tar xzf ./*.tgz package/bin/esbuild)
    mkdir -p "$esbuild_dir" && mv "$tmp/package/bin/esbuild" "$esbuild_dir/esbuild-$v" && rm -rf "$tmp"
done
export AGENTSIGHT_TEST_ESBUILD="$esbuild_dir"

PYTHON=${PYTHON:-python3}
venv=${AGENTSIGHT_TEST_VENV:-$PWD/.test-venv}
echo "scripts/test.sh: a new virtualenv in $venv, with agentsight and its test dependencies"
rm -rf "$venv"
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check ".[test]"

exec "$venv/bin/python" -m pytest "$@"
