"""Locating SSL_write, SSL_read and SSL_do_handshake in a stripped executable
with BoringSSL linked in (Bun, `bun build --compile` programs, Chromium).

BoringSSL reports errors with ERR_put_error(lib, unused, reason, file,
line), passing the address of its source file's name; the reason codes
are fixed constants of its API. What differs between builds is everything
a compiler decides: which register carries which argument (link-time
optimisation drops the unused one), what is inlined where, how error paths
are shared. So nothing here reads one compiler's instruction sequence:

1. The error reporter is the function most calls reach with the address of
   the "ssl/ssl_lib.cc" name in an argument register; which register that
   is says which argument is the file, hence which is the reason (the one
   before) and the line (the one after).
2. Functions are found around the code that names the file: a function
   starts where direct calls lead; its body is what its control flow
   reaches from there.
3. Each function is followed with the values its registers may hold, which
   gives the reason codes of its error calls, the functions it calls and
   the arguments it reads.
4. The three functions are recognised by what they report and how they
   relate, each checked by a second signal before it is hooked:
   SSL_do_handshake reports SSL_R_CONNECTION_TYPE_NOT_SET and is what the
   writers and readers call before reporting SSL_R_SSL_HANDSHAKE_FAILURE;
   SSL_write reports SSL_R_UNINITIALIZED, the handshake failure and
   SSL_R_BAD_LENGTH, and calls SSL_do_handshake; the internal read routine
   reports the first two; SSL_read reports
   ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED and calls (or contains) it, and,
   unlike SSL_peek, consumes what it returned.
"""
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from . import x86

FILE_NAME = b"ssl/ssl_lib.cc\0"

# Reason codes, from BoringSSL's public headers (stable across versions).
SHOULD_NOT_HAVE_BEEN_CALLED = 66  # ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED
BAD_LENGTH = 111                  # SSL_R_BAD_LENGTH
CONNECTION_TYPE_NOT_SET = 134     # SSL_R_CONNECTION_TYPE_NOT_SET
HANDSHAKE_FAILURE = 215           # SSL_R_SSL_HANDSHAKE_FAILURE
UNINITIALIZED = 226               # SSL_R_UNINITIALIZED
ERR_LIB_SSL = 16

# push rbp; mov rbp, rsp / endbr64: how functions begin in frame-pointer and CET builds.
_PROLOGUES = (b"\x55\x48\x89\xe5", b"\xf3\x0f\x1e\xfa")
# How far before code naming the file its function may start.
FUNCTION_SPAN = 1 << 13


class NotBoringSSL(Exception):
    """The file does not contain BoringSSL's ssl_lib.cc (a normal outcome)."""


