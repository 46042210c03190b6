"""Message content in the form of the OpenTelemetry GenAI conventions.

`gen_ai.input.messages`, `gen_ai.output.messages` and
`gen_ai.system_instructions` hold a call's conversation as a list of
messages, each a role and a list of typed parts (`text`, `tool_call`,
`tool_call_response`, `reasoning`, or a part named after what it is, such as
`image`). Each API spells its conversation its own way; these functions turn
the request bodies of the Anthropic Messages, OpenAI Chat Completions and
Responses, and Gemini APIs into that form. Pure, and never raising on an odd
body: what is not understood is left out.

Every string is redacted again here (`redact_json`), whatever the run's
--no-redact: content sent to a backend is always redacted.
"""
from __future__ import annotations

from typing import Any

import orjson

from ..analyzers.redact import redact_json
from ..events import LlmCall

MAX_TEXT_CHARS = 8192  # of one part; the rest is cut, with a marker
MAX_ATTRIBUTE_BYTES = 64 << 10  # of one attribute; the oldest messages go first
CUT_MARK = "…[cut {n} chars]"

Part = dict[str, Any]
Message = dict[str, Any]


def _text(s: Any) -> Part | None:
    if not isinstance(s, str):
        return None
    if len(s) > MAX_TEXT_CHARS:
        s = s[:MAX_TEXT_CHARS] + CUT_MARK.format(n=len(s) - MAX_TEXT_CHARS)
    return {"type": "text", "content": s}


def _args(value: Any) -> Any:
    """Tool call arguments as an object when they are JSON text."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _response_value(value: Any) -> Any:
    """A tool's result: text is cut like any text; parts become their text."""
    if isinstance(value, str):
        part = _text(value)
        return part["content"] if part else value
    if isinstance(value, list):
        texts = [b["text"] for b in value if isinstance(b, dict) and isinstance(b.get("text"), str)]
        if texts and len(texts) == len(value):
            return _response_value("\n".join(texts))
    return value


# -- Anthropic Messages ---------------------------------------------------------

