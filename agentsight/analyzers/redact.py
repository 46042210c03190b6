"""Stage 4: redaction of secrets in ``llm_call`` and ``http`` events."""
from __future__ import annotations

import re
from typing import Any

from .base import Event, Stats

REDACTED = "[REDACTED]"

# header and JSON key names whose value is a secret (compared lower-case, without - and _)
_SECRET_KEYS = frozenset((
    "authorization", "proxyauthorization", "xapikey", "apikey", "xgoogapikey", "apitoken",
    "cookie", "setcookie", "password", "passwd", "secret", "clientsecret", "accesstoken",
    "refreshtoken", "idtoken", "sessiontoken", "xauthtoken", "xamzsecuritytoken", "privatekey",
    "openaiapikey", "anthropicapikey", "geminiapikey", "googleapikey", "awssecretaccesskey",
))
_QUERY_KEYS = ("key", "api_key", "apikey", "api-key", "access_token", "token", "auth",
               "password", "secret", "client_secret", "sig", "signature", "x-goog-api-key",
               "code", "refresh_token", "id_token")

_TOKEN_RE = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{8,}"
    r"|sk-[A-Za-z0-9_\-]{16,}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|(?<=[Bb]earer )[A-Za-z0-9._~+/=\-]{8,}"
    r"|(?<=[Bb]asic )[A-Za-z0-9+/=]{8,}"
)
_QUERY_RE = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(k) for k in _QUERY_KEYS) + r")=)[^&#\s\"']+"
)


def _may_hold_token(s: str) -> bool:
    """False when _TOKEN_RE cannot match ``s``: cheap substring tests before
    running a regex over a (possibly long) string.  One-character tests run at
    memchr speed, many times faster than longer ones, so they come first."""
    if "-" in s and ("sk-" in s or "xox" in s):
        return True
    if "_" in s and ("gh" in s or "github_pat_" in s):
        return True
    if "A" in s and ("AIza" in s or "AKIA" in s):
        return True
    return "earer " in s or "asic " in s


def redact_str(s: str) -> str:
    if "=" in s:
        s = _QUERY_RE.sub(lambda m: m.group(1) + REDACTED, s)
    if _may_hold_token(s):
        return _TOKEN_RE.sub(REDACTED, s)
    return s


_HEADER_LINE_RE = re.compile(r"(?m)^([A-Za-z0-9_-]+):[ \t]*([^\r\n]*)")


def mask_raw(s: str) -> str:
    """Secrets in captured plaintext (header values, tokens) overwritten with
    as many '*': byte counts, Content-Length and chunk framing stay right,
    so the masked capture still parses and replays."""
    if ":" in s:
        s = _HEADER_LINE_RE.sub(
            lambda m: m.group(0)[: m.start(2) - m.start(0)] + "*" * len(m.group(2))
            if _is_secret_key(m.group(1)) else m.group(0), s)
    if _may_hold_token(s):
        return _TOKEN_RE.sub(lambda m: "*" * len(m.group(0)), s)
    return s


def mask_event(e: dict) -> dict:
    """A raw event with the secrets in it masked (a copy when anything changed)."""
    if "data" in e:
        return {**e, "data": mask_raw(e["data"])}
    if e.get("type") == "exec" and isinstance(e.get("argv"), list):
        return {**e, "argv": [mask_raw(a) if isinstance(a, str) else a for a in e["argv"]]}
    return e


_key_cache: dict[str, bool] = {}


def _is_secret_key(k: str) -> bool:
    # the same few keys ("role", "content", "type"...) come back all the time
    r = _key_cache.get(k)
    if r is None:
        r = k.lower().replace("-", "").replace("_", "") in _SECRET_KEYS
        if len(_key_cache) < 4096:
            _key_cache[k] = r
    return r


def redact_obj(o: Any) -> Any:
    """A copy of a JSON value with secret-looking keys and strings redacted."""
    t = type(o)
    if t is str:
        return redact_str(o)
    if t is dict:
        return {k: (REDACTED if (type(v) is str and _is_secret_key(k)) else redact_obj(v))
                for k, v in o.items()}
    if t is list:
        return [redact_obj(v) for v in o]
    return o


def redact_headers(h: dict[str, str]) -> dict[str, str]:
    out = {}
    for k, v in h.items():
        if _is_secret_key(k):
            out[k] = REDACTED
        else:
            out[k] = redact_str(v)
    return out


class Redactor:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def feed(self, ev: Event) -> list[Event]:
        t = ev.get("type")
        if t == "llm_call":
            try:
                self._llm(ev)
            except Exception:  # never leak a secret because of a bug: drop the payloads
                self.stats["errors.redact"] += 1
                ev["request"] = REDACTED
                ev["response"] = {"text": REDACTED, "tool_calls": [], "stop_reason": None}
                ev.pop("request_headers", None)
                ev.pop("response_headers", None)
        elif t == "http":
            ev["path"] = redact_str(ev["path"]) if isinstance(ev.get("path"), str) else ev.get("path")
        elif t == "exec" and isinstance(ev.get("argv"), list):
            # e.g. curl -H "Authorization: Bearer ..." run by an agent
            ev["argv"] = [redact_str(a) if isinstance(a, str) else a for a in ev["argv"]]
        return [ev]

    def _llm(self, ev: Event) -> None:
        ev["path"] = redact_str(ev["path"])
        ev["request"] = redact_obj(ev["request"])
        ev["response"] = redact_obj(ev["response"])
        if "error" in ev:
            ev["error"] = redact_obj(ev["error"])
        for k in ("request_headers", "response_headers"):
            if isinstance(ev.get(k), dict):
                ev[k] = redact_headers(ev[k])

    def close(self) -> list[Event]:
        return []
