"""Binary layouts of the records the BPF programs write (csrc/events.h).

Each layout is defined once, with construct. construct parses a record in
tens of microseconds, too slow for the ring-buffer hot path, so FastLayout
derives a struct.Struct from the same definition; tests check that both
agree and that both match the BTF of the compiled objects.
"""
from __future__ import annotations

import struct
from typing import Any

from construct import (
    Bytes,
    FormatField,
    Int8ul,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64sl,
    Int64ul,
    Padded,
    Padding,
    Pass,
    Renamed,
    Struct,
    this,
)

TASK_COMM_LEN = 16
SSL_CHUNK = 16384

EVENT_SSL, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_OPEN, EVENT_TLS_NOTICE, EVENT_FILE, EVENT_CONNECT = range(1, 9)
FILE_OPS = {1: "unlink", 2: "rmdir", 3: "rename"}
NOTICE_EXEC, NOTICE_OPEN = 1, 2
KIND_OFFSET = 20  # offset of event_header.kind

SSL_FUNCTIONS = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex", "SSL_do_handshake",
                 "gnutls_record_send", "gnutls_record_recv", "gnutls_handshake", "SSL_free", "gnutls_deinit",
                 "ssl_write_internal", "ssl_read_internal",
                 "crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Close",
                 "EVP_AEAD_CTX_seal", "EVP_AEAD_CTX_seal_scatter", "EVP_AEAD_CTX_open", "EVP_AEAD_CTX_init",
                 "EVP_AEAD_CTX_init_with_direction", "close",
                 "aes_gcm_seal", "aes_gcm_open", "chacha20_poly1305_seal", "chacha20_poly1305_open",
                 "aes_gcm_init_128", "aes_gcm_init_256", "chacha20_poly1305_init")
SSL_DIRECTIONS = ("send", "recv", "handshake", "close")

STAT_NAMES = ("ring_full_records", "ring_full_bytes", "calls_missed", "read_faults", "unmatched_records")

_HEADER = (
    "ts_ns" / Int64ul,
    "pid" / Int32ul,
    "tid" / Int32ul,
    "uid" / Int32ul,
    "kind" / Int16ul,
    Padding(2),
    "comm" / Bytes(TASK_COMM_LEN),
)

CONFIG = Struct(
    "tgid" / Int32ul,
    "follow" / Int32ul,
    "uid" / Int32ul,
    "filter_uid" / Int32ul,
    "max_capture" / Int32ul,
    "self_tgid" / Int32ul,
    "wakeup_bytes" / Int64ul,
    "comm" / Bytes(TASK_COMM_LEN),
)

SSL_EVENT = Struct(
    *_HEADER,
    "conn" / Int64ul,
    "latency_ns" / Int64ul,
    "ret" / Int64sl,
    "len" / Int32ul,
    "offset" / Int32ul,
    "data_len" / Int32ul,
    "truncated" / Int32ul,
    "gap" / Int32ul,
    "fn" / Int8ul,
    "dir" / Int8ul,
    "last" / Int8ul,
    Padding(1),
    "data" / Bytes(this.data_len),
)

EXEC_EVENT = Struct(
    *_HEADER,
    "ppid" / Int32ul,
    "filename_len" / Int32ul,
    "args_len" / Int32ul,
    "args_truncated" / Int32ul,
    "cwd_len" / Int32ul,
    "cwd_truncated" / Int32ul,
    "filename" / Bytes(this.filename_len),
    "args" / Bytes(this.args_len),
    "cwd" / Bytes(this.cwd_len),
)

EXIT_EVENT = Struct(
    *_HEADER,
    "duration_ns" / Int64ul,
    "exit_code" / Int32ul,
    "ppid" / Int32ul,
)

FORK_EVENT = Struct(
    *_HEADER,
    "child_pid" / Int32ul,
    Padding(4),
)

OPEN_EVENT = Struct(
    *_HEADER,
    "ret" / Int64sl,
    "flags" / Int32sl,
    "path_len" / Int32ul,
    "resolved_len" / Int32ul,
    "resolved_truncated" / Int32ul,
    "path" / Bytes(this.path_len),
    "resolved" / Bytes(this.resolved_len),
)

