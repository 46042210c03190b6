"""Anthropic Messages API (``POST /v1/messages``), plain and streaming."""
from __future__ import annotations

from typing import Any

from ..base import json_loads
from . import (
    Adapter, Merger, RequestInput, ToolResultBlock, as_dict, as_index, as_list, as_str, parse_args, pick_usage, text_of,
)

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
        self.id = as_str(body.get("id"))
        self.model = as_str(body.get("model"))
        self.stop_reason = as_str(body.get("stop_reason"))
        self._take_usage(body.get("usage"))
        for block in as_list(body.get("content")):
            if not isinstance(block, dict):
                continue
            t = block.get("type")
            if t == "text":
                self.text_parts.append(text_of(block.get("text")))
            elif t == "thinking":
                self.thinking_parts.append(text_of(block.get("thinking")))
            elif t == "tool_use" or t == "server_tool_use":
                self.tool_calls.append({"id": as_str(block.get("id")),
                                        "name": as_str(block.get("name")),
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
            if type(idx) is not int:
                idx = as_index(idx, 0)
            b = self._blocks.get(idx)
            if b is None:
                b = self._blocks[idx] = {"type": "text", "start": {}}
            d = ev.get("delta")
            if not isinstance(d, dict):
                return False
            dt = d.get("type")
            if dt == "text_delta":
                s = text_of(d.get("text"))
                b.setdefault("text", []).append(s)
                return bool(s)
            if dt == "input_json_delta":
                s = text_of(d.get("partial_json"))
                b.setdefault("json", []).append(s)
                return bool(s)
            if dt == "thinking_delta":
                s = text_of(d.get("thinking"))
                b.setdefault("thinking", []).append(s)
                return bool(s)
            return False
        if t == "content_block_start":
            cb = as_dict(ev.get("content_block"))
            idx = as_index(ev.get("index"), len(self._blocks))
            b = {"type": cb.get("type"), "start": cb}
            text = text_of(cb.get("text")) if cb.get("type") == "text" else ""
            if text:
                b["text"] = [text]
            self._blocks[idx] = b
            return bool(text)
        if t == "message_start":
            m = as_dict(ev.get("message"))
            self.id = as_str(m.get("id"))
            self.model = as_str(m.get("model"))
            self._take_usage(m.get("usage"))
            return False
        if t == "message_delta":
            d = as_dict(ev.get("delta"))
            if isinstance(d.get("stop_reason"), str):
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
            if t == "tool_use" or t == "server_tool_use":
                start = b["start"]
                if "json" in b:
                    args = parse_args("".join(b["json"]))
                else:
                    args = start.get("input") if start.get("input") is not None else {}
                self.tool_calls.append({"id": as_str(start.get("id")),
                                        "name": as_str(start.get("name")), "arguments": args})
            elif t == "thinking":
                self.thinking_parts.append("".join(b.get("thinking", ())))
            else:
                # a text block, or one whose start was lost or garbled: its
                # deltas still say what it held
                if "text" in b or not ("thinking" in b or "json" in b):
                    self.text_parts.append("".join(b.get("text", ())))
                if "thinking" in b:
                    self.thinking_parts.append("".join(b["thinking"]))
                if "json" in b:
                    start = b["start"]
                    self.tool_calls.append({"id": as_str(start.get("id")),
                                            "name": as_str(start.get("name")),
                                            "arguments": parse_args("".join(b["json"]))})
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

    def request_input(self, api: str, body: Any) -> RequestInput | None:
        if api != "messages":
            return None
        return messages_input(body)


def messages_input(body: Any) -> RequestInput:
    """Messages API: `tool_result` blocks in user turns; the last user text."""
    messages = as_list(as_dict(body).get("messages"))
    last_assistant = max((i for i, m in enumerate(messages) if as_dict(m).get("role") == "assistant"), default=-1)
    results: list[ToolResultBlock] = []
    user_text = user_where = None
    latest_results = False
    for i, m in enumerate(messages):
        m = as_dict(m)
        if m.get("role") != "user":
            continue
        content = m.get("content")
        texts = []
        if isinstance(content, str):
            texts.append(content)
        for j, block in enumerate(as_list(content)):
            block = as_dict(block)
            if block.get("type") == "tool_result":
                err = block.get("is_error")
                results.append(ToolResultBlock(as_str(block.get("tool_use_id")), None, block.get("content"),
                                               err if isinstance(err, bool) else None,
                                               f"messages[{i}].content[{j}]", i > last_assistant))
                latest_results = latest_results or i > last_assistant
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
        if texts:
            user_text, user_where = "\n".join(texts), f"messages[{i}]"
    return RequestInput(user_text, user_where, tuple(results), latest_results)


ADAPTER = AnthropicAdapter("anthropic", hosts=("api.anthropic.com",))
