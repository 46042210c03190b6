"""Recognising which TLS library a file holds, and where its functions are.

Results are kept per file (device, inode, size, mtime) for the run and per
build (GNU build id, or a content hash) on disk, so a large stripped
executable is analysed once, not on every run or every exec.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from elftools.common.exceptions import ELFError

from . import aead, boringssl, golang, openssl, ring
from .elf import build_id, open_elf, symbol_offsets

OPENSSL = "openssl"                # libssl.so, any version
OPENSSL_STATIC = "openssl-static"  # OpenSSL linked into an executable that exports it (node)
BORINGSSL = "boringssl-stripped"   # BoringSSL linked in, no symbols (Bun)
GNUTLS = "gnutls"
GO_CRYPTO_TLS = "go-crypto-tls"    # Go's crypto/tls, found through Go's function table
RUSTLS_AWS_LC = "rustls-aws-lc"    # rustls on aws-lc-rs: hooked at aws-lc's AEAD functions
RUSTLS_RING = "rustls-ring"        # rustls on ring: hooked at ring's AEAD algorithms
# Hooked at their AEAD layer: rustls, and any TLS stack on aws-lc or BoringSSL.
AEAD_KINDS = (RUSTLS_AWS_LC, RUSTLS_RING, "ring-aead", "aws-lc-aead", "boringssl-aead")

OPENSSL_FUNCTIONS = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex", "SSL_do_handshake", "SSL_free")
GNUTLS_FUNCTIONS = ("gnutls_record_send", "gnutls_record_recv", "gnutls_handshake", "gnutls_deinit")
_ANALYSIS_VERSION = "4"  # 4: Go crypto/tls and rustls are TLS files
# Files found to hold no TLS code, by device, inode, size and mtime: a
# program seen before is known without opening it, and never held (hold.py).
_KNOWN_FILES = f"files-without-tls-{_ANALYSIS_VERSION}.json"  # what "no TLS" means changes with it
_MAX_KNOWN_FILES = 8192
# How each kind's functions are found, unless the library says otherwise.
METHODS = {OPENSSL: "exported symbols", OPENSSL_STATIC: "exported symbols", GNUTLS: "exported symbols",
           BORINGSSL: "ssl_lib.cc error calls: reason codes and data flow"}


@dataclass
class TlsLibrary:
    kind: str
    functions: dict[str, int]  # function name -> file offset
    build_id: str | None = None
    analysis_seconds: float = 0.0
    from_cache: bool = False
    evidence: dict[str, str] = field(default_factory=dict)  # function -> how it was identified
    # Located functions only: function -> its first bytes, hex. Another file
    # with the same build id (`bun build --compile` output) is hooked at the
    # cached offsets only if the same code is there.
    entry_bytes: dict[str, str] = field(default_factory=dict)
    # Functions whose result is read at each return instruction instead of
    # by a uretprobe: function name -> file offsets of those instructions.
    returns: dict[str, list[int]] = field(default_factory=dict)
    method: str = ""

    @property
    def how_found(self) -> str:
        return self.method or METHODS.get(self.kind, "")


_LIBRARY_FIELDS = frozenset(TlsLibrary.__dataclass_fields__)


class NeedsAnalysis(Exception):
    """A quick look could not answer: the file must be analysed."""


class AnalysisFailed(Exception):
    """The file holds TLS code, but its functions could not be located.

    str() is one sentence for the user; `detail` what a bug report needs."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.detail = detail


@dataclass
class _Entry:
    library: TlsLibrary | None
    error: str | None = None
    detail: str = ""


def default_cache_dir() -> Path:
    env = os.environ.get("AGENTSIGHT_CACHE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/agentsight")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentsight"


