"""Secrets kept out of what agentsight writes and shows.

Two forms, one set of patterns:

* masking, for captures: every byte of a secret becomes ``*``, so lengths,
  Content-Length and chunk framing stay right and a masked capture still
  parses and replays (`mask_bytes`, `mask_text`, `mask_argv`; HTTP/2 header
  blocks, which HPACK compresses, in h2mask.py);
* redaction, for what the analyzers made of it: a secret becomes
  ``[REDACTED]`` (`redact_text`, `redact_json`, `redact_headers`).

What counts as a secret: the values of headers and JSON fields named like
credentials (Authorization, X-Api-Key, Cookie, "api_key", "password", ...),
query parameters named so (``?key=``, ``&token=``), the password of a URL's
user info, well-known token shapes (``sk-...``, ``AIza...``, ``ghp_...``,
``AKIA...``, Bearer and Basic credentials), and on command lines the values
of ``-u user:pass``, ``--password=...``, ``--token ...`` and environment
assignments such as ``GITHUB_TOKEN=...``.

`Redactor` applies all of it to events on their way to the sinks.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import ahocorasick

from ..events import Exec, HttpExchange, LlmCall, LlmResponse, TlsData, ToolCall, WebSocketSession

REDACTED = "[REDACTED]"

# header and JSON key names whose value is a secret (compared lower-case, without - and _)
_SECRET_KEYS = frozenset((
    "authorization", "proxyauthorization", "xapikey", "apikey", "xgoogapikey", "apitoken",
    "cookie", "setcookie", "password", "passwd", "secret", "clientsecret", "accesstoken",
    "refreshtoken", "idtoken", "sessiontoken", "xauthtoken", "xamzsecuritytoken", "privatekey",
    "openaiapikey", "anthropicapikey", "geminiapikey", "googleapikey", "awssecretaccesskey",
    "authtoken", "secretkey", "accesskey", "apisecret", "credentials", "xsubscriptiontoken",
    "xcsrftoken", "xxsrftoken", "ocpapimsubscriptionkey",
))
_QUERY_KEYS = ("key", "api_key", "apikey", "api-key", "access_token", "token", "auth", "password", "secret",
               "client_secret", "sig", "signature", "x-goog-api-key", "code", "refresh_token", "id_token")
# Words that make an environment variable's or an option's value a secret.
_SECRET_WORDS = frozenset(("token", "secret", "password", "passwd", "pass", "pwd", "apikey", "auth",
                           "credential", "credentials", "privatekey", "accesskey", "secretkey"))
_SECRET_OPTIONS = ("password", "passwd", "pass", "token", "api-key", "apikey", "secret", "access-token",
                   "auth-token", "client-secret", "private-key")


def is_secret_field(name: str) -> bool:
    """A header or JSON field name whose value is a secret."""
    r = _field_cache.get(name)
    if r is None:
        flat = name.lower().replace("-", "").replace("_", "")
        r = flat in _SECRET_KEYS or flat.endswith(_SECRET_SUFFIXES)
        if len(_field_cache) < 4096:
            _field_cache[name] = r
    return r


def is_secret_variable(name: str) -> bool:
    """An environment variable or option name whose value is a secret
    (GITHUB_TOKEN, DB_PASS, OPENAI_API_KEY, --password): broader than
    field names, where "token" also names a model's output tokens."""
    r = _variable_cache.get(name)
    if r is None:
        r = is_secret_field(name) or any(w in _SECRET_WORDS for w in re.split(r"[-_]", name.lower()))
        if len(_variable_cache) < 4096:
            _variable_cache[name] = r
    return r


_SECRET_SUFFIXES = ("apikey", "secretkey", "accesskey", "privatekey", "password", "passwd", "secret",
                    "accesstoken", "refreshtoken", "authtoken", "sessiontoken", "bearertoken", "apitoken")
_field_cache: dict[str, bool] = {}
_variable_cache: dict[str, bool] = {}

_TOKEN = (r"sk-ant-[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]{16,}|AIza[0-9A-Za-z_\-]{30,}"
          r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9\-]{10,}"
          r"|AKIA[0-9A-Z]{16}")
