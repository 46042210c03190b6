"""LLM provider adapters and their registry.

A provider is one module in this package that defines ``ADAPTER``, an
instance of :class:`Adapter`.  Modules are discovered at import time, so
adding a provider touches exactly one new file.

An adapter answers three questions about an HTTP exchange:

* ``match_path(method, path)``: which of its APIs the request path is, if any
  (cheap, called for every HTTP request);
* ``match_body(api, body)``: whether a parsed JSON request body has the shape
  of that API (used for hosts that are not the provider's own, e.g. vLLM,
  Ollama or LiteLLM speaking the OpenAI API; they are reported as provider
  ``unknown``);
* ``new_merger(api, ...)``: an object that merges the response (one JSON body,
  or server-sent events one by one) into the final message;
* for APIs that also run over a WebSocket, ``match_websocket(path)`` and
  ``starts_call(api, message)``: the server's messages are fed to the
  merger as events until it is complete.

and reads, for correlation and the report, what a request body carries in
(``request_input``): the tool results going back to the model and the last
message the user wrote.
"""
from __future__ import annotations

import abc
import importlib
import json
import pkgutil
import reprlib
from dataclasses import dataclass
from typing import Any

from ..base import json_loads

# A provider's body may have any JSON value anywhere: a merger reads every
# field through these, so that a value of another type counts as missing
# instead of raising.


def as_dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def as_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def text_of(v: Any) -> str:
    return v if isinstance(v, str) else ""


def as_index(v: Any, default: int) -> int:
    """A list index as sent: an int, or a string of digits (``"0"``); else ``default``."""
    if type(v) is int:
        return v
    if isinstance(v, str) and 0 < len(v) < 10 and v.isascii() and v.isdigit():
        return int(v)
    return default


_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxstring = _short.maxother = 200
_short.maxlong = 40


def summary(v: Any, limit: int = 1000) -> str:
    """A JSON value as a short string, however large or deep it is."""
    if isinstance(v, str):
        return v[:limit]
    return _short.repr(v)[:limit]


def parse_args(s: Any) -> Any:
    """Tool-call arguments: parsed JSON when they are a JSON string."""
    if isinstance(s, str):
        if not s:
            return {}
        try:
            return json_loads(s)
        except ValueError:
            return s
    return s


def pick_usage(src: Any, mapping: dict[str, str]) -> dict[str, int]:
    """Normalise provider usage: ``mapping`` is {dotted source path: our name}."""
    out: dict[str, int] = {}
    if not isinstance(src, dict):
        return out
    for path, name in mapping.items():
        v: Any = src
        for part in path.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, int) and not isinstance(v, bool):
            out[name] = v
    return out


class Merger(abc.ABC):
    """Builds one response from a JSON body or from SSE events."""

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.thinking_parts: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.model: str | None = None
        self.id: str | None = None
        self.error: dict[str, Any] | None = None
        # The stream's own end marker arrived ([DONE], message_stop, ...):
        # clients may close the connection before HTTP's end of the body.
        self.complete = False

    @abc.abstractmethod
    def feed_json(self, body: Any) -> None:
        """The whole response body, parsed."""

    @abc.abstractmethod
    def feed_sse(self, event: str | None, data: str) -> bool:
        """One SSE event; True when it carried generated content."""

    def finish(self) -> None:
        """End of response (after the last feed)."""

    def feed_error(self, body: Any, status: int) -> None:
        """A non-2xx response body (or an error event in a stream)."""
        err = body.get("error") if isinstance(body, dict) else None
        e: dict[str, Any] = {"status": status}
        if isinstance(err, dict):
            for k in ("type", "code", "message", "param"):
                v = err.get(k)
                if v is not None:
                    # codes are strings or numbers; anything else is summarised
                    e[k] = v if isinstance(v, (str, int, float)) else summary(v)
            if isinstance(err.get("status"), str):  # Gemini: "INVALID_ARGUMENT"
                e.setdefault("type", err["status"])
        elif isinstance(err, str):
            e["message"] = err
        elif isinstance(body, dict) and isinstance(body.get("message"), str):
            e["message"] = body["message"]
        elif body is not None:
            e["message"] = summary(body)
        self.error = e

    def result(self) -> dict[str, Any]:
        r: dict[str, Any] = {
            "text": "".join(self.text_parts),
            "tool_calls": self.tool_calls,
            "stop_reason": self.stop_reason,
        }
        if self.thinking_parts:
            r["thinking"] = "".join(self.thinking_parts)
        if self.model is not None:
            r["model"] = self.model
        if self.id is not None:
            r["id"] = self.id
        return r