@dataclass
class LibraryAnalyzer:
    cache_dir: Path | None = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._by_file: dict[tuple, _Entry] = {}
        self._by_build: dict[str, dict] = {}
        self._without_tls: dict[str, float] = {}  # file id -> when last seen
        self._without_tls_added = False
        self.cache_error: str | None = None
        if self.cache_dir is not None:
            self._by_build = self._read("tls-libraries.json")
            self._without_tls = self._read(_KNOWN_FILES)

    def _read(self, name: str) -> dict:
        assert self.cache_dir is not None
        try:
            content = orjson.loads((self.cache_dir / name).read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            self.cache_error = f"ignoring unreadable cache {self.cache_dir / name}: {exc}"
            return {}
        return content if isinstance(content, dict) else {}

    def analyze(self, path: str, shown_path: str | None = None, quick: bool = False) -> TlsLibrary | None:
        """The TLS library in `path`, or None if it holds none.

        `shown_path` is remembered for TLS files, to hook them at start on
        later runs. With `quick`, only what is known already is answered;
        anything else raises NeedsAnalysis. Raises AnalysisFailed when the
        file holds TLS code that cannot be located, OSError when it cannot be
        read."""
        st = os.stat(path)
        file_key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        # Not locked while analysing: a quick answer for a known file must not
        # wait behind a slow analysis of another; analysing twice is harmless.
        with self._lock:
            entry = self._by_file.get(file_key)
        if entry is None and _file_id(st) in self._without_tls:
            entry = _Entry(None)
        if entry is None:
            entry = self._analyze(path, shown_path, quick)
            with self._lock:
                self._by_file[file_key] = entry
                if entry.library is None and not entry.error:
                    self._without_tls[_file_id(st)] = time.time()
                    self._without_tls_added = True
        if entry.error:
            raise AnalysisFailed(entry.error, entry.detail)
        return entry.library

    def _analyze(self, path: str, shown_path: str | None, quick: bool) -> _Entry:
        started = time.monotonic()
        bid = None
        try:
            with open(path, "rb") as f:
                try:
                    elf = open_elf(f)
                except ELFError:
                    return _Entry(None)
                bid = build_id(elf)
                cached = self._cached(bid)
                if cached is not None and _same_code(f, cached.library):
                    self._seen_at(bid, cached, shown_path)
                    return cached
                if quick:
                    raise NeedsAnalysis(path)
                # Go first: its function table answers in milliseconds, where
                # the symbol table of an unstripped Go program takes a second.
                library = _go(path, bid)
                if library is None:
                    functions = symbol_offsets(elf, OPENSSL_FUNCTIONS + GNUTLS_FUNCTIONS)
                    library = _from_symbols(_is_shared_library(elf), functions, bid)
                if library is not None and library.kind in (OPENSSL, OPENSSL_STATIC):
                    library.functions = openssl.reroute(f, library.functions)
                if library is None:
                    try:
                        library = self._stripped_boringssl(f, path, bid)
                    except AnalysisFailed:
                        # Its record layer may still be hooked underneath;
                        # if not, BoringSSL's reason is the one to give.
                        try:
                            library = _aead(path, bid)
                        except AnalysisFailed:
                            library = None
                        if library is None:
                            raise
                if library is None:
                    library = _aead(path, bid)
                if library is None:
                    library = _ring(path, bid)
        except AnalysisFailed as exc:
            entry = _Entry(None, str(exc), exc.detail)
            self._remember(bid, entry, shown_path)
            return entry
        if library is not None:
            library.analysis_seconds = time.monotonic() - started
        entry = _Entry(library)
        # A binary without a build id is known by its content hash instead.
        self._remember(library.build_id if library else bid, entry, shown_path)
        return entry

    def files_without_tls(self) -> list[tuple[int, int]]:
        """(device, inode) of the files found, now or on earlier runs, to hold no TLS code."""
        found = []
        with self._lock:
            ids = list(self._without_tls)
        for fid in ids:
            try:
                dev, ino = fid.split(":")[:2]
                found.append((int(dev), int(ino)))
            except ValueError:
                continue
        return found

    def flush(self) -> None:
        """Writes down the files found to hold no TLS code since the last flush."""
        if not self._without_tls_added or self.cache_dir is None:
            return
        self._without_tls_added = False
        with self._lock:
            newest = sorted(self._without_tls.items(), key=lambda kv: kv[1])[-_MAX_KNOWN_FILES:]
            self._without_tls = dict(newest)
        self._write(_KNOWN_FILES, self._without_tls)

    def known_paths(self) -> list[str]:
        """Where TLS executables analysed on earlier runs were seen."""
        paths = []
        for record in self._by_build.values():
            if record.get("library"):
                paths += record.get("paths", [])
        return paths

    def _stripped_boringssl(self, f, path: str, bid: str | None) -> TlsLibrary | None:
        if bid is None:
            # No build id: identify the build by its content, read in pieces
            # (a 300 MB executable is not held in memory at once).
            digest = hashlib.sha256()
            marked = False
            tail = b""
            f.seek(0)
            while piece := f.read(8 << 20):
                marked = marked or boringssl.FILE_NAME in tail + piece[:len(boringssl.FILE_NAME)] \
                    or boringssl.FILE_NAME in piece
                tail = piece[-len(boringssl.FILE_NAME):]
                digest.update(piece)
            if not marked:
                return None
            bid = "sha256:" + digest.hexdigest()
            cached = self._cached(bid)
            if cached is not None:
                if cached.error:
                    raise AnalysisFailed(cached.error, cached.detail)
                return cached.library
        report = "please report this with the output of `agentsight probes --binary` on this file"
        try:
            found = boringssl.locate(path)
        except boringssl.NotBoringSSL:
            return None
        except boringssl.AnalysisError as exc:
            raise AnalysisFailed(f"BoringSSL is linked in, but {exc}, so it is not hooked ({report})",
                                 exc.detail) from None
        except Exception as exc:  # noqa: BLE001 - odd input must not take the capture down
            raise AnalysisFailed(f"BoringSSL is linked in, but analysing it failed ({type(exc).__name__}: "
                                 f"{exc}), so it is not hooked ({report})") from None
        return TlsLibrary(BORINGSSL, found.functions, bid, evidence=found.evidence,
                          entry_bytes={name: _read_at(f, off).hex() for name, off in found.functions.items()})

    def _cached(self, bid: str | None) -> _Entry | None:
        if bid is None:
            return None
        record = self._by_build.get(f"{_ANALYSIS_VERSION}:{bid}")
        if record is None:
            return None
        if record.get("error"):
            return _Entry(None, record["error"], record.get("detail", ""))
        lib = record.get("library")
        if not lib:
            return _Entry(None)
        try:
            # Fields this version does not know (written by another) are left out.
            known = {k: v for k, v in lib.items() if k in _LIBRARY_FIELDS}
            return _Entry(TlsLibrary(**{**known, "from_cache": True}))
        except TypeError:
            return None  # not a record this version can use: analyse again

    def _remember(self, bid: str | None, entry: _Entry, shown_path: str | None) -> None:
        if bid is None or self.cache_dir is None:
            return
        lib = asdict(entry.library) if entry.library else None
        if lib:
            lib.pop("from_cache")
        self._by_build[f"{_ANALYSIS_VERSION}:{bid}"] = {"library": lib, "error": entry.error,
                                                        "detail": entry.detail, "paths": []}
        self._seen_at(bid, entry, shown_path, save=True)

    def _seen_at(self, bid: str | None, entry: _Entry, shown_path: str | None, save: bool = False) -> None:
        """Remembers where a TLS executable lives, so later runs hook it from
        the start: a program launched then is covered from its first call."""
        record = self._by_build.get(f"{_ANALYSIS_VERSION}:{bid}")
        if record is None or self.cache_dir is None:
            return
        lib = entry.library
        worth_keeping = entry.error or (lib and lib.kind != OPENSSL)  # shared libssl is found anyway
        paths = record.setdefault("paths", [])
        if lib and lib.kind != OPENSSL and shown_path and shown_path.startswith("/") \
                and not shown_path.startswith("/proc/") and shown_path not in paths:
            paths.append(shown_path)
            del paths[:-8]
            save = True
        if save and worth_keeping:
            self._save()

    def _save(self) -> None:
        self._write("tls-libraries.json", self._by_build)

    def _write(self, name: str, content: dict) -> None:
        assert self.cache_dir is not None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps(content))
            os.replace(tmp, self.cache_dir / name)
        except OSError as exc:
            self.cache_error = f"cannot write the analysis cache in {self.cache_dir}: {exc.strerror}"