_QUERY = r"(?i:[?&;](?:" + "|".join(re.escape(k) for k in _QUERY_KEYS) + r")=)"
_OPTIONS = "|".join(re.escape(o) for o in _SECRET_OPTIONS)


# Words a secret's name holds: fields and variables whose name holds none of
# them are never looked at (most payloads), so the costly patterns seldom run.
_NAME_WORDS = ("key", "secret", "passw", "pwd", "pass", "token", "auth", "cookie", "credential")
_NAME = r"[A-Za-z0-9_-]{0,40}(?i:key|secret|passw|pwd|pass|token|auth|cookie|credential)[A-Za-z0-9_-]{0,40}"
# A pattern runs only if the lower-cased payload holds at least one word of
# each of its groups: most payloads skip most patterns.
Prechecks = tuple[tuple[str, ...], ...]  # written as words; compiled into frozensets


def _patterns(text: bool) -> list[tuple[re.Pattern[Any], Callable[[re.Match[Any]], bool] | None,
                                        tuple[frozenset[Any], ...]]]:
    """(pattern, test, prechecks): group "v" of a match is a secret when
    test(match) holds (or always); see _TRIGGERS for the prechecks."""
    sources: list[tuple[str, Callable[[re.Match[Any]], bool] | None, Prechecks]] = [
        # a header line, in a capture or one argv element ("x-api-key: ...")
        (rf"(?m)^(?P<n>{_NAME}):[ \t]*(?P<v>[^\r\n]+)", _field, (_NAME_WORDS,)),
        # a JSON string field, also as a string inside JSON (\"api_key\": \"...\")
        (rf'"(?P<n>{_NAME})\\*"\s*:\s*\\*"(?P<v>(?:[^"\\\r\n]|\\(?!\\*")){{1,4096}})', _field,
         (('":',), _NAME_WORDS)),
        (r"[Bb](?:earer|asic) (?P<v>[A-Za-z0-9._~+/=\-]{8,})", None, (("earer ", "asic "),)),
        (rf"(?P<v>{_TOKEN})", None, (("sk-", "aiza", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
                                       "xox", "akia"),)),
        (rf"{_QUERY}(?P<v>[^&#\s\"']+)", None, (("=",), ("?", "&", ";"))),
        (r"://[^/\s:@]{1,256}:(?P<v>[^/\s@]{1,256})@", None, (("://",),)),  # https://user:password@host
        (r"(?<!\S)(?:-u|--user)(?:\s+|=)[^\s:]{1,256}:(?P<v>\S+)", None, (("-u",),)),  # curl -u user:pass
        (rf"(?<!\S)--(?:{_OPTIONS})(?:=|\s+)(?P<v>[^\s-]\S*)", None, (("--",), _NAME_WORDS)),
        (rf"(?<![\w-])(?P<n>{_NAME})=(?P<v>'[^']*'|\"[^\"]*\"|[^\s;&|]+)", _variable, (("=",), _NAME_WORDS)),
    ]
    if text:
        return [(re.compile(p), test, tuple(frozenset(g) for g in pre)) for p, test, pre in sources]
    return [(re.compile(p.encode()), test, tuple(frozenset(w.encode() for w in g) for g in pre))
            for p, test, pre in sources]


def _field(m: re.Match[Any]) -> bool:
    name = m.group("n")
    return is_secret_field(name if isinstance(name, str) else name.decode("latin-1"))


def _variable(m: re.Match[Any]) -> bool:
    name = m.group("n")
    return is_secret_variable(name if isinstance(name, str) else name.decode("latin-1"))


_TEXT_PATTERNS = _patterns(text=True)
_BYTES_PATTERNS = _patterns(text=False)
_TEXT_WORDS = frozenset().union(*(g for _, _, pre in _TEXT_PATTERNS for g in pre))
_BYTES_WORDS = frozenset().union(*(g for _, _, pre in _BYTES_PATTERNS for g in pre))


