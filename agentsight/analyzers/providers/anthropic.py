"""Anthropic Messages API (``POST /v1/messages``), plain and streaming."""
from __future__ import annotations

from typing import Any

from ..base import json_loads
from . import Adapter, Merger, parse_args, pick_usage

_USAGE = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_creation_input_tokens": "cache_creation_input_tokens",
    "cache_read_input_tokens": "cache_read_input_tokens",
}


class AnthropicMerger(Merger):
    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[int, dict[str, Any]] = {}

    def _take_usage(self, u: Any) -> None:
        # message_delta usage is cumulative: later values win, None is ignored
        self.usage.update(pick_usage(u, _USAGE))

    def feed_json(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if body.get("type") == "error":
            self.feed_error(body, 200)
            return
        self.id = body.get("id") if isinstance(body.get("id"), str) else None
        self.model = body.get("model") if isinstance(body.get("model"), str) else None
        self.stop_reason = body.get("stop_reason")
        self._take_usage(body.get("usage"))
        for block in body.get("content") or ():
            if not isinstance(block, dict):
                continue
            t = block.get("type")
            if t == "text":
                self.text_parts.append(block.get("text") or "")
            elif t == "thinking":
                self.thinking_parts.append(block.get("thinking") or "")
            elif t in ("tool_use", "server_tool_use"):
                self.tool_calls.append({"id": block.get("id"), "name": block.get("name"),
                                        "arguments": block.get("input")})

    def feed_sse(self, event: str | None, data: str) -> bool:
        try:
            ev = json_loads(data)
        except ValueError:
            return False
        if not isinstance(ev, dict):
            return False
        t = ev.get("type") or event
        if t == "message_stop":
            self.complete = True
        if t == "content_block_delta":
            idx = ev.get("index", 0)
            b = self._blocks.get(idx)
            if b is None:
                b = self._blocks[idx] = {"type": "text", "text": []}
            d = ev.get("delta") or {}
            dt = d.get("type")
            if dt == "text_delta":
                s = d.get("text") or ""
                b.setdefault("text", []).append(s)
                return bool(s)
            if dt == "input_json_delta":
                s = d.get("partial_json") or ""
                b.setdefault("json", []).append(s)
                return bool(s)
            if dt == "thinking_delta":
                s = d.get("thinking") or ""
                b.setdefault("thinking", []).append(s)
                return bool(s)
            return False
        if t == "content_block_start":
            cb = ev.get("content_block") or {}
            idx = ev.get("index", len(self._blocks))
            b = {"type": cb.get("type"), "start": cb}
            if cb.get("type") == "text" and cb.get("text"):
                b["text"] = [cb["text"]]
            self._blocks[idx] = b
            return bool(cb.get("text"))
        if t == "message_start":
            m = ev.get("message") or {}
            self.id = m.get("id")
            self.model = m.get("model")
            self._take_usage(m.get("usage"))
            return False
        if t == "message_delta":
            d = ev.get("delta") or {}
            if d.get("stop_reason") is not None:
                self.stop_reason = d["stop_reason"]
            self._take_usage(ev.get("usage"))
            return False
        if t == "error":
            self.feed_error(ev, 200)
        return False

    def finish(self) -> None:
        if not self._blocks:
            return
        for idx in sorted(self._blocks):
            b = self._blocks[idx]
            t = b.get("type")
            if t in ("tool_use", "server_tool_use"):
                start = b.get("start") or {}
                if "json" in b:
                    args = parse_args("".join(b["json"]))
                else:
                    args = start.get("input") if start.get("input") is not None else {}
                self.tool_calls.append({"id": start.get("id"), "name": start.get("name"),
                                        "arguments": args})
            elif t == "thinking":
                self.thinking_parts.append("".join(b.get("thinking", ())))
            else:
                self.text_parts.append("".join(b.get("text", ())))
        self._blocks = {}


class AnthropicAdapter(Adapter):
    def match_path(self, method: str, path: str) -> str | None:
        if method == "POST" and path.endswith("/messages") and not path.endswith("/chat/messages"):
            return "messages"
        return None

    def match_body(self, api: str, body: Any) -> bool:
        return (isinstance(body, dict) and isinstance(body.get("messages"), list)
                and "max_tokens" in body)

    def new_merger(self, api: str, request: Any) -> Merger:
        return AnthropicMerger()


ADAPTER = AnthropicAdapter("anthropic", hosts=("api.anthropic.com",))