_ENTRY_BYTES = 16


def _read_at(f, offset: int) -> bytes:
    f.seek(offset)
    return f.read(_ENTRY_BYTES)


def _same_code(f, library: TlsLibrary | None) -> bool:
    """Whether the file has the code the cached analysis found at its offsets."""
    if library is None or not library.entry_bytes:
        return True
    return all(_read_at(f, library.functions[name]).hex() == expected
               for name, expected in library.entry_bytes.items() if name in library.functions)


def _file_id(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _go(path: str, bid: str | None) -> TlsLibrary | None:
    try:
        found = golang.locate(path)
    except golang.LocateError as exc:
        raise AnalysisFailed(f"Go crypto/tls found but not hooked: {exc}") from None
    if found is None:
        return None
    return TlsLibrary(GO_CRYPTO_TLS, found.functions, bid, returns=found.returns,
                      method=f"Go function table ({found.go_version}), returns by disassembly")


def _aead(path: str, bid: str | None) -> TlsLibrary | None:
    try:
        found = aead.locate(path)
    except aead.LocateError as exc:
        raise AnalysisFailed(f"AEAD functions found but not told apart: {exc}") from None
    if found is None:
        return None
    kind = RUSTLS_AWS_LC if found.rustls and found.library == "aws-lc" else f"{found.library}-aead"
    return TlsLibrary(kind, found.functions, bid,
                      method="aead.c error reason codes; keys tied to the socket their thread last read")


def _ring(path: str, bid: str | None) -> TlsLibrary | None:
    try:
        found = ring.locate(path)
    except ring.LocateError as exc:
        raise AnalysisFailed(f"ring found but its AEAD algorithms not located: {exc}") from None
    if found is None:
        return None
    return TlsLibrary(RUSTLS_RING if found.rustls else "ring-aead", found.functions, bid,
                      method="ring's Algorithm statics; keys tied to the socket their thread last read "
                      "when a key was made")


def _is_shared_library(elf) -> bool:
    """A library (has a soname), as opposed to an executable, PIE or not."""
    dynamic = elf.get_section_by_name(".dynamic")
    return dynamic is not None and any(t.entry.d_tag == "DT_SONAME" for t in dynamic.iter_tags())


def _from_symbols(shared: bool, functions: dict[str, int], bid: str | None) -> TlsLibrary | None:
    openssl = {k: v for k, v in functions.items() if k.startswith("SSL_")}
    if "SSL_write" in openssl or "SSL_write_ex" in openssl:
        kind = OPENSSL if shared else OPENSSL_STATIC
        return TlsLibrary(kind, openssl, bid)
    gnutls = {k: v for k, v in functions.items() if k.startswith("gnutls_")}
    if "gnutls_record_send" in gnutls:
        return TlsLibrary(GNUTLS, gnutls, bid)
    return None
