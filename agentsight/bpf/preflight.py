"""Checks that turn an unusable environment into one clear sentence."""
from __future__ import annotations

import os
import platform

from ..errors import AgentsightError

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_can_trace() -> None:
    if platform.system() != "Linux":
        raise AgentsightError("agentsight traces with eBPF and runs on Linux only")
    if platform.machine() != "x86_64":
        raise AgentsightError(f"agentsight's prebuilt BPF programs are built for x86_64, not {platform.machine()}")
    caps = _effective_caps()
    has_caps = caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1)
    if os.geteuid() != 0 and not has_caps:
        raise AgentsightError("agentsight needs root to load BPF programs: run it with sudo")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        raise AgentsightError(
            "this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); agentsight needs a kernel "
            "built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since Linux 5.8)"
        )
