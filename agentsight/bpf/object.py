"""One loaded BPF object: its settings, programs, links and counters."""
from __future__ import annotations

import errno
import os
import resource
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from ..errors import AgentsightError
from .libbpf import ffi, lib, strerror, take_log

PACKAGE_DIR = Path(__file__).resolve().parent.parent

BPF_TRACE_UPROBE_MULTI = 48
BPF_F_UPROBE_MULTI_RETURN = 1
_NR_BPF = 321  # x86-64
_BPF_LINK_CREATE = 28
_LINK_CREATE_ATTR_SIZE = 64  # through link_create.uprobe_multi.pid
_DETACH_THREADS = 64
_OBJECT_DIRS = (PACKAGE_DIR / "_native" / "bpf", PACKAGE_DIR.parent / "prebuilt")


def object_path(name: str) -> Path:
    """The prebuilt object `name` (e.g. "ssl.bpf.o"), installed or in a checkout."""
    for directory in _OBJECT_DIRS:
        path = directory / name
        if path.exists():
            return path
    raise AgentsightError(
        f"BPF object {name} is missing from this installation (looked in "
        + ", ".join(str(d) for d in _OBJECT_DIRS)
        + "); reinstall agentsight."
    )


def _explain(action: str, err: int) -> str:
    lines = [line.rstrip() for line in "".join(take_log()).splitlines() if line.strip()]
    detail = ""
    if lines:
        detail = "\nlibbpf said:\n  " + "\n  ".join(lines[-15:])
    if err == errno.EPERM and os.geteuid() != 0:
        hint = " Run agentsight as root (sudo); in a container it needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN."
    else:
        hint = ""
    return f"{action} failed: {strerror(err)}.{hint}{detail}"


