"""Google Gemini API: ``models/{model}:generateContent`` and
``:streamGenerateContent`` (``?alt=sse`` server-sent events, or a JSON array)."""
from __future__ import annotations

from typing import Any

from ..base import json_loads
from . import Adapter, Merger, RequestInput, ToolResultBlock, as_dict, as_list, as_str, pick_usage

_USAGE = {
    "promptTokenCount": "input_tokens",
    "candidatesTokenCount": "output_tokens",
    "totalTokenCount": "total_tokens",
    "cachedContentTokenCount": "cache_read_input_tokens",
    "thoughtsTokenCount": "reasoning_tokens",
    "toolUsePromptTokenCount": "tool_use_input_tokens",
}


class GeminiMerger(Merger):
    def _chunk(self, body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        if "error" in body and "candidates" not in body:
            self.feed_error(body, 200)
            return False
        if isinstance(body.get("modelVersion"), str):
            self.model = body["modelVersion"]
        if isinstance(body.get("responseId"), str):
            self.id = body["responseId"]
        if isinstance(body.get("usageMetadata"), dict):
            self.usage.update(pick_usage(body["usageMetadata"], _USAGE))
        content = False
        cands = as_list(body.get("candidates"))
        c = cands[0] if cands and isinstance(cands[0], dict) else {}
        if c.get("finishReason") is not None:
            self.stop_reason = as_str(c["finishReason"]) or self.stop_reason
            self.complete = True  # Gemini's last chunk is the one with a finish reason
        for part in as_list(as_dict(c.get("content")).get("parts")):
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                (self.thinking_parts if part.get("thought") else self.text_parts).append(text)
                content = content or bool(text)
            fc = part.get("functionCall")
            if isinstance(fc, dict):
                self.tool_calls.append({"id": as_str(fc.get("id")), "name": as_str(fc.get("name")),
                                        "arguments": fc.get("args") if fc.get("args") is not None else {}})
                content = True
        return content

    def feed_json(self, body: Any) -> None:
        if isinstance(body, list):  # streamGenerateContent without alt=sse
            for chunk in body:
                self._chunk(chunk)
        else:
            self._chunk(body)

    def feed_sse(self, event: str | None, data: str) -> bool:
        try:
            return self._chunk(json_loads(data))
        except ValueError:
            return False


class GeminiAdapter(Adapter):
    def match_path(self, method: str, path: str) -> str | None:
        if method != "POST":
            return None
        i = path.rfind(":")
        if i < 0 or "/models/" not in path:
            return None
        verb = path[i + 1:]
        if verb in ("generateContent", "streamGenerateContent"):
            return verb
        return None

    def match_body(self, api: str, body: Any) -> bool:
        return isinstance(body, dict) and isinstance(body.get("contents"), (list, dict))

    def model(self, api: str, path: str, body: Any) -> str | None:
        i = path.rfind("/models/")
        j = path.rfind(":")
        return path[i + 8:j] if 0 <= i < j else None

    def is_stream(self, api: str, path: str, query: str, body: Any) -> bool:
        return api == "streamGenerateContent"

    def new_merger(self, api: str, request: Any) -> Merger:
        return GeminiMerger()

    def request_input(self, api: str, body: Any) -> RequestInput | None:
        if api not in ("generateContent", "streamGenerateContent"):
            return None
        return contents_input(body)


def contents_input(body: Any) -> RequestInput:
    """Gemini: `functionResponse` parts (their id, when the call had one, and
    the function's name); the last user text."""
    contents = as_dict(body).get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    contents = as_list(contents)
    last_model = max((i for i, c in enumerate(contents) if as_dict(c).get("role") == "model"), default=-1)
    results: list[ToolResultBlock] = []
    user_text = user_where = None
    latest_results = False
    for i, c in enumerate(contents):
        c = as_dict(c)
        if c.get("role", "user") != "user":
            continue
        texts = []
        for j, part in enumerate(as_list(c.get("parts"))):
            part = as_dict(part)
            fr = part.get("functionResponse")
            if isinstance(fr, dict):
                results.append(ToolResultBlock(as_str(fr.get("id")), as_str(fr.get("name")), fr.get("response"), None,
                                               f"contents[{i}].parts[{j}]", i > last_model))
                latest_results = latest_results or i > last_model
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
        if texts:
            user_text, user_where = "\n".join(texts), f"contents[{i}]"
    return RequestInput(user_text, user_where, tuple(results), latest_results)


ADAPTER = GeminiAdapter(
    "gemini",
    hosts=("generativelanguage.googleapis.com",),
    host_suffixes=("aiplatform.googleapis.com",),
)
