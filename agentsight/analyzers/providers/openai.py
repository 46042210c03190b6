"""OpenAI APIs: Chat Completions, Responses, legacy Completions, Embeddings.

The same adapter recognises OpenAI-compatible servers on any host (vLLM,
Ollama, LiteLLM, llama.cpp...) by path and body shape.
"""
from __future__ import annotations

from typing import Any

from ..base import json_loads
from . import Adapter, Merger, parse_args, pick_usage

_CHAT_USAGE = {
    "prompt_tokens": "input_tokens",
    "completion_tokens": "output_tokens",
    "total_tokens": "total_tokens",
    "prompt_tokens_details.cached_tokens": "cache_read_input_tokens",
    "completion_tokens_details.reasoning_tokens": "reasoning_tokens",
}
_RESPONSES_USAGE = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "total_tokens": "total_tokens",
    "input_tokens_details.cached_tokens": "cache_read_input_tokens",
    "output_tokens_details.reasoning_tokens": "reasoning_tokens",
}


def _loads(data: str) -> Any:
    try:
        return json_loads(data)
    except ValueError:
        return None


class ChatMerger(Merger):
    """chat.completions (``message``/``delta``) and completions (``text``)."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[int, dict[str, Any]] = {}

    def feed_json(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if "error" in body and "choices" not in body:
            self.feed_error(body, 200)
            return
        self._meta(body)
        choices = body.get("choices") or []
        c = choices[0] if choices and isinstance(choices[0], dict) else {}
        self.stop_reason = c.get("finish_reason")
        msg = c.get("message")
        if isinstance(msg, dict):
            if isinstance(msg.get("content"), str):
                self.text_parts.append(msg["content"])
            elif isinstance(msg.get("content"), list):  # content parts
                for part in msg["content"]:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        self.text_parts.append(part["text"])
            for k in ("reasoning_content", "reasoning"):
                if isinstance(msg.get(k), str):
                    self.thinking_parts.append(msg[k])
            for tc in msg.get("tool_calls") or ():
                if isinstance(tc, dict):
                    fn = tc.get("function") or {}
                    self.tool_calls.append({"id": tc.get("id"), "name": fn.get("name"),
                                            "arguments": parse_args(fn.get("arguments"))})
        elif isinstance(c.get("text"), str):
            self.text_parts.append(c["text"])

    def _meta(self, body: dict[str, Any]) -> None:
        if isinstance(body.get("id"), str):
            self.id = body["id"]
        if isinstance(body.get("model"), str):
            self.model = body["model"]
        if isinstance(body.get("usage"), dict):
            self.usage.update(pick_usage(body["usage"], _CHAT_USAGE))

    def feed_sse(self, event: str | None, data: str) -> bool:
        if data == "[DONE]":
            self.complete = True
            return False
        try:
            ev = json_loads(data)
        except ValueError:
            return False
        if not isinstance(ev, dict):
            return False
        if "error" in ev and "choices" not in ev:
            self.feed_error(ev, 200)
            return False
        self._meta(ev)
        content = False
        for c in ev.get("choices") or ():
            if not isinstance(c, dict) or c.get("index", 0) != 0:
                continue
            if c.get("finish_reason") is not None:
                self.stop_reason = c["finish_reason"]
            d = c.get("delta")
            if not isinstance(d, dict):
                if isinstance(c.get("text"), str) and c["text"]:  # completions
                    self.text_parts.append(c["text"])
                    content = True
                continue
            s = d.get("content")
            if isinstance(s, str) and s:
                self.text_parts.append(s)
                content = True
            for k in ("reasoning_content", "reasoning"):
                r = d.get(k)
                if isinstance(r, str) and r:
                    self.thinking_parts.append(r)
                    content = True
            for tc in d.get("tool_calls") or ():
                if not isinstance(tc, dict):
                    continue
                idx = tc.get("index", len(self._calls))
                call = self._calls.get(idx)
                if call is None:
                    call = self._calls[idx] = {"id": None, "name": None, "args": []}
                if tc.get("id"):
                    call["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call["name"] = fn["name"]
                a = fn.get("arguments")
                if isinstance(a, str) and a:
                    call["args"].append(a)
                content = True
        return content

    def finish(self) -> None:
        for idx in sorted(self._calls):
            c = self._calls[idx]
            self.tool_calls.append({"id": c["id"], "name": c["name"],
                                    "arguments": parse_args("".join(c["args"]))})
        self._calls = {}


class ResponsesMerger(Merger):
    """The Responses API (``POST /v1/responses``)."""

    def __init__(self) -> None:
        super().__init__()
        self._final = False
        self._items: dict[int, dict[str, Any]] = {}

    def feed_json(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if body.get("error") and not body.get("output"):
            self.feed_error(body, 200)
            return
        self._final = True
        self.id = body.get("id")
        self.model = body.get("model")
        det = body.get("incomplete_details")
        self.stop_reason = (det.get("reason") if isinstance(det, dict) and det.get("reason")
                            else body.get("status"))
        self.usage = pick_usage(body.get("usage"), _RESPONSES_USAGE)
        self.text_parts, self.thinking_parts, self.tool_calls = [], [], []
        for item in body.get("output") or ():
            if not isinstance(item, dict):
                continue
            t = item.get("type")
            if t == "message":
                for part in item.get("content") or ():
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        self.text_parts.append(part.get("text") or "")
            elif t == "function_call":
                self.tool_calls.append({"id": item.get("call_id") or item.get("id"),
                                        "name": item.get("name"),
                                        "arguments": parse_args(item.get("arguments"))})
            elif t == "reasoning":
                for part in item.get("summary") or ():
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        self.thinking_parts.append(part["text"])

    def feed_sse(self, event: str | None, data: str) -> bool:
        ev = _loads(data)
        if not isinstance(ev, dict):
            return False
        t = ev.get("type") or event
        if t in ("response.completed", "response.failed", "response.incomplete"):
            self.complete = True
        if t == "response.output_text.delta":
            s = ev.get("delta") or ""
            self._item(ev).setdefault("text", []).append(s)
            return bool(s)
        if t == "response.function_call_arguments.delta":
            s = ev.get("delta") or ""
            self._item(ev).setdefault("args", []).append(s)
            return bool(s)
        if t == "response.reasoning_summary_text.delta":
            s = ev.get("delta") or ""
            self._item(ev).setdefault("thinking", []).append(s)
            return bool(s)
        if t == "response.output_item.added" or t == "response.output_item.done":
            item = ev.get("item")
            if isinstance(item, dict):
                self._item(ev)["item"] = item
            return False
        if t in ("response.completed", "response.incomplete", "response.failed"):
            r = ev.get("response")
            if isinstance(r, dict):
                if t == "response.failed" and isinstance(r.get("error"), dict):
                    self.feed_error(r, 200)
                self.feed_json(r)
            return False
        if t in ("response.created", "response.in_progress"):
            r = ev.get("response") or {}
            self.id = r.get("id")
            self.model = r.get("model")
            return False
        if t == "error":
            self.feed_error({"error": ev.get("error") or ev}, 200)
        return False

    def _item(self, ev: dict[str, Any]) -> dict[str, Any]:
        idx = ev.get("output_index", 0)
        it = self._items.get(idx)
        if it is None:
            it = self._items[idx] = {}
        return it

    def finish(self) -> None:
        if self._final:  # response.completed carried everything
            return
        for idx in sorted(self._items):
            it = self._items[idx]
            item = it.get("item") or {}
            if item.get("type") == "function_call" or "args" in it:
                args = "".join(it["args"]) if "args" in it else item.get("arguments")
                self.tool_calls.append({"id": item.get("call_id") or item.get("id"),
                                        "name": item.get("name"),
                                        "arguments": parse_args(args)})
            if "text" in it:
                self.text_parts.append("".join(it["text"]))
            if "thinking" in it:
                self.thinking_parts.append("".join(it["thinking"]))


class EmbeddingsMerger(Merger):
    def feed_json(self, body: Any) -> None:
        if isinstance(body, dict):
            self.model = body.get("model") if isinstance(body.get("model"), str) else None
            self.usage = pick_usage(body.get("usage"), _CHAT_USAGE)

    def feed_sse(self, event: str | None, data: str) -> bool:
        return False


class OpenAIAdapter(Adapter):
    def match_path(self, method: str, path: str) -> str | None:
        if method != "POST":
            return None
        if path.endswith("/chat/completions"):
            return "chat.completions"
        if path.endswith("/responses"):
            return "responses"
        if path.endswith("/completions"):
            return "completions"
        if path.endswith("/embeddings"):
            return "embeddings"
        return None

    def match_body(self, api: str, body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        if api == "chat.completions":
            return isinstance(body.get("messages"), list)
        if api == "responses":
            return "input" in body and "model" in body
        if api == "completions":
            return "prompt" in body and "model" in body
        return "input" in body and "model" in body

    def new_merger(self, api: str, request: Any) -> Merger:
        if api == "responses":
            return ResponsesMerger()
        if api == "embeddings":
            return EmbeddingsMerger()
        return ChatMerger()


ADAPTER = OpenAIAdapter("openai", hosts=("api.openai.com",))