class AnalysisError(Exception):
    """BoringSSL is there but its functions could not be told apart safely.

    str() is the reason, short; `detail` lists what was found, for a report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.detail = detail


@dataclass
class Located:
    functions: dict[str, int]  # name -> file offset
    evidence: dict[str, str]   # name -> how it was identified


@dataclass
class Facts:
    """What one function of ssl_lib.cc does, as far as locating needs."""
    fn: x86.Function
    reasons: set[int] = field(default_factory=set)
    lines: set[int] = field(default_factory=set)
    unknown_reasons: int = 0
    callers: int = 0

    @property
    def entry(self) -> int:
        return self.fn.entry


def locate(path: str) -> Located:
    """File offsets of SSL_write, SSL_read and SSL_do_handshake in `path`."""
    try:
        image = x86.Image(path)
    except x86.CodeError as exc:
        raise NotBoringSSL(str(exc)) from None
    with image:
        return _Locator(image).run()


class _Locator:
    def __init__(self, image: x86.Image):
        self.image = image

    def run(self) -> Located:
        names = [a for a in self.image.strings_ending(FILE_NAME) if self._is_file_name(a)]
        if not names:
            raise NotBoringSSL("no ssl_lib.cc file name inside")
        self.names = set(names)
        sites = sorted({s for a in names for s in x86.references(self.image, a)})
        if not sites:
            raise AnalysisError("its ssl_lib.cc file name is never loaded by code")
        self.reporter, self.file_arg = self._error_reporter(sites)
        self.functions = self._functions_around(sites)
        return self._recognise()

    def _is_file_name(self, va: int) -> bool:
        off = self.image.offset(va)
        text = self.image.data[off:off + 4096].split(b"\0", 1)[0]
        return text == FILE_NAME[:-1] or text.endswith(b"/" + FILE_NAME[:-1])

    # --- step 1: the error reporter and its arguments ---

    def _error_reporter(self, sites: list[int]) -> tuple[int, int]:
        votes: Counter = Counter()
        for site in sites:
            fn = x86.explore(self.image, site, limit=1024, max_steps=400)
            for call in sorted(fn.calls.values(), key=lambda c: c.site):
                carrying = [i for i, v in enumerate(call.arguments) if self._names_file(v)]
                if call.target is not None and len(carrying) == 1:
                    votes[(call.target, carrying[0])] += 1
                    break
        if not votes:
            raise AnalysisError("no call passes the ssl_lib.cc file name in an argument register")
        (reporter, file_arg), n = votes.most_common(1)[0]
        if n < 3 or n * 2 < sum(votes.values()):
            raise AnalysisError(f"no single error-reporting function: calls passing the ssl_lib.cc name "
                                f"go to {len(votes)} places ({n} of {sum(votes.values())} to the most common)")
        if not 1 <= file_arg <= 4:
            raise AnalysisError(f"the ssl_lib.cc name is argument {file_arg + 1} of the error reporter, "
                                "which leaves no place for the reason code before it")
        return reporter, file_arg

    def _names_file(self, values) -> bool:
        found = x86.constants(values)
        return bool(found) and bool(found & self.names)

    # --- step 2 and 3: the functions around that code ---

    def _functions_around(self, sites: list[int]) -> dict[int, Facts]:
        image = self.image
        callers: dict[int, list[int]] = {}
        for site, target in x86.branches_into(image, [(s - FUNCTION_SPAN, s + 1) for s in sites]):
            callers.setdefault(target, []).append(site)
        strong = [t for t, c in callers.items() if len(c) >= 2]
        # Most builds start every function on 16 bytes; where that holds, a
        # target that is not aligned is a byte pattern that only looked like a call.
        aligned = len(strong) >= 8 and sum(1 for t in strong if t % 16 == 0) >= 0.95 * len(strong)
        candidates = sorted(t for t in callers if t % 16 == 0 or not aligned)
        candidate_set = set(candidates)
        verified: dict[int, bool] = {}
        self.callers = {t: len(c) for t, c in callers.items()}

        def is_entry(va: int) -> bool:
            """A function starts at `va`: a call leads there from an instruction
            that decodes in step with the code around it."""
            if va not in candidate_set:
                return False
            known = verified.get(va)
            if known is None:
                known = verified[va] = any(x86.decodes_at(image, s) for s in callers[va][:4])
            return known

        def follows_call(va: int) -> bool:
            # A function starting right after a call: the call did not return.
            if is_entry(va):
                return True
            if va not in callers:
                return False
            off = image.offset(va)
            return image.data[off:off + 4] in _PROLOGUES and any(x86.decodes_at(image, s) for s in callers[va][:4])

        functions: dict[int, Facts] = {}
        explored: dict[int, x86.Function] = {}
        for site in sites:
            if any(site in f.fn.instructions for f in functions.values()):
                continue
            i = bisect.bisect_right(candidates, site) - 1
            tried = 0
            while i >= 0 and tried < 4 and candidates[i] >= site - FUNCTION_SPAN:
                entry = candidates[i]
                i -= 1
                if not is_entry(entry):
                    continue
                tried += 1
                fn = explored.get(entry)
                if fn is None:
                    fn = explored[entry] = x86.explore(image, entry, is_entry, follows_call)
                if site in fn.instructions:
                    functions[entry] = self._facts(fn)
                    break
        self.aligned = aligned
        return functions

    def _facts(self, fn: x86.Function) -> Facts:
        facts = Facts(fn, callers=self.callers.get(fn.entry, 0))
        k = self.file_arg
        for call in fn.calls.values():
            if call.target != self.reporter or not self._names_file(call.arguments[k]):
                continue
            reasons = x86.constants(call.arguments[k - 1])
            if reasons is None:
                facts.unknown_reasons += 1
            else:
                facts.reasons |= reasons
            if k + 1 < len(call.arguments):
                facts.lines |= x86.constants(call.arguments[k + 1]) or set()
        return facts

    # --- step 4: which is which ---

    def _recognise(self) -> Located:
        fs = sorted(self.functions.values(), key=lambda f: f.entry)

        def calls(f: Facts, g: Facts) -> bool:
            return g.entry in f.fn.direct_callees()

        write = self._only([f for f in fs if {UNINITIALIZED, HANDSHAKE_FAILURE, BAD_LENGTH} <= f.reasons],
                           "SSL_write", "reports SSL_R_UNINITIALIZED, SSL_R_SSL_HANDSHAKE_FAILURE and SSL_R_BAD_LENGTH")
        handshakes = [f for f in fs if CONNECTION_TYPE_NOT_SET in f.reasons and f is not write]
        called = [f for f in handshakes if calls(write, f)]
        handshake = self._only(called or handshakes, "SSL_do_handshake", "reports SSL_R_CONNECTION_TYPE_NOT_SET"
                               + (" and is called by SSL_write" if called else ""))
        # The routine SSL_read and SSL_peek share; it may be inlined into them.
        read_internals = [f for f in fs if {UNINITIALIZED, HANDSHAKE_FAILURE} <= f.reasons
                          and BAD_LENGTH not in f.reasons and f is not write
                          and (calls(f, handshake) or CONNECTION_TYPE_NOT_SET in f.reasons)]
        reads = []
        for f in fs:
            if SHOULD_NOT_HAVE_BEEN_CALLED in f.reasons and BAD_LENGTH not in f.reasons:
                inner = [g for g in read_internals if g is not f and calls(f, g)]
                if inner or f in read_internals:
                    reads.append((f, inner[0] if inner else f))
        # SSL_peek returns what SSL_read returns, but only SSL_read then
        # takes it off the session's pending data: it writes to memory.
        consuming = [r for r in reads if r[0].fn.stores]
        read, read_internal = self._only(consuming or reads, "SSL_read", "reports "
                                         "ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED and reads through the internal read "
                                         "routine" + (" and consumes what it read" if consuming else ""),
                                         key=lambda r: r[0])
        found = {"SSL_write": write, "SSL_read": read, "SSL_do_handshake": handshake}
        if len({f.entry for f in found.values()}) != 3:
            raise AnalysisError("SSL_write, SSL_read and SSL_do_handshake came out at the same code",
                                self._inventory())
        if read_internal is not read and not calls(read_internal, handshake):
            raise AnalysisError(f"the internal read routine at {self._at(read_internal.entry)} does not call the "
                                f"SSL_do_handshake found at {self._at(handshake.entry)}", self._inventory())
        args = {"SSL_write": ("ssl", "buffer", "length"), "SSL_read": ("ssl", "buffer", "length"),
                "SSL_do_handshake": ("ssl",)}
        for name, f in found.items():
            self._verify(name, f, args[name])
        handshake_callers = " and ".join(
            what for what, f in (("SSL_write", write), ("the internal read routine", read_internal))
            if calls(f, handshake))
        relations = {
            "SSL_write": f"calls SSL_do_handshake at {self._at(handshake.entry)}" if calls(write, handshake)
            else "contains SSL_do_handshake",
            "SSL_read": (f"calls the internal read routine at {self._at(read_internal.entry)} (reports "
                         f"{_codes(read_internal.reasons)})" if read_internal is not read
                         else "contains the internal read routine")
            + ("; writes the session's pending data, which SSL_peek does not" if consuming else ""),
            "SSL_do_handshake": f"called by {handshake_callers}" if handshake_callers else "",
        }
        evidence = {name: self._describe(f, relations[name], args[name]) for name, f in found.items()}
        return Located({name: self.image.offset(f.entry) for name, f in found.items()}, evidence)

    def _at(self, va: int) -> str:
        off = self.image.offset(va)
        return f"offset {off:#x}" if off is not None else f"address {va:#x}"

    def _only(self, candidates, name: str, rule: str, key=lambda f: f):
        if len(candidates) == 1:
            return candidates[0]
        what = "no function" if not candidates else f"{len(candidates)} functions (at " + ", ".join(
            self._at(key(c).entry) for c in candidates) + ")"
        raise AnalysisError(f"{what} fit {name}, which {rule}", self._inventory())

    def _inventory(self) -> str:
        return (f"error reporter at {self._at(self.reporter)}, file name in argument {self.file_arg + 1}; "
                "functions naming ssl_lib.cc, with the reason codes they report: "
                + "; ".join(f"{self._at(f.entry)} {_codes(f.reasons)}"
                            for f in sorted(self.functions.values(), key=lambda f: f.entry)))

    def _verify(self, name: str, f: Facts, arguments: tuple[str, ...]) -> None:
        """Checks what hooking needs: a real function entry that returns,
        taking its arguments where the probes read them."""
        fn = f.fn
        where = f"the {name} found at {self._at(fn.entry)}"
        if not fn.complete:
            raise AnalysisError(f"{where} could not be disassembled along every path", self._inventory())
        if not fn.returns:
            raise AnalysisError(f"{where} never returns", self._inventory())
        missing = [a for r, a in zip(x86.ARGUMENT_REGISTERS, arguments) if r not in fn.inputs_used]
        if missing:
            raise AnalysisError(f"{where} does not read its {' and '.join(missing)} argument"
                                f"{'s' if len(missing) > 1 else ''} where the probes take "
                                f"{'them' if len(missing) > 1 else 'it'}", self._inventory())
        if not f.callers:
            raise AnalysisError(f"{where} is never called directly", self._inventory())
        if self.image.offset(fn.entry) is None:
            raise AnalysisError(f"{where} lies outside the file", self._inventory())

    def _describe(self, f: Facts, relation: str, arguments: tuple[str, ...]) -> str:
        parts = [f"reports {_codes(f.reasons)} from ssl_lib.cc", relation,
                 f"reads its {', '.join(arguments)} argument{'s' if len(arguments) > 1 else ''}",
                 f"{f.callers} direct caller{'s' if f.callers != 1 else ''}"]
        return "; ".join(p for p in parts if p)


def _codes(reasons: set[int]) -> str:
    return "{" + ", ".join(str(r) for r in sorted(reasons)) + "}"