FILE_EVENT = Struct(
    *_HEADER,
    "ret" / Int64sl,
    "op" / Int32ul,
    "flags" / Int32ul,
    "path_len" / Int32ul,
    "path2_len" / Int32ul,
    "dir_len" / Int32ul,
    "dir2_len" / Int32ul,
    "path" / Bytes(this.path_len),
    "path2" / Bytes(this.path2_len),
    "dir" / Bytes(this.dir_len),
    "dir2" / Bytes(this.dir2_len),
)

CONNECT_EVENT = Struct(
    *_HEADER,
    "ret" / Int64sl,
    "family" / Int16ul,
    "port" / Int16ul,
    Padding(4),
    "addr" / Bytes(16),
)

TLS_NOTICE = Struct(
    *_HEADER,
    "what" / Int32ul,
    "path_len" / Int32ul,
    "path" / Bytes(this.path_len),
)

LAYOUTS = {
    EVENT_SSL: SSL_EVENT,
    EVENT_EXEC: EXEC_EVENT,
    EVENT_EXIT: EXIT_EVENT,
    EVENT_FORK: FORK_EVENT,
    EVENT_OPEN: OPEN_EVENT,
    EVENT_TLS_NOTICE: TLS_NOTICE,
    EVENT_FILE: FILE_EVENT,
    EVENT_CONNECT: CONNECT_EVENT,
}

# The C struct names behind each layout, for the BTF comparison.
C_NAMES = {
    "struct config": CONFIG,
    "struct ssl_event": SSL_EVENT,
    "struct exec_event": EXEC_EVENT,
    "struct exit_event": EXIT_EVENT,
    "struct fork_event": FORK_EVENT,
    "struct open_event": OPEN_EVENT,
    "struct tls_notice": TLS_NOTICE,
    "struct file_event": FILE_EVENT,
    "struct connect_event": CONNECT_EVENT,
}


class RecordError(ValueError):
    """A record shorter or longer than its layout says."""


class FastLayout:
    """A struct.Struct decoder derived from a construct Struct.

    Supports what the event layouts use: little-endian integers, fixed
    Bytes, Padding, and trailing Bytes whose length is an earlier field.
    decode() returns a tuple: the fixed fields in order, then each trailing
    byte string.
    """

    def __init__(self, layout: Struct):
        fmt = "<"
        names: list[str] = []
        offsets: dict[str, int] = {}
        tail: list[tuple[str, int]] = []
        offset = 0
        for sub in layout.subcons:
            name = sub.name
            inner = sub.subcon if isinstance(sub, Renamed) else sub
            if isinstance(inner, Padded) and inner.subcon is Pass:
                if tail:
                    raise TypeError("padding after variable-length data")
                fmt += f"{inner.length}x"
                offset += inner.length
            elif isinstance(inner, FormatField):
                if tail:
                    raise TypeError(f"fixed field {name} after variable-length data")
                if inner.fmtstr[0] != "<":
                    raise TypeError(f"{name}: only little-endian fields are supported")
                offsets[name] = offset
                fmt += inner.fmtstr[1:]
                offset += inner.length
                names.append(name)
            elif isinstance(inner, Bytes) and isinstance(inner.length, int):
                if tail:
                    raise TypeError(f"fixed field {name} after variable-length data")
                offsets[name] = offset
                fmt += f"{inner.length}s"
                offset += inner.length
                names.append(name)
            elif isinstance(inner, Bytes):
                length_field = inner.length({n: n for n in names})
                if length_field not in names:
                    raise TypeError(f"{name}: length must be an earlier field")
                tail.append((name, names.index(length_field)))
            else:
                raise TypeError(f"{name}: {inner!r} has no fast form")
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        self.names = tuple(names) + tuple(n for n, _ in tail)
        self.offsets = offsets
        # (trailing field, the fixed field holding its length)
        self.tails = tuple((n, names[i]) for n, i in tail)
        self._tail = tuple(i for _, i in tail)

    def decode(self, record: bytes) -> tuple[Any, ...]:
        fixed = self.struct.unpack_from(record)
        if not self._tail:
            return fixed
        pos = self.size
        parts = []
        for index in self._tail:
            end = pos + fixed[index]
            parts.append(record[pos:end])
            pos = end
        if pos > len(record):
            raise RecordError(f"record of {len(record)} bytes announces {pos}")
        return fixed + tuple(parts)


FAST = {kind: FastLayout(layout) for kind, layout in LAYOUTS.items()}
