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
    lines: dict[str, list[int]] = field(default_factory=dict)  # name -> ssl_lib.cc lines of its error calls


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
        if off is None:
            return False
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
        return found is not None and bool(found & self.names)

    # --- step 2 and 3: the functions around that code ---

    def _functions_around(self, sites: list[int]) -> dict[int, Facts]:
        found, self.callers = self._containing(sites)
        return {fn.entry: self._facts(fn) for fn in found.values()}

    def _containing(self, sites: list[int]) -> tuple[dict[int, x86.Function], dict[int, list[int]]]:
        """The function each site lies in (site -> function), for the sites
        whose function could be found, and the direct calls into the code
        before each site (target -> call sites). A function's entry is where
        verified direct calls lead, the nearest one before the site whose
        control flow reaches it."""
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
            off = image.offset(va)
            if va not in callers or off is None:
                return False
            return image.data[off:off + 4] in _PROLOGUES and any(x86.decodes_at(image, s) for s in callers[va][:4])

        found: dict[int, x86.Function] = {}
        explored: dict[int, x86.Function] = {}
        for site in sites:
            done = next((fn for fn in explored.values() if site in fn.instructions), None)
            if done is not None:
                found[site] = done
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
                    found[site] = fn
                    break
        return found, callers

    def _facts(self, fn: x86.Function) -> Facts:
        facts = Facts(fn, callers=len(self.callers.get(fn.entry, ())))
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

        def reaches(f: Facts, g: Facts) -> bool:
            """f calls g, or has g's code inlined: the same error calls, line for line."""
            return g.entry in f.fn.direct_callees() or bool(g.lines) and g.lines <= f.lines

        write = self._only([f for f in fs if {UNINITIALIZED, HANDSHAKE_FAILURE, BAD_LENGTH} <= f.reasons],
                           "SSL_write", "reports SSL_R_UNINITIALIZED, SSL_R_SSL_HANDSHAKE_FAILURE and SSL_R_BAD_LENGTH")
        # SSL_do_handshake reports none of what its callers report when it fails.
        handshake = self._only([f for f in fs if CONNECTION_TYPE_NOT_SET in f.reasons
                                and not f.reasons & {UNINITIALIZED, HANDSHAKE_FAILURE}],
                               "SSL_do_handshake", "reports SSL_R_CONNECTION_TYPE_NOT_SET")
        if not reaches(write, handshake):
            raise AnalysisError(f"the SSL_write found at {self._at(write.entry)} does not call the "
                                f"SSL_do_handshake found at {self._at(handshake.entry)}", self._inventory())
        # The routine SSL_read and SSL_peek share, perhaps inlined into them.
        read_internals = [f for f in fs if {UNINITIALIZED, HANDSHAKE_FAILURE} <= f.reasons
                          and BAD_LENGTH not in f.reasons and reaches(f, handshake)]
        peeks = [(f, next((g for g in read_internals if reaches(f, g)), None)) for f in fs
                 if SHOULD_NOT_HAVE_BEEN_CALLED in f.reasons and BAD_LENGTH not in f.reasons]
        peeks = [(f, g) for f, g in peeks if g is not None]
        # SSL_read is SSL_peek followed by taking what it returned off the
        # session: after passing its buffer on to be filled, it writes memory.
        consuming = [(f, g) for f, g in peeks if f.fn.stores_after.get(x86.FILLED)]
        if consuming:
            read, read_internal = self._only(consuming, "SSL_read", "reports ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED, "
                                             "reads through the internal read routine and consumes what it read",
                                             key=lambda r: r[0])
            how = "consumes what it read"
        else:
            peek, read_internal = self._only(peeks, "SSL_peek", "reports ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED and reads "
                                             "through the internal read routine", key=lambda r: r[0])
            read = self._caller_consuming(peek)
            how = (f"passes its arguments on to SSL_peek at {self._at(peek.entry)} (which reports "
                   f"{_codes(peek.reasons)} and reads through the internal read routine), then consumes what it read")
        found = {"SSL_write": write, "SSL_read": read, "SSL_do_handshake": handshake}
        if len({f.entry for f in found.values()}) != 3:
            raise AnalysisError("SSL_write, SSL_read and SSL_do_handshake came out at the same code",
                                self._inventory())
        args = {"SSL_write": ("ssl", "buffer", "length"), "SSL_read": ("ssl", "buffer", "length"),
                "SSL_do_handshake": ("ssl",)}
        for name, f in found.items():
            self._verify(name, f, args[name])

        def relation(f: Facts, g: Facts, what: str) -> str:
            return f"calls {what} at {self._at(g.entry)}" if g.entry in f.fn.direct_callees() else f"contains {what}"

        callers_of_handshake = [what for what, f in (("SSL_write", write), ("the internal read routine", read_internal))
                                if reaches(f, handshake)]
        relations = {
            "SSL_write": relation(write, handshake, "SSL_do_handshake"),
            "SSL_read": how if not consuming else (
                relation(read, read_internal, f"the internal read routine (reports {_codes(read_internal.reasons)})")
                if read_internal is not read else "contains the internal read routine") + f"; {how}",
            "SSL_do_handshake": "called by (or inlined into) " + " and ".join(callers_of_handshake),
        }
        evidence = {name: self._describe(f, relations[name], args[name]) for name, f in found.items()}
        offsets = {name: self.image.offset(f.entry) for name, f in found.items()}
        return Located({name: off for name, off in offsets.items() if off is not None}, evidence,
                       {name: sorted(f.lines) for name, f in found.items()})

    def _caller_consuming(self, peek: Facts) -> Facts:
        """SSL_read where it calls SSL_peek rather than containing it: the
        caller that passes its own three arguments on and then consumes."""
        sites = [s for s in self.callers.get(peek.entry, []) if s not in peek.fn.instructions]
        containing, callers = self._containing(sites)
        readers: dict[int, Facts] = {}
        own = [frozenset({x86.Input(r)}) for r in x86.ARGUMENT_REGISTERS[:3]]
        for site, fn in containing.items():
            call = fn.calls.get(site)
            if call is not None and call.arguments[:3] == own and fn.stores_after.get(site):
                readers[fn.entry] = Facts(fn, callers=len(callers.get(fn.entry, ())))
        return self._only(list(readers.values()), "SSL_read", "passes its arguments on to the SSL_peek found at "
                          f"{self._at(peek.entry)} and then consumes what it read")

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
                            + (f" and {f.unknown_reasons} not known" if f.unknown_reasons else "")
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
        def used(register: int) -> bool:
            if register in fn.inputs_used:
                return True
            # Passed on unchanged to a function of ours that reads it there (SSL_read to SSL_peek).
            return any(self._reads_argument(callee, i) for callee, i, r in fn.passed_on if r == register)

        missing = [a for r, a in zip(x86.ARGUMENT_REGISTERS, arguments) if not used(r)]
        if missing:
            raise AnalysisError(f"{where} does not read its {' and '.join(missing)} argument"
                                f"{'s' if len(missing) > 1 else ''} where the probes take "
                                f"{'them' if len(missing) > 1 else 'it'}", self._inventory())
        if not f.callers:
            raise AnalysisError(f"{where} is never called directly", self._inventory())
        if self.image.offset(fn.entry) is None:
            raise AnalysisError(f"{where} lies outside the file", self._inventory())

    def _reads_argument(self, entry: int, position: int) -> bool:
        callee = self.functions.get(entry)
        return callee is not None and x86.ARGUMENT_REGISTERS[position] in callee.fn.inputs_used

    def _describe(self, f: Facts, relation: str, arguments: tuple[str, ...]) -> str:
        parts = [f"reports {_codes(f.reasons)} from ssl_lib.cc" if f.reasons else "", relation,
                 f"reads its {', '.join(arguments)} argument{'s' if len(arguments) > 1 else ''}",
                 f"{f.callers} direct caller{'s' if f.callers != 1 else ''}"]
        return "; ".join(p for p in parts if p)


def _codes(reasons: set[int]) -> str:
    return "{" + ", ".join(str(r) for r in sorted(reasons)) + "}"
