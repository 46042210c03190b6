"""One definition of each record layout: construct, the fast decoder and the C
structs (as the compiler laid them out, read from the objects' BTF) agree."""
from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest
from construct import Renamed

from agentsight.collectors.decode import RecordDecoder
from agentsight.collectors.records import (
    C_NAMES,
    EVENT_EXEC,
    EVENT_SSL,
    FAST,
    KIND_OFFSET,
    LAYOUTS,
    SSL_EVENT,
    FastLayout,
)
from support import REPO

def _random_record(kind: int, layout, rng: random.Random) -> bytes:
    fast = FAST[kind]
    fixed = bytearray(rng.randbytes(fast.size))
    fixed[KIND_OFFSET:KIND_OFFSET + 2] = kind.to_bytes(2, "little")
    tails = b""
    for _, length_field in fast.tails:
        n = rng.randrange(0, 300)
        off = fast.offsets[length_field]
        fixed[off:off + 4] = n.to_bytes(4, "little")
        tails += rng.randbytes(n)
    return bytes(fixed) + tails


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_fast_decoder_agrees_with_construct(kind):
    rng = random.Random(kind)
    layout = LAYOUTS[kind]
    fast = FAST[kind]
    for _ in range(200):
        record = _random_record(kind, layout, rng)
        parsed = layout.parse(record)
        expected = tuple(parsed[name] for name in fast.names)
        assert fast.decode(record) == expected


def test_fast_decoder_rejects_layouts_it_cannot_express():
    from construct import Struct, Int32ub, this, Bytes, Int32ul
    with pytest.raises(TypeError):
        FastLayout(Struct("x" / Int32ub))
    with pytest.raises(TypeError):
        FastLayout(Struct("n" / Int32ul, "d" / Bytes(this.n), "after" / Int32ul))


