"""When the kernel wakes the consumer (csrc/common.bpf.h, submit): each time
the pending records cross a multiple of wakeup_bytes, and never for records
below it, which wait for the consumer's own timer."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

pytestmark = pytest.mark.bpf

WAKEUP_BYTES = 4096
TIMEOUT_MS = 3000


@pytest.fixture
def opener(tmp_path):
    """A shell that opens a file N times for each number it reads."""
    target = tmp_path / "f"
    target.write_text("x")
    # Builtins only: nothing but the opens is reported of it (no fork, no exec).
    loop = f'while read n; do i=0; while [ "$i" -lt "$n" ]; do read y < {target}; i=$((i + 1)); done; echo done; done'
    child = subprocess.Popen(["sh", "-c", loop], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    yield child
    child.kill()
    child.wait()


def _poll_while(reader, child, opens: int) -> tuple[float, int]:
    """Polls (TIMEOUT_MS) while the child opens its file `opens` times; how
    long the poll took, and how many records it returned."""
    got: list[tuple[float, int]] = []

    def poll() -> None:
        t = time.monotonic()
        records = reader.poll(TIMEOUT_MS)
        got.append((time.monotonic() - t, len(records)))

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)  # the poll is asleep before the records come
    child.stdin.write(f"{opens}\n")
    assert child.stdout.readline() == "done\n"
    waiter.join(TIMEOUT_MS / 1000 + 5)
    (result,) = got
    return result


def test_the_consumer_is_woken_at_each_crossing_and_not_below_it(opener):
    from agentsight.bpf.ring import RingReader
    from agentsight.collectors.base import Filters
    from agentsight.collectors.process import ProcessCollector

    collector = ProcessCollector(Filters(pid=opener.pid), 1 << 20, WAKEUP_BYTES, files=False, connects=False)
    reader = RingReader()
    try:
        collector.start()
        reader.add(collector.objects[0])
        # Two opens are far below the mark: the poll runs to its timeout.
        waited, records = _poll_while(reader, opener, 2)
        assert records == 2 and waited >= TIMEOUT_MS / 1000 - 0.2, (waited, records)
        # Enough to cross it, twice over, each after the ring was drained.
        for _ in range(2):
            waited, records = _poll_while(reader, opener, 200)
            assert 0 < records <= 200 and waited < TIMEOUT_MS / 2000, (waited, records)
            records += len(reader.drain())
            assert records == 200
    finally:
        reader.close()
        collector.close()
