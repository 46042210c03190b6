"""OpenAI APIs: Chat Completions, Responses, legacy Completions, Embeddings.

The same adapter recognises OpenAI-compatible servers on any host (vLLM,
Ollama, LiteLLM, llama.cpp...) by path and body shape.
"""
from __future__ import annotations

from typing import Any

from ..base import json_loads
from . import (
    Adapter, Merger, RequestInput, ToolResultBlock, as_dict, as_index, as_list, as_str, parse_args, pick_usage, text_of,
)

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
        choices = as_list(body.get("choices"))
        c = choices[0] if choices and isinstance(choices[0], dict) else {}
        self.stop_reason = as_str(c.get("finish_reason"))
        msg = c.get("message")
        if isinstance(msg, dict):
            content = msg.get("content")
            if isinstance(content, str):
                self.text_parts.append(content)
            elif isinstance(content, list):  # content parts
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        self.text_parts.append(part["text"])
            for k in ("reasoning_content", "reasoning"):
                if isinstance(msg.get(k), str):
                    self.thinking_parts.append(msg[k])
            for tc in as_list(msg.get("tool_calls")):
                if isinstance(tc, dict):
                    fn = as_dict(tc.get("function"))
                    self.tool_calls.append({"id": as_str(tc.get("id")), "name": as_str(fn.get("name")),
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
        # Once per streamed chunk: the common fields are read inline.
        if data == "[DONE]":
            self.complete = True
            return False
        try:
            ev = json_loads(data)
        except ValueError:
            return False
        if type(ev) is not dict:
            return False
        g = ev.get
        choices = g("choices")
        if "error" in ev and "choices" not in ev:
            self.feed_error(ev, 200)
            return False
        v = g("id")
        if type(v) is str:
            self.id = v
        v = g("model")
        if type(v) is str:
            self.model = v
        v = g("usage")
        if type(v) is dict:
            self.usage.update(pick_usage(v, _CHAT_USAGE))
        content = False
        for c in choices if type(choices) is list else ():
            if type(c) is not dict:
                continue
            i = c.get("index", 0)
            if i != 0 and as_index(i, 0) != 0:
                continue
            v = c.get("finish_reason")
            if type(v) is str:
                self.stop_reason = v
            d = c.get("delta")
            if type(d) is not dict:
                v = c.get("text")
                if type(v) is str and v:  # completions
                    self.text_parts.append(v)
                    content = True
                continue
            s = d.get("content")
            if type(s) is str and s:
                self.text_parts.append(s)
                content = True
            if "tool_calls" in d or "reasoning_content" in d or "reasoning" in d:
                content = self._delta_extras(d) or content
        return content

    def _delta_extras(self, d: dict[str, Any]) -> bool:
        content = False
        for k in ("reasoning_content", "reasoning"):
            r = d.get(k)
            if isinstance(r, str) and r:
                self.thinking_parts.append(r)
                content = True
        for tc in as_list(d.get("tool_calls")):
            if not isinstance(tc, dict):
                continue
            idx = as_index(tc.get("index"), len(self._calls))
            call = self._calls.get(idx)
            if call is None:
                call = self._calls[idx] = {"id": None, "name": None, "args": []}
            if isinstance(tc.get("id"), str) and tc["id"]:
                call["id"] = tc["id"]
            fn = as_dict(tc.get("function"))
            if isinstance(fn.get("name"), str) and fn["name"]:
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
        self.id = as_str(body.get("id")) or self.id
        self.model = as_str(body.get("model")) or self.model
        det = as_dict(body.get("incomplete_details"))
        self.stop_reason = as_str(det.get("reason")) or as_str(body.get("status"))
        if isinstance(body.get("usage"), dict):
            self.usage = pick_usage(body["usage"], _RESPONSES_USAGE)
        output = body.get("output")
        if not isinstance(output, list):
            return  # no final snapshot: what the deltas said stays
        self._final = True
        self.text_parts, self.thinking_parts, self.tool_calls = [], [], []
        for item in output:
            if not isinstance(item, dict):
                continue
            t = item.get("type")
            if t == "message":
                for part in as_list(item.get("content")):
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        self.text_parts.append(text_of(part.get("text")))
            elif t == "function_call":
                self.tool_calls.append({"id": as_str(item.get("call_id")) or as_str(item.get("id")),
                                        "name": as_str(item.get("name")),
                                        "arguments": parse_args(item.get("arguments"))})
            elif t == "reasoning":
                for part in as_list(item.get("summary")):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        self.thinking_parts.append(part["text"])

    def feed_sse(self, event: str | None, data: str) -> bool:
        ev = _loads(data)
        if not isinstance(ev, dict):
            return False
        t = ev.get("type") or event
        if t == "response.completed" or t == "response.failed" or t == "response.incomplete":
            self.complete = True
            r = ev.get("response")
            if isinstance(r, dict):
                if t == "response.failed" and isinstance(r.get("error"), dict):
                    self.feed_error(r, 200)
                self.feed_json(r)
            return False
        if t == "response.output_text.delta":
            s = text_of(ev.get("delta"))
            self._item(ev).setdefault("text", []).append(s)
            return bool(s)
        if t == "response.function_call_arguments.delta":
            s = text_of(ev.get("delta"))
            self._item(ev).setdefault("args", []).append(s)
            return bool(s)
        if t == "response.reasoning_summary_text.delta":
            s = text_of(ev.get("delta"))
            self._item(ev).setdefault("thinking", []).append(s)
            return bool(s)
        if t == "response.output_item.added" or t == "response.output_item.done":
            item = ev.get("item")
            if isinstance(item, dict):
                self._item(ev)["item"] = item
            return False
        if t == "response.created" or t == "response.in_progress":
            r = as_dict(ev.get("response"))
            self.id = as_str(r.get("id")) or self.id
            self.model = as_str(r.get("model")) or self.model
            return False
        if t == "error":
            self.feed_error({"error": ev.get("error") or ev}, 200)
        return False

    def _item(self, ev: dict[str, Any]) -> dict[str, Any]:
        idx = as_index(ev.get("output_index"), 0)
        it = self._items.get(idx)
        if it is None:
            it = self._items[idx] = {}
        return it

    def finish(self) -> None:
        if self._final:  # response.completed carried everything
            return
        for idx in sorted(self._items):
            it = self._items[idx]
            item = as_dict(it.get("item"))
            if item.get("type") == "function_call" or "args" in it:
                args = "".join(it["args"]) if "args" in it else item.get("arguments")
                self.tool_calls.append({"id": as_str(item.get("call_id")) or as_str(item.get("id")),
                                        "name": as_str(item.get("name")),
                                        "arguments": parse_args(args)})
            if "text" in it:
                self.text_parts.append("".join(it["text"]))
            if "thinking" in it:
                self.thinking_parts.append("".join(it["thinking"]))


class EmbeddingsMerger(Merger):
    def feed_json(self, body: Any) -> None:
        if isinstance(body, dict):
            self.model = as_str(body.get("model"))
            self.usage = pick_usage(body.get("usage"), _CHAT_USAGE)

    def feed_sse(self, event: str | None, data: str) -> bool:
        return False


def _parts_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    texts = [p["text"] for p in as_list(content) if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(texts) if texts else None


def chat_input(body: Any) -> RequestInput:
    """Chat Completions: `tool` messages (`tool_call_id`); the last user text."""
    messages = as_list(as_dict(body).get("messages"))
    last_assistant = max((i for i, m in enumerate(messages) if as_dict(m).get("role") == "assistant"), default=-1)
    results: list[ToolResultBlock] = []
    user_text = user_where = None
    for i, m in enumerate(messages):
        m = as_dict(m)
        role = m.get("role")
        if role in ("tool", "function"):
            results.append(ToolResultBlock(as_str(m.get("tool_call_id")), as_str(m.get("name")), m.get("content"),
                                           None, f"messages[{i}]", i > last_assistant))
        elif role == "user":
            text = _parts_text(m.get("content"))
            if text is not None:
                user_text, user_where = text, f"messages[{i}]"
    latest = bool(results) and results[-1].latest
    return RequestInput(user_text, user_where, tuple(results), latest)


_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output",
                 "computer_call_output", "mcp_tool_call_output")
_MODEL_ITEMS = ("function_call", "custom_tool_call", "local_shell_call", "computer_call", "reasoning")


def responses_input(body: Any) -> RequestInput:
    """Responses: `function_call_output` items (and the custom, local shell
    and computer kinds) by `call_id`; the last user text."""
    body = as_dict(body)
    if "input" not in body and isinstance(body.get("response"), dict):  # a WebSocket message of another shape
        body = body["response"]
    items = body.get("input")
    if isinstance(items, str):
        return RequestInput(items, "input")
    items = as_list(items)
    last_model = max((i for i, it in enumerate(items)
                      if as_dict(it).get("role") == "assistant" or as_dict(it).get("type") in _MODEL_ITEMS),
                     default=-1)
    results: list[ToolResultBlock] = []
    user_text = user_where = None
    for i, it in enumerate(items):
        it = as_dict(it)
        if it.get("type") in _OUTPUT_ITEMS:
            results.append(ToolResultBlock(as_str(it.get("call_id")), None, it.get("output"), None, f"input[{i}]",
                                           i > last_model))
        elif it.get("role") == "user":
            text = _parts_text(it.get("content"))
            if text is not None:
                user_text, user_where = text, f"input[{i}]"
    latest = bool(results) and results[-1].latest
    return RequestInput(user_text, user_where, tuple(results), latest)


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

    def match_websocket(self, path: str) -> str | None:
        return "responses" if path.endswith("/responses") else None

    def starts_call(self, api: str, message: Any) -> bool:
        return isinstance(message, dict) and message.get("type") == "response.create"

    def request_input(self, api: str, body: Any) -> RequestInput | None:
        if api == "chat.completions":
            return chat_input(body)
        if api == "responses":
            return responses_input(body)
        if api in ("completions", "embeddings"):
            return RequestInput()
        return None

    def new_merger(self, api: str, request: Any) -> Merger:
        if api == "responses":
            return ResponsesMerger()
        if api == "embeddings":
            return EmbeddingsMerger()
        return ChatMerger()


ADAPTER = OpenAIAdapter("openai", hosts=("api.openai.com",))
