"""cffi (ABI mode) bindings to the part of libbpf agentsight uses.

ABI mode needs no compiler where agentsight is installed. The wheel carries
its own libbpf.so.1 in agentsight/_native/lib (the distributable wheel also
carries libelf and libz, which auditwheel links it to), so hosts and
containers without libbpf work; a source checkout falls back to the system
copy. AGENTSIGHT_LIBBPF=/path/to/libbpf.so.1 overrides both.
"""
from __future__ import annotations

import os
from pathlib import Path

import cffi

from ..errors import AgentsightError

CDEF = """
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;

typedef int (*libbpf_print_fn_t)(int level, const char *fmt, void *args);

libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);
int libbpf_strerror(int err, char *buf, size_t size);
unsigned int libbpf_major_version(void);
unsigned int libbpf_minor_version(void);

struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);

const char *bpf_program__name(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach_uprobe(const struct bpf_program *prog, bool retprobe,
                                            int pid, const char *binary_path, size_t func_offset);
int bpf_link__destroy(struct bpf_link *link);
int bpf_program__set_expected_attach_type(struct bpf_program *prog, int type);

struct bpf_uprobe_opts {      /* as in libbpf 1.1; sz tells newer versions what we set */
    size_t sz;
    size_t ref_ctr_offset;
    uint64_t bpf_cookie;
    bool retprobe;
    const char *func_name;
};
struct bpf_link *bpf_program__attach_uprobe_opts(const struct bpf_program *prog, int pid,
                                                 const char *binary_path, size_t func_offset,
                                                 const struct bpf_uprobe_opts *opts);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
void *bpf_map__initial_value(struct bpf_map *map, size_t *psize);
uint32_t bpf_map__value_size(const struct bpf_map *map);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);


int vsnprintf(char *str, size_t size, const char *format, void *args);
long syscall(long number, ...);
"""

NATIVE_DIR = Path(__file__).resolve().parent.parent / "_native" / "lib"

ffi = cffi.FFI()
ffi.cdef(CDEF)


def _candidates() -> list[str]:
    """libbpf paths in order of preference."""
    override = os.environ.get("AGENTSIGHT_LIBBPF")
    if override:
        return [override]
    bundled = NATIVE_DIR / "libbpf.so.1"
    return ([str(bundled)] if bundled.exists() else []) + ["libbpf.so.1"]


def _load():
    errors = []
    for path in _candidates():
        try:
            return ffi.dlopen(path), path
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    raise AgentsightError(
        "cannot load libbpf (" + "; ".join(errors) + "). Reinstall agentsight from its wheel, "
        "or install libbpf1 (Debian/Ubuntu: apt-get install libbpf1), "
        "or point AGENTSIGHT_LIBBPF at a libbpf.so.1.",
        exit_code=1,
    )


_lib = None
_lib_path = ""
_libc = ffi.dlopen(None)
_log: list[str] = []


def lib():
    """The loaded libbpf, with its log routed into agentsight (see take_log)."""
    global _lib, _lib_path
    if _lib is None:
        _lib, _lib_path = _load()
        _lib.libbpf_set_print(_print_cb)
    return _lib


def lib_path() -> str:
    lib()
    return _lib_path


# A verifier log arrives as one message of up to a few hundred KiB, and a
# va_list can be formatted only once, so the buffer is sized for the worst.
_LOG_BUF_SIZE = 1 << 20
_log_buf = ffi.new("char[]", _LOG_BUF_SIZE)


@ffi.callback("int(int, const char *, void *)")
def _print_cb(level, fmt, args):
    # args is a va_list; on x86-64 it is passed as a pointer, which vsnprintf takes as is.
    _libc.vsnprintf(_log_buf, _LOG_BUF_SIZE, fmt, args)
    _log.append(ffi.string(_log_buf).decode("utf-8", "replace"))
    if len(_log) > 2000:
        del _log[:1000]
    return 0


def take_log() -> list[str]:
    """libbpf's messages since the last call (verifier output, attach failures)."""
    out = list(_log)
    _log.clear()
    return out


def strerror(err: int) -> str:
    buf = ffi.new("char[]", 256)
    lib().libbpf_strerror(abs(err), buf, 256)
    return ffi.string(buf).decode()
