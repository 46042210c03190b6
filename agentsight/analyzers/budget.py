"""One memory budget for the bodies a pipeline holds at once.

Each limit on one body (a decoded response, a request kept for the LLM
stage) still lets many bodies add up: a thousand connections at 64 MiB each
is 64 GiB.  A :class:`BodyBudget` is the cap on their sum.  Whoever buffers
body bytes reserves them first and releases them when it drops them; a
reservation that does not fit is refused whole, and the caller cuts that body
and counts it.  Single-threaded, like the pipeline that owns it.

    budget = BodyBudget()             # 256 MiB in total
    hold = budget.hold()              # one body's share
    if not hold.reserve(len(piece)):  # refused: cut this body, count it
        ...
    hold.release()                    # the body is done: all of it back
"""
from __future__ import annotations

DEFAULT_TOTAL = 256 << 20


class BodyBudget:
    """The bytes all buffered bodies of one pipeline may hold together.

    ``used`` is what is reserved now, ``peak`` the most ever reserved at once,
    ``refused`` how many reservations did not fit.
    """

    __slots__ = ("total", "used", "peak", "refused")

    def __init__(self, total: int = DEFAULT_TOTAL) -> None:
        if total < 0:
            raise ValueError(f"a body budget cannot be negative: {total}")
        self.total = total
        self.used = 0
        self.peak = 0
        self.refused = 0

    def available(self) -> int:
        return self.total - self.used

    def reserve(self, n: int) -> bool:
        """Takes ``n`` bytes if they fit; otherwise takes nothing and says False."""
        used = self.used + n
        if used > self.total:
            self.refused += 1
            return False
        self.used = used
        if used > self.peak:
            self.peak = used
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)

    def hold(self) -> "BodyHold":
        return BodyHold(self)

    def __repr__(self) -> str:
        return f"BodyBudget(total={self.total}, used={self.used}, peak={self.peak})"


class BodyHold:
    """One body's reservations, given back together by :meth:`release`."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def available(self) -> int:
        return self.budget.available()

    def reserve(self, n: int) -> bool:
        if self.budget.reserve(n):
            self.held += n
            return True
        return False

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0
