"""Packaging that puts what agentsight needs at run time inside the wheel:
the prebuilt BPF objects (prebuilt/*.bpf.o) and the build host's libbpf.so.1,
so installs need no compiler, no kernel headers and no system libbpf.

A wheel built here loads libbpf's own dependencies (libelf, libz) from the
host. scripts/build-wheel.sh makes the distributable one: auditwheel grafts
those dependencies into it and gives it a manylinux tag. Build on a host
with libbpf1 installed."""
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent
BUNDLED_LIBRARIES = ("libbpf.so.1",)
NOTICE = """Shared libraries bundled with agentsight, copied from the build host:
libbpf.so.1  - libbpf, LGPL-2.1 OR BSD-2-Clause (https://github.com/libbpf/libbpf)
The distributable wheel (scripts/build-wheel.sh) also carries, in agentsight.libs/:
libelf       - libelf from elfutils, LGPL-3.0-or-later OR GPL-2.0-or-later (https://sourceware.org/elfutils/)
libz         - zlib, Zlib license (https://zlib.net/)
"""


def _system_library(soname: str) -> Path:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name, _, path = line.partition("=>")
        if name.split()[0:1] == [soname] and "x86-64" in name:
            return Path(path.strip()).resolve()
    raise SystemExit(
        f"building agentsight bundles {soname} from this host, but it is not installed: "
        "apt-get install libbpf1 (or the equivalent package) and build again"
    )


class BuildPyWithNative(build_py):
    def run(self):
        # A module deleted from the source must not live on in build/ and
        # reach the next wheel.
        shutil.rmtree(Path(self.build_lib) / "agentsight", ignore_errors=True)
        super().run()
        native = Path(self.build_lib) / "agentsight" / "_native"
        shutil.rmtree(native, ignore_errors=True)  # nothing left from an earlier build
        (native / "bpf").mkdir(parents=True, exist_ok=True)
        (native / "lib").mkdir(parents=True, exist_ok=True)
        objects = sorted((ROOT / "prebuilt").glob("*.bpf.o"))
        if not objects:
            raise SystemExit("prebuilt/*.bpf.o missing: run python build_bpf.py first")
        for obj in objects:
            shutil.copy2(obj, native / "bpf" / obj.name)
        for soname in BUNDLED_LIBRARIES:
            shutil.copy2(_system_library(soname), native / "lib" / soname)
        (native / "lib" / "NOTICE").write_text(NOTICE)


class PlatformWheel(bdist_wheel):
    """libbpf is loaded through cffi's ABI mode: the wheel depends on the
    platform, never on a CPython version or ABI."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


class BinaryDistribution(Distribution):
    """The wheel carries x86-64 shared libraries: not a pure-Python wheel."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithNative, "bdist_wheel": PlatformWheel}, distclass=BinaryDistribution)