def _anthropic_parts(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [p for p in (_text(content),) if p]
    parts: list[Part] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        t = block.get("type")
        if t == "text":
            p = _text(block.get("text"))
            if p:
                parts.append(p)
        elif t == "tool_use":
            parts.append({"type": "tool_call", "id": block.get("id"), "name": block.get("name"),
                          "arguments": block.get("input")})
        elif t == "tool_result":
            parts.append({"type": "tool_call_response", "id": block.get("tool_use_id"),
                          "response": _response_value(block.get("content"))})
        elif t in ("thinking", "redacted_thinking"):
            parts.append({"type": "reasoning", "content": (_text(block.get("thinking")) or {}).get("content", "")})
        elif isinstance(t, str):
            parts.append({"type": t})  # images, documents: named, not carried
    return parts


def _anthropic(request: dict[str, Any]) -> tuple[list[Message], list[Part]]:
    messages = [{"role": m.get("role"), "parts": _anthropic_parts(m.get("content"))}
                for m in request.get("messages") or () if isinstance(m, dict)]
    system = request.get("system")
    return messages, _anthropic_parts(system) if system is not None else []


# -- OpenAI Chat Completions ------------------------------------------------------

def _openai_content(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [p for p in (_text(content),) if p]
    parts: list[Part] = []
    for item in content if isinstance(content, list) else ():
        if isinstance(item, dict):
            t = item.get("type")
            if t in ("text", "input_text", "output_text"):
                p = _text(item.get("text"))
                if p:
                    parts.append(p)
            elif isinstance(t, str):
                parts.append({"type": t})
    return parts


def _chat(request: dict[str, Any]) -> tuple[list[Message], list[Part]]:
    messages: list[Message] = []
    for m in request.get("messages") or ():
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "tool":
            messages.append({"role": "tool", "parts": [{"type": "tool_call_response", "id": m.get("tool_call_id"),
                                                          "response": _response_value(m.get("content"))}]})
            continue
        parts = _openai_content(m.get("content"))
        for tc in m.get("tool_calls") or ():
            if isinstance(tc, dict):
                fn = tc["function"] if isinstance(tc.get("function"), dict) else {}
                parts.append({"type": "tool_call", "id": tc.get("id"), "name": fn.get("name"),
                              "arguments": _args(fn.get("arguments"))})
        messages.append({"role": "system" if role == "developer" else role, "parts": parts})
    return messages, []


# -- OpenAI Responses -----------------------------------------------------------

def _responses(request: dict[str, Any]) -> tuple[list[Message], list[Part]]:
    items = request.get("input")
    messages: list[Message] = []
    if isinstance(items, str):
        messages.append({"role": "user", "parts": _openai_content(items)})
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        t = item.get("type")
        if t == "function_call":
            messages.append({"role": "assistant", "parts": [
                {"type": "tool_call", "id": item.get("call_id"), "name": item.get("name"),
                 "arguments": _args(item.get("arguments"))}]})
        elif t == "function_call_output":
            messages.append({"role": "tool", "parts": [
                {"type": "tool_call_response", "id": item.get("call_id"),
                 "response": _response_value(item.get("output"))}]})
        elif "role" in item:
            role = item.get("role")
            messages.append({"role": "system" if role == "developer" else role,
                             "parts": _openai_content(item.get("content"))})
    instructions = request.get("instructions")
    return messages, [p for p in (_text(instructions),) if p]


# -- Gemini -------------------------------------------------------------------------

def _gemini_parts(parts_in: Any) -> list[Part]:
    parts: list[Part] = []
    for p in parts_in if isinstance(parts_in, list) else ():
        if not isinstance(p, dict):
            continue
        if "text" in p:
            text = _text(p.get("text"))
            if text:
                parts.append({"type": "reasoning", "content": text["content"]} if p.get("thought") else text)
        elif isinstance(p.get("functionCall"), dict):
            fc = p["functionCall"]
            parts.append({"type": "tool_call", "id": fc.get("id"), "name": fc.get("name"), "arguments": fc.get("args")})
        elif isinstance(p.get("functionResponse"), dict):
            fr = p["functionResponse"]
            parts.append({"type": "tool_call_response", "id": fr.get("id"), "response": fr.get("response")})
        elif p:
            parts.append({"type": next(iter(p))})
    return parts


def _gemini(request: dict[str, Any]) -> tuple[list[Message], list[Part]]:
    messages = []
    for c in request.get("contents") or ():
        if isinstance(c, dict):
            role = c.get("role") or "user"
            messages.append({"role": "assistant" if role == "model" else role, "parts": _gemini_parts(c.get("parts"))})
    system = request.get("systemInstruction") or request.get("system_instruction")
    return messages, _gemini_parts(system.get("parts")) if isinstance(system, dict) else []


_BY_API = {"messages": _anthropic, "chat.completions": _chat, "responses": _responses,
           "generateContent": _gemini, "streamGenerateContent": _gemini}


def input_messages(call: LlmCall) -> tuple[list[Message], list[Part]] | None:
    """(messages, system instructions) of a call's request; None when its
    API or body is not one of those known."""
    convert = _BY_API.get(call.api)
    if convert is None or not isinstance(call.request, dict):
        return None
    try:
        messages, system = convert(call.request)
    except (AttributeError, TypeError, ValueError):
        return None
    return redact_json(messages), redact_json(system)


def output_messages(call: LlmCall) -> list[Message]:
    """What the model answered, as one assistant message."""
    r = call.response
    parts: list[Part] = []
    if r.thinking:
        parts.append({"type": "reasoning", "content": (_text(r.thinking) or {}).get("content", "")})
    text = _text(r.text) if r.text else None
    if text:
        parts.append(text)
    for tc in r.tool_calls:
        parts.append({"type": "tool_call", "id": tc.id, "name": tc.name, "arguments": tc.arguments})
    return redact_json([{"role": "assistant", "parts": parts, "finish_reason": r.stop_reason or ""}])


def tool_results(messages: list[Message]) -> dict[str, Any]:
    """tool call id -> the result sent back, from a request's messages."""
    found: dict[str, Any] = {}
    for m in messages:
        for p in m.get("parts") or ():
            if p.get("type") == "tool_call_response" and isinstance(p.get("id"), str):
                found[p["id"]] = p.get("response")
    return found


def encode(value: Any, budget: int = MAX_ATTRIBUTE_BYTES) -> tuple[str, bool]:
    """A JSON attribute value of at most `budget` bytes, and whether anything
    was left out: the oldest messages of a list go first, then the text."""
    try:
        data = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return "[content that is not JSON, left out]", True
    if len(data) <= budget:
        return data.decode(), False
    if isinstance(value, list):
        kept = list(value)
        while len(kept) > 1 and len(data) > budget:
            kept.pop(0)
            data = orjson.dumps(kept)
        if len(data) <= budget:
            return data.decode(), True
    text = data.decode(errors="replace")[:budget - 40]
    return orjson.dumps(text + CUT_MARK.format(n=len(data) - len(text))).decode(), True