class SalvagedMerger(Merger):
    """What a merger that raised had gathered, checked field by field; it
    takes nothing more."""

    def __init__(self, broken: Merger) -> None:
        super().__init__()
        g = broken.__dict__.get
        self.text_parts = [p for p in as_list(g("text_parts")) if isinstance(p, str)]
        self.thinking_parts = [p for p in as_list(g("thinking_parts")) if isinstance(p, str)]
        self.tool_calls = [c for c in as_list(g("tool_calls")) if isinstance(c, dict)]
        self.stop_reason = as_str(g("stop_reason"))
        usage = g("usage")
        self.usage = {k: v for k, v in usage.items() if type(v) is int} if isinstance(usage, dict) else {}
        self.model = as_str(g("model"))
        self.id = as_str(g("id"))
        self.error = g("error") if isinstance(g("error"), dict) else None
        self.complete = g("complete") is True

    def feed_json(self, body: Any) -> None:
        pass

    def feed_sse(self, event: str | None, data: str) -> bool:
        return False


@dataclass(frozen=True)
class ToolResultBlock:
    """One tool result in a request body."""

    id: str | None  # the tool call it answers (tool_use_id, tool_call_id, call_id)
    name: str | None  # the tool's name, where the API gives it (Gemini)
    content: Any
    is_error: bool | None
    where: str  # e.g. "messages[3].content[0]"
    latest: bool  # in the input after the model's last turn: new in this request


@dataclass(frozen=True)
class RequestInput:
    """What a request carries in besides the history: the last message the
    user wrote, and every tool result."""

    user_text: str | None = None
    user_where: str | None = None
    tool_results: tuple[ToolResultBlock, ...] = ()
    latest_is_tool_results: bool = False  # the input after the model's last turn is tool results


def content_text(content: Any) -> str:
    """The text of message content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for t in (content_text(c) for c in content) if t)
    if isinstance(content, dict):
        for key in ("text", "output", "content", "result"):
            v = content.get(key)
            if isinstance(v, (str, list, dict)):
                return content_text(v)
        return json.dumps(content, ensure_ascii=False, default=str)
    if content is None:
        return ""
    return str(content)


@dataclass(frozen=True)
class Adapter(abc.ABC):
    name: str
    hosts: tuple[str, ...] = ()
    host_suffixes: tuple[str, ...] = ()

    def owns_host(self, host: str) -> bool:
        return host in self.hosts or (bool(self.host_suffixes) and host.endswith(self.host_suffixes))

    @abc.abstractmethod
    def match_path(self, method: str, path: str) -> str | None:
        """Which of its APIs the request path is, if any."""

    @abc.abstractmethod
    def match_body(self, api: str, body: Any) -> bool:
        """Whether a parsed request body has the shape of that API."""

    def model(self, api: str, path: str, body: Any) -> str | None:
        m = body.get("model") if isinstance(body, dict) else None
        return m if isinstance(m, str) else None

    def is_stream(self, api: str, path: str, query: str, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    @abc.abstractmethod
    def new_merger(self, api: str, request: Any) -> Merger:
        """What merges the response of one call."""

    # WebSocket sessions: LLM calls as messages (the Responses API's WebSocket mode)
    def match_websocket(self, path: str) -> str | None:
        """Which of its APIs a WebSocket opened at `path` speaks, if any."""
        return None

    def starts_call(self, api: str, message: Any) -> bool:
        """Whether a client message of such a session asks for a response
        (the server's messages up to the merger's end are its answer)."""
        return False

    def request_input(self, api: str, body: Any) -> RequestInput | None:
        """What the request body of `api` carries in; None when `api` is
        not one of this adapter's."""
        return None


ADAPTERS: list[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    if all(a.name != adapter.name for a in ADAPTERS):
        ADAPTERS.append(adapter)
    return adapter


def get(name: str) -> Adapter | None:
    for a in ADAPTERS:
        if a.name == name:
            return a
    return None


def request_input(provider: str, api: str, body: Any) -> RequestInput:
    """What an LLM call's request carries in (provider `unknown`: by its API's shape)."""
    adapter = get(provider)
    for a in [adapter] if adapter is not None else ADAPTERS:
        found = a.request_input(api, body)
        if found is not None:
            return found
    return RequestInput()


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        adapter = getattr(mod, "ADAPTER", None)
        if isinstance(adapter, Adapter):
            register(adapter)


_discover()