class BpfObject:
    """Opens, configures and loads one prebuilt object; owns its links.

    `config` is written over the object's .rodata (struct config in
    csrc/events.h) before load. `ring_size` replaces the size of the
    `events` ring buffer. Programs named in `disabled` are not loaded.
    """

    def __init__(self, name: str, config: bytes, ring_size: int, disabled: frozenset[str] = frozenset(),
                 attach_types: dict[str, int] | None = None, shared_maps: dict[str, int] | None = None):
        self.name = name
        self._links: list = []
        self._link_fds: list[int] = []
        # Maps this object uses from another object, which owns and reads them.
        self.borrowed = frozenset(shared_maps or ())
        _raise_memlock()
        libbpf = lib()
        path = object_path(name)
        take_log()
        obj = libbpf.bpf_object__open_file(str(path).encode(), ffi.NULL)
        if obj == ffi.NULL:
            raise AgentsightError(_explain(f"opening {path}", ffi.errno))
        self._obj = obj
        try:
            self._configure(config, ring_size, disabled, attach_types or {})
            for map_name, fd in (shared_maps or {}).items():
                # This object uses another object's map instead of its own.
                if libbpf.bpf_map__reuse_fd(self._find_map(lambda n, m=map_name: n == m), fd) != 0:
                    raise AgentsightError(_explain(f"sharing map {map_name}", ffi.errno))
            if libbpf.bpf_object__load(obj) != 0:
                raise AgentsightError(_explain(f"loading {name} into the kernel", ffi.errno))
        except BaseException:
            self.close()
            raise

    def _configure(self, config: bytes, ring_size: int, disabled: frozenset[str],
                   attach_types: dict[str, int]) -> None:
        libbpf = lib()
        rodata = self._find_map(lambda n: n.endswith(".rodata"))
        size = ffi.new("size_t *")
        initial = libbpf.bpf_map__initial_value(rodata, size)
        # struct config must be the only read-only global, so it sits at offset 0.
        if initial == ffi.NULL or size[0] != len(config):
            raise AgentsightError(f"{self.name}: .rodata is {size[0]} bytes, expected struct config ({len(config)})")
        ffi.memmove(initial, config, len(config))
        if ring_size & (ring_size - 1) or ring_size < 4096:
            raise AgentsightError(f"ring buffer size must be a power of two of at least 4096 bytes, not {ring_size}", 2)
        events = self._find_map(lambda n: n == "events")
        if libbpf.bpf_map__set_max_entries(events, ring_size) != 0:
            raise AgentsightError(_explain("sizing the ring buffer", ffi.errno))
        for prog in self.programs():
            name = ffi.string(libbpf.bpf_program__name(prog)).decode()
            if name in disabled:
                libbpf.bpf_program__set_autoload(prog, False)
            if name in attach_types:
                libbpf.bpf_program__set_expected_attach_type(prog, attach_types[name])

    def _find_map(self, match):
        libbpf = lib()
        m = libbpf.bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            if match(ffi.string(libbpf.bpf_map__name(m)).decode()):
                return m
            m = libbpf.bpf_object__next_map(self._obj, m)
        raise AgentsightError(f"{self.name}: expected map not found; the object does not match this agentsight")

    def programs(self):
        libbpf = lib()
        prog = libbpf.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            yield prog
            prog = libbpf.bpf_object__next_program(self._obj, prog)

    def program(self, name: str):
        prog = lib().bpf_object__find_program_by_name(self._obj, name.encode())
        if prog == ffi.NULL:
            raise AgentsightError(f"{self.name}: no program {name}")
        return prog

    def _map(self, name: str):
        m = lib().bpf_object__find_map_by_name(self._obj, name.encode())
        if m == ffi.NULL:
            raise AgentsightError(f"{self.name}: no map {name}")
        return m

    def map_fd(self, name: str) -> int:
        return lib().bpf_map__fd(self._map(name))

    def map_size(self, name: str) -> int:
        """A map's max_entries (for a ring buffer: its size in bytes)."""
        return int(lib().bpf_map__max_entries(self._map(name)))

    def update(self, map_name: str, key: bytes, value: bytes) -> None:
        if lib().bpf_map_update_elem(self.map_fd(map_name), key, value, 0) != 0:
            raise AgentsightError(f"{self.name}: updating map {map_name} failed: errno {ffi.errno}")

    def attach(self, program: str) -> None:
        """Attach by the program's section name (tracepoints, tp_btf)."""
        take_log()
        link = lib().bpf_program__attach(self.program(program))
        if link == ffi.NULL:
            raise AgentsightError(_explain(f"attaching {program}", ffi.errno))
        self._links.append(link)

    def attach_uprobe(self, program: str, binary: str, offset: int, retprobe: bool = False, pid: int = -1,
                      cookie: int = 0) -> None:
        """One perf-event uprobe; `cookie` is what bpf_get_attach_cookie() returns."""
        take_log()
        opts = ffi.new("struct bpf_uprobe_opts *")
        opts.sz = ffi.offsetof("struct bpf_uprobe_opts", "func_name")
        opts.bpf_cookie = cookie
        opts.retprobe = retprobe
        link = lib().bpf_program__attach_uprobe_opts(self.program(program), pid, binary.encode(), offset, opts)
        if link == ffi.NULL:
            kind = "uretprobe" if retprobe else "uprobe"
            raise AgentsightError(_explain(f"attaching {kind} {program} to {binary}+{offset:#x}", ffi.errno))
        self._links.append(link)

    def attach_uprobe_multi(self, program: str, binary: str, offsets: list[int], cookies: list[int],
                            retprobe: bool = False, pid: int = 0) -> None:
        """Uprobes at many offsets of one file through a single link (Linux 6.6+).

        The program must have been loaded with attach type
        BPF_TRACE_UPROBE_MULTI. One link costs one grace period to destroy,
        where separate uprobes cost one each (~0.1 s)."""
        prog_fd = lib().bpf_program__fd(self.program(program))
        path = ffi.new("char[]", binary.encode())
        offs = ffi.new("uint64_t[]", offsets)
        cks = ffi.new("uint64_t[]", cookies)
        attr = ffi.new("uint8_t[]", _LINK_CREATE_ATTR_SIZE)
        struct.pack_into("<IIII", ffi.buffer(attr), 0, prog_fd, 0, BPF_TRACE_UPROBE_MULTI, 0)
        struct.pack_into("<QQQQIII", ffi.buffer(attr), 16, int(ffi.cast("uintptr_t", path)),
                         int(ffi.cast("uintptr_t", offs)), 0, int(ffi.cast("uintptr_t", cks)),
                         len(offsets), BPF_F_UPROBE_MULTI_RETURN if retprobe else 0, max(pid, 0))
        fd = lib().syscall(ffi.cast("long", _NR_BPF), ffi.cast("int", _BPF_LINK_CREATE), attr,
                           ffi.cast("unsigned int", _LINK_CREATE_ATTR_SIZE))
        if fd < 0:
            kind = "uretprobes" if retprobe else "uprobes"
            raise AgentsightError(_explain(f"attaching {kind} {program} to {binary}", ffi.errno))
        self._link_fds.append(fd)

    @property
    def link_count(self) -> int:
        return len(self._links) + len(self._link_fds)

    def stats(self, count: int) -> list[int]:
        """Per-CPU counters of the `stats` map, summed over CPUs."""
        fd = self.map_fd("stats")
        ncpu = _possible_cpus()
        values = ffi.new("uint64_t[]", ncpu)
        key = ffi.new("uint32_t *")
        totals = []
        for index in range(count):
            key[0] = index
            if lib().bpf_map_lookup_elem(fd, key, values) != 0:
                totals.append(0)
                continue
            totals.append(sum(values[i] for i in range(ncpu)))
        return totals

    def take_links(self) -> list[Callable[[], object]]:
        """Hands over this object's links: one call each that destroys it."""
        destroy = lib().bpf_link__destroy
        jobs: list[Callable[[], object]] = []
        # pop(): a link a hooking thread adds meanwhile is taken or stays, never lost
        while self._links:
            jobs.append(partial(destroy, self._links.pop()))
        while self._link_fds:
            jobs.append(partial(os.close, self._link_fds.pop()))
        return jobs

    def detach(self) -> None:
        detach_all([self])

    def close(self) -> None:
        self.detach()
        if getattr(self, "_obj", None) is not None:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def detach_all(objects: Iterable[BpfObject]) -> None:
    """Destroys every link of these objects, all at once.

    Destroying the last link of a syscall tracepoint, or a uprobe link,
    waits for RCU grace periods in the kernel: 40 to 80 ms each here, one
    after another. Destroyed from threads of their own the waits partly
    overlap: the 32 links of `trace` go in 0.8 s instead of 1.7 s."""
    jobs = [job for obj in objects for job in obj.take_links()]
    if len(jobs) <= 1:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=min(len(jobs), _DETACH_THREADS), thread_name_prefix="detach") as pool:
        for done in [pool.submit(job) for job in jobs]:
            done.result()


def _raise_memlock() -> None:
    # Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


def _possible_cpus() -> int:
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count