def _finder(words: frozenset[Any]) -> tuple[Any, tuple[Any, ...]]:
    """The trigger words found in a lower-cased payload, in one pass: an
    Aho-Corasick automaton for the words that seldom occur, and a plain
    search (memchr speed, or an early hit) for the one- and two-character
    ones that occur all the time and would make the automaton report every
    occurrence."""
    common = tuple(w for w in words if len(w) <= 2 and w[:1] not in ("-", b"-"))
    automaton = ahocorasick.Automaton()
    for w in words - set(common):
        automaton.add_word(w if isinstance(w, str) else w.decode("latin-1"), w)
    automaton.make_automaton()
    return automaton, common


_TEXT_FINDER = _finder(_TEXT_WORDS)
_BYTES_FINDER = _finder(_BYTES_WORDS)


# The patterns to run for each set of trigger words found, worked out once.
_PLANS: dict[tuple[bool, frozenset[Any]], list[tuple[re.Pattern[Any], Callable[[re.Match[Any]], bool] | None]]] = {}
MAX_PLANS = 4096


def _plan(found: frozenset[Any], text: bool) -> list[tuple[re.Pattern[Any], Callable[[re.Match[Any]], bool] | None]]:
    plan = _PLANS.get((text, found))
    if plan is None:
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        patterns = _TEXT_PATTERNS if text else _BYTES_PATTERNS
        plan = _PLANS[(text, found)] = [(pattern, test) for pattern, test, prechecks in patterns
                                        if not any(found.isdisjoint(group) for group in prechecks)]
    return plan


def _spans(s: Any) -> list[tuple[int, int]]:
    lower = s.lower()
    text = isinstance(s, str)
    automaton, common = _TEXT_FINDER if text else _BYTES_FINDER
    words = {w for _, w in automaton.iter(lower if text else lower.decode("latin-1"))}
    words.update([w for w in common if w in lower])
    if not words:
        return []
    found = frozenset(words)
    spans = []
    for pattern, test in _plan(found, text):
        for m in pattern.finditer(s):
            if test is None or test(m):
                start, end = m.span("v")
                if end > start:
                    spans.append((start, end))
    return spans


def mask_bytes(data: bytes) -> bytes:
    """`data` with every secret overwritten by as many ``*``."""
    if not data:
        return data
    spans = _spans(data)
    if not spans:
        return data
    out = bytearray(data)
    for start, end in spans:
        out[start:end] = b"*" * (end - start)
    return bytes(out)


def mask_text(s: str) -> str:
    """`s` with every secret overwritten by as many ``*``."""
    if not s or not _may_hold_secret(s):
        return s
    spans = _spans(s)
    if not spans:
        return s
    chars = list(s)
    for start, end in spans:
        chars[start:end] = "*" * (end - start)
    return "".join(chars)


def _argv_secret_follows(arg: str) -> str | None:
    """For an option whose value is the next argument: how to mask it."""
    if arg in ("-u", "--user", "--proxy-user", "-U"):
        return "userinfo"
    if arg.startswith("--") and arg[2:].lower() in _SECRET_OPTIONS:
        return "whole"
    if arg in ("-H", "--header"):
        return None  # the value is a header line, which mask_text sees whole
    return None


def mask_argv(argv: list[str]) -> list[str]:
    """A command line with the secrets in it masked, element by element."""
    out = []
    follows: str | None = None
    for arg in argv:
        masked = mask_text(arg)
        if follows == "userinfo" and ":" in arg:
            user, _, secret = arg.partition(":")
            masked = user + ":" + "*" * len(secret)
        elif follows == "whole":
            masked = "*" * len(arg)
        follows = _argv_secret_follows(arg)
        out.append(masked)
    return out


def _may_hold_secret(s: str) -> bool:
    """False for text no pattern can match (most of what a model writes):
    one-character tests run at memchr speed."""
    return ("-" in s or "_" in s or ":" in s or "=" in s or "earer " in s or "asic " in s or "AKIA" in s
            or "AIza" in s)


def redact_text(s: str) -> str:
    """`s` with every secret replaced by [REDACTED]."""
    if not s or not _may_hold_secret(s):
        return s
    spans = _spans(s)
    if not spans:
        return s
    spans.sort()
    parts = []
    pos = 0
    for start, end in spans:
        if start < pos:  # overlaps the previous secret
            start = pos
            if end <= pos:
                continue
        parts.append(s[pos:start])
        parts.append(REDACTED)
        pos = end
    parts.append(s[pos:])
    return "".join(parts)