def _btf_structs(obj: str) -> dict[str, tuple[int, list[tuple[str, int]]]]:
    """struct name -> (size, [(member, byte offset)]) from `bpftool btf dump`."""
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    structs: dict[str, tuple[int, list]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"\[\d+\] STRUCT '(\w+)' size=(\d+)", line)
        if m:
            current = m.group(1)
            structs[current] = (int(m.group(2)), [])
            continue
        m = re.match(r"\s+'(\w+)' type_id=\d+ bits_offset=(\d+)", line)
        if m and current:
            structs[current][1].append((m.group(1), int(m.group(2)) // 8))
        elif not line.startswith("\t"):
            current = None
    return structs


def _construct_offsets(layout) -> list[tuple[str, int]]:
    offsets, pos = [], 0
    for sub in layout.subcons:
        try:
            size = sub.sizeof()
        except Exception:
            size = None
        if isinstance(sub, Renamed) and sub.name:
            offsets.append((sub.name, pos))
        if size is None:
            break
        pos += size
    return offsets


@pytest.mark.parametrize("obj", ["ssl.bpf.o", "process.bpf.o", "go_tls.bpf.o", "aead_tls.bpf.o"])
def test_construct_layouts_match_the_compiled_structs(obj):
    if not shutil.which("bpftool"):
        pytest.fail("bpftool is not installed; the test setup installs it (scripts/test.sh)")
    structs = _btf_structs(REPO / "prebuilt" / obj)
    checked = 0
    for c_name, layout in C_NAMES.items():
        name = c_name.split()[1]
        if name not in structs:
            continue
        size, members = structs[name]
        c_offsets = {}
        for member, offset in members:
            if member == "hdr":
                for h_member, h_offset in structs["event_header"][1]:
                    c_offsets[h_member] = offset + h_offset
            else:
                c_offsets[member] = offset
        for field, offset in _construct_offsets(layout):
            # Variable parts share one C array: the first is data[], the others follow it.
            tails = [t for t, _ in FastLayout(layout).tails]
            c_field = field
            if field in tails and "data" in c_offsets:
                if tails.index(field):
                    continue
                c_field = "data"
            assert c_offsets[c_field] == offset, f"{name}.{field}: C {c_offsets[c_field]}, construct {offset}"
            checked += 1
    assert checked >= 10


def test_decoder_counts_garbage_and_keeps_going():
    rng = random.Random(7)
    decoder = RecordDecoder(clock_offset_ns=0)
    good = _random_record(EVENT_SSL, SSL_EVENT, rng)
    # Make the good one a complete single-record call with valid fields.
    fields = dict(SSL_EVENT.parse(good))
    fields.update(offset=0, last=1, fn=0, dir=0, data=b"hello", data_len=5, len=5, truncated=0, gap=0)
    good = SSL_EVENT.build(fields)
    garbage = [b"", b"\x01", rng.randbytes(19), bytes(40), rng.randbytes(100)]
    cut = good[:-3]  # announces more data than it carries
    events = decoder.decode(garbage + [cut, good])
    assert [e.data for e in events] == [b"hello"]
    assert decoder.bad_records == len(garbage) + 1


def test_split_call_is_merged_and_a_lost_tail_is_counted():
    decoder = RecordDecoder(clock_offset_ns=0)
    base = dict(ts_ns=1, pid=10, tid=11, uid=0, kind=EVENT_SSL, comm=b"x".ljust(16, b"\0"), conn=5,
                latency_ns=1, ret=30, len=30, truncated=0, gap=0, fn=1, dir=1)
    part = lambda off, data, last: SSL_EVENT.build(dict(base, offset=off, data_len=len(data), data=data, last=last))
    events = decoder.decode([part(0, b"0123456789", 0), part(10, b"abcdefghij", 0), part(20, b"KLMNOPQRST", 1)])
    assert len(events) == 1 and events[0].data == b"0123456789abcdefghijKLMNOPQRST"
    # The last piece never comes (ring full): the call is still reported, the
    # missing bytes counted as truncated.
    events = decoder.decode([part(0, b"0123456789", 0)]) + decoder.flush()
    assert events[0].data == b"0123456789" and events[0].truncated == 20
    assert decoder.truncated_bytes == 20


def test_payload_stays_bytes_and_its_json_form_is_base64_when_not_utf8():
    import base64
    decoder = RecordDecoder(clock_offset_ns=0)
    data = bytes(range(256))
    rec = SSL_EVENT.build(dict(ts_ns=1, pid=1, tid=1, uid=0, kind=EVENT_SSL, comm=bytes(16), conn=1, latency_ns=0,
                               ret=256, len=256, offset=0, data_len=256, truncated=0, gap=0, fn=0, dir=0, last=1,
                               data=data))
    (ev,) = decoder.decode([rec])
    assert ev.data == data
    d = ev.to_json()
    assert "data" not in d and base64.b64decode(d["data_b64"]) == data
    # and back, as replay reads it
    from agentsight.events import EventDecodeError, from_json

    assert from_json(d) == ev
    with pytest.raises(EventDecodeError, match="data_b64"):
        from_json(dict(d, data_b64="AAA"))  # cut short: not base64


def test_exec_argv_split():
    from agentsight.collectors.records import EXEC_EVENT
    decoder = RecordDecoder(clock_offset_ns=0)
    args = b"sh\0-c\0echo hi\0"
    cwd = b"project\0alice\0home\0"  # leaf first, as the kernel walks it
    rec = EXEC_EVENT.build(dict(ts_ns=1, pid=1, tid=1, uid=0, kind=EVENT_EXEC, comm=bytes(16), ppid=1,
                                filename_len=7, args_len=len(args), args_truncated=0, cwd_len=len(cwd),
                                cwd_truncated=0, filename=b"/bin/sh", args=args, cwd=cwd))
    (ev,) = decoder.decode([rec])
    assert ev.argv == ["sh", "-c", "echo hi"] and ev.filename == "/bin/sh"
    assert ev.cwd == "/home/alice/project"


def test_function_names_follow_the_c_enum():
    """SSL_FUNCTIONS[i] names the function whose enum ssl_fn value is i."""
    header = (REPO / "csrc" / "events.h").read_text()
    enum = re.search(r"enum ssl_fn \{(.*?)\};", header, re.S).group(1)
    values = [int(v) for v in re.findall(r"FN_\w+ = (\d+)", enum)]
    from agentsight.collectors.records import SSL_FUNCTIONS
    assert values == list(range(len(SSL_FUNCTIONS)))
