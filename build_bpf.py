#!/usr/bin/env python3
"""Compile csrc/*.bpf.c into CO-RE objects in prebuilt/.

The objects are committed so that installing agentsight never needs clang.
Run this after changing anything under csrc/ (or vmlinux/vmlinux.h):

    python build_bpf.py                 # rebuild prebuilt/*.bpf.o
    python build_bpf.py --out DIR       # build elsewhere (CI: check they still build)
    python build_bpf.py --vmlinux       # regenerate vmlinux/vmlinux.h from this kernel's BTF
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
VMLINUX_DIR = ROOT / "vmlinux"
PREBUILT = ROOT / "prebuilt"
BPF_INCLUDE = Path("/usr/include")  # libbpf-dev's bpf/bpf_helpers.h and friends


def find_clang() -> str:
    for name in ("clang", "clang-14", "clang-15", "clang-16"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("build_bpf.py: clang not found; install it (Debian: apt-get install clang llvm libbpf-dev)")


def generate_vmlinux() -> None:
    btf = Path("/sys/kernel/btf/vmlinux")
    if not btf.exists():
        sys.exit("build_bpf.py: this kernel exposes no BTF at /sys/kernel/btf/vmlinux")
    bpftool = shutil.which("bpftool") or sys.exit("build_bpf.py: bpftool not found (apt-get install bpftool)")
    VMLINUX_DIR.mkdir(exist_ok=True)
    with open(VMLINUX_DIR / "vmlinux.h", "w") as out:
        subprocess.run([bpftool, "btf", "dump", "file", str(btf), "format", "c"], stdout=out, check=True)


def compile_one(clang: str, src: Path, out_dir: Path) -> Path:
    obj = out_dir / (src.name[: -len(".c")] + ".o")
    if not (BPF_INCLUDE / "bpf" / "bpf_helpers.h").exists():
        sys.exit("build_bpf.py: bpf/bpf_helpers.h not found; install libbpf-dev")
    cmd = [
        clang, "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86",
        "-Wall", "-Werror", "-Wno-unused-function",
        f"-I{CSRC}", f"-I{VMLINUX_DIR}", f"-I{BPF_INCLUDE}",
        "-c", str(src), "-o", str(obj),
    ]
    subprocess.run(cmd, check=True)
    # Debug line info and source paths of this machine are not needed to load.
    llvm_strip = shutil.which("llvm-strip") or shutil.which("llvm-strip-14")
    if llvm_strip:
        subprocess.run([llvm_strip, "-g", str(obj)], check=True)
    return obj


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PREBUILT, help="output directory (default: prebuilt/)")
    parser.add_argument("--vmlinux", action="store_true", help="regenerate vmlinux/vmlinux.h first")
    args = parser.parse_args()
    if args.vmlinux or not (VMLINUX_DIR / "vmlinux.h").exists():
        generate_vmlinux()
    clang = find_clang()
    args.out.mkdir(parents=True, exist_ok=True)
    for src in sorted(CSRC.glob("*.bpf.c")):
        obj = compile_one(clang, src, args.out)
        print(f"{src.relative_to(ROOT)} -> {obj}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