def redact_json(o: Any) -> Any:
    """A copy of a JSON value with secret-named fields and secret-looking
    strings redacted."""
    t = type(o)
    if t is str:
        return redact_text(o)
    if t is dict:
        return {k: (REDACTED if (type(v) is str and is_secret_field(k)) else redact_json(v)) for k, v in o.items()}
    if t is list:
        return [redact_json(v) for v in o]
    return o


def redact_headers(h: dict[str, str]) -> dict[str, str]:
    return {k: REDACTED if is_secret_field(k) else redact_text(v) for k, v in h.items()}


def _redact_response(r: LlmResponse) -> LlmResponse:
    return dataclasses.replace(
        r, text=redact_text(r.text), thinking=redact_text(r.thinking) if r.thinking is not None else None,
        tool_calls=[ToolCall(t.id, t.name, redact_json(t.arguments)) for t in r.tool_calls])


class Redactor:
    """Events as the sinks get them: captures masked, analysis redacted.

    `view(event)` returns the event itself when it holds nothing to hide,
    else a copy; the event given is never changed, so correlation and the
    analyzers keep working on what was really seen. It follows HTTP/2
    connections frame by frame, so it must see every `ssl` event of a
    capture, in order."""

    def __init__(self) -> None:
        self.errors = 0
        from .h2mask import H2Masker  # (it uses this module's patterns)

        self._h2 = H2Masker()  # HTTP/2 header blocks: HPACK hides them from the patterns

    def view(self, ev: Any) -> Any:
        t = type(ev)
        try:
            if t is TlsData:
                h2 = self._h2.mask(ev)
                if h2 is not None:
                    return ev if h2 == ev.data else dataclasses.replace(ev, data=h2)
                masked = mask_bytes(ev.data)
                return ev if masked is ev.data else dataclasses.replace(ev, data=masked)
            if t is Exec:
                argv = mask_argv(ev.argv)
                return ev if argv == ev.argv else dataclasses.replace(ev, argv=argv)
            if t is LlmCall:
                return self._llm(ev)
            if t is HttpExchange:
                path = redact_text(ev.path)
                return ev if path == ev.path else dataclasses.replace(ev, path=path)
            if t is WebSocketSession:
                path = redact_text(ev.path)
                reason = redact_text(ev.close_reason) if ev.close_reason else ev.close_reason
                return ev if path == ev.path and reason == ev.close_reason else dataclasses.replace(
                    ev, path=path, close_reason=reason)
        except Exception:  # never leak a secret because of a bug: drop the payload
            self.errors += 1
            return self._blank(ev)
        return ev

    def _llm(self, ev: LlmCall) -> LlmCall:
        return dataclasses.replace(
            ev, path=redact_text(ev.path), request=redact_json(ev.request), response=_redact_response(ev.response),
            error=redact_json(ev.error) if ev.error is not None else None,
            request_headers=redact_headers(ev.request_headers), response_headers=redact_headers(ev.response_headers))

    @staticmethod
    def _blank(ev: Any) -> Any:
        if isinstance(ev, TlsData):
            return dataclasses.replace(ev, data=b"*" * len(ev.data))
        if isinstance(ev, Exec):
            return dataclasses.replace(ev, argv=["*" * len(a) for a in ev.argv])
        if isinstance(ev, LlmCall):
            return dataclasses.replace(ev, request=REDACTED, response=LlmResponse(text=REDACTED),
                                       request_headers={}, response_headers={}, path=REDACTED)
        if isinstance(ev, HttpExchange):
            return dataclasses.replace(ev, path=REDACTED)
        if isinstance(ev, WebSocketSession):
            return dataclasses.replace(ev, path=REDACTED, close_reason=None)
        return ev


class RedactStage:
    """The Redactor as the last analysis stage (the `Pipeline`'s redact=True)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor = redactor or Redactor()

    def feed(self, ev: Any) -> list[Any]:
        return [self.redactor.view(ev)]

    def close(self) -> list[Any]:
        return []
