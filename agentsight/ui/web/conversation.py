"""An LLM request as a conversation a person can read: the system prompt,
the messages with their parts (text, thinking, tool calls and tool
results), and the tools offered, whatever the API's shape.

Pure: a request's parsed JSON body in, plain dicts out. Recognised by the
body's shape (Anthropic Messages, OpenAI Chat Completions and Responses,
Gemini), so an OpenAI-compatible server's request reads the same; anything
not recognised is kept as its JSON text, never dropped.
"""
from __future__ import annotations

from typing import Any

import orjson

Part = dict[str, Any]


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except (orjson.JSONEncodeError, TypeError):
        return repr(value)


def _text(text: Any, kind: str = "text") -> Part:
    return {"type": kind, "text": text if isinstance(text, str) else _json_text(text)}


def _tool_call(name: Any, arguments: Any, call_id: Any = None) -> Part:
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            pass
    return {"type": "tool_call", "name": name if isinstance(name, str) else None,
            "id": call_id if isinstance(call_id, str) else None, "text": _json_text(arguments)}


def _tool_result(content: Any, call_id: Any = None, error: bool = False) -> Part:
    if isinstance(content, list):  # Anthropic: blocks; keep their text
        texts = [b["text"] if isinstance(b, dict) and isinstance(b.get("text"), str) else _json_text(b)
                 for b in content]
        content = "\n".join(texts)
    part: Part = {"type": "tool_result", "id": call_id if isinstance(call_id, str) else None,
                  "text": _json_text(content)}
    if error:
        part["error"] = True
    return part


def _anthropic_block(block: Any) -> Part:
    if isinstance(block, str):
        return _text(block)
    if not isinstance(block, dict):
        return _text(block, "other")
    t = block.get("type")
    if t == "text":
        return _text(block.get("text"))
    if t == "thinking":
        return _text(block.get("thinking"), "thinking")
    if t == "redacted_thinking":
        return {"type": "thinking", "text": "(redacted thinking)"}
    if t in ("tool_use", "server_tool_use"):
        return _tool_call(block.get("name"), block.get("input"), block.get("id"))
    if t == "tool_result":
        return _tool_result(block.get("content"), block.get("tool_use_id"), bool(block.get("is_error")))
    if t in ("image", "document"):
        return {"type": "other", "text": f"({t})"}
    return _text(block, "other")


def _anthropic_content(content: Any) -> list[Part]:
    if isinstance(content, list):
        return [_anthropic_block(b) for b in content]
    return [_text(content)]


def _openai_content(content: Any) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [_text(content)]
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(_text(p["text"]))
            elif isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "input_audio", "input_file"):
                parts.append({"type": "other", "text": f"({p['type']})"})
            else:
                parts.append(_text(p, "other"))
        return parts
    return [_text(content, "other")]


def _chat(body: dict) -> tuple[list[Part], list[dict]]:
    system: list[Part] = []
    messages: list[dict] = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            messages.append({"role": "?", "parts": [_text(m, "other")]})
            continue
        role = m.get("role") if isinstance(m.get("role"), str) else "?"
        if role in ("system", "developer") and not messages:
            system += _openai_content(m.get("content"))
            continue
        if role == "tool":
            parts = [_tool_result(m.get("content"), m.get("tool_call_id"))]
        else:
            parts = _openai_content(m.get("content"))
            if isinstance(m.get("reasoning_content"), str):
                parts.insert(0, _text(m["reasoning_content"], "thinking"))
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict):
                    parts.append(_tool_call(fn.get("name"), fn.get("arguments"), tc.get("id")))
                else:
                    parts.append(_text(tc, "other"))
        messages.append({"role": role, "parts": parts})
    return system, messages


ANTHROPIC_BLOCKS = frozenset(("tool_use", "tool_result", "thinking", "redacted_thinking", "server_tool_use", "image",
                              "document"))


def _anthropic_shaped(body: dict) -> bool:
    """Messages API rather than Chat Completions: a top-level system prompt,
    or content blocks only Anthropic has."""
    if "system" in body:
        return True
    return any(isinstance(m, dict) and isinstance(m.get("content"), list)
               and any(isinstance(b, dict) and b.get("type") in ANTHROPIC_BLOCKS for b in m["content"])
               for m in body["messages"])


def _anthropic(body: dict) -> tuple[list[Part], list[dict]]:
    system = _anthropic_content(body["system"]) if "system" in body else []
    messages = []
    for m in body["messages"]:
        if isinstance(m, dict):
            role = m.get("role") if isinstance(m.get("role"), str) else "?"
            messages.append({"role": role, "parts": _anthropic_content(m.get("content"))})
        else:
            messages.append({"role": "?", "parts": [_text(m, "other")]})
    return system, messages


def _responses(body: dict) -> tuple[list[Part], list[dict]]:
    system = [_text(body["instructions"])] if isinstance(body.get("instructions"), str) else []
    items = body.get("input")
    if isinstance(items, str):
        return system, [{"role": "user", "parts": [_text(items)]}]
    messages: list[dict] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            messages.append({"role": "?", "parts": [_text(item, "other")]})
            continue
        t = item.get("type")
        if t == "function_call":
            messages.append({"role": "assistant",
                             "parts": [_tool_call(item.get("name"), item.get("arguments"), item.get("call_id"))]})
        elif t == "function_call_output":
            messages.append({"role": "tool", "parts": [_tool_result(item.get("output"), item.get("call_id"))]})
        elif t == "reasoning":
            summary = "\n".join(s.get("text", "") for s in item.get("summary") or [] if isinstance(s, dict))
            messages.append({"role": "assistant", "parts": [{"type": "thinking", "text": summary or "(reasoning)"}]})
        elif "role" in item:
            role = item["role"] if isinstance(item["role"], str) else "?"
            parts = _openai_content(item.get("content"))
            if role in ("system", "developer") and not messages:
                system += parts
            else:
                messages.append({"role": role, "parts": parts})
        else:
            messages.append({"role": "?", "parts": [_text(item, "other")]})
    return system, messages


def _gemini_parts(parts: Any) -> list[Part]:
    out: list[Part] = []
    for p in parts if isinstance(parts, list) else [parts]:
        if not isinstance(p, dict):
            out.append(_text(p, "other"))
        elif isinstance(p.get("text"), str):
            out.append(_text(p["text"], "thinking" if p.get("thought") else "text"))
        elif isinstance(p.get("functionCall"), dict):
            fc = p["functionCall"]
            out.append(_tool_call(fc.get("name"), fc.get("args"), fc.get("id")))
        elif isinstance(p.get("functionResponse"), dict):
            fr = p["functionResponse"]
            out.append(_tool_result(fr.get("response"), fr.get("id") or fr.get("name")))
        else:
            out.append(_text(p, "other"))
    return out


def _gemini(body: dict) -> tuple[list[Part], list[dict]]:
    instruction = body.get("systemInstruction") or body.get("system_instruction")
    system = _gemini_parts(instruction.get("parts")) if isinstance(instruction, dict) else []
    contents = body.get("contents")
    messages = []
    for c in contents if isinstance(contents, list) else [contents]:
        if isinstance(c, dict):
            role = c.get("role") if isinstance(c.get("role"), str) else "user"
            messages.append({"role": "assistant" if role == "model" else role, "parts": _gemini_parts(c.get("parts"))})
        else:
            messages.append({"role": "?", "parts": [_text(c, "other")]})
    return system, messages


def _tools(body: dict) -> list[dict]:
    out = []
    for t in body.get("tools") or []:
        if not isinstance(t, dict):
            continue
        if isinstance(t.get("functionDeclarations"), list):  # Gemini
            for f in t["functionDeclarations"]:
                if isinstance(f, dict):
                    out.append(_tool_definition(f.get("name"), f.get("description"), f.get("parameters")))
        elif isinstance(t.get("function"), dict):  # Chat Completions
            f = t["function"]
            out.append(_tool_definition(f.get("name"), f.get("description"), f.get("parameters")))
        elif "name" in t:  # Anthropic, Responses
            out.append(_tool_definition(t.get("name"), t.get("description"),
                                        t.get("input_schema", t.get("parameters"))))
        else:  # a built-in tool (web search, code interpreter, ...)
            out.append(_tool_definition(t.get("type"), None, t))
    return out


def _tool_definition(name: Any, description: Any, schema: Any) -> dict:
    return {"name": name if isinstance(name, str) else "?",
            "description": description if isinstance(description, str) else "",
            "text": _json_text(schema) if schema is not None else ""}


PARAMETERS = ("model", "max_tokens", "max_output_tokens", "max_completion_tokens", "temperature", "top_p", "stream",
              "tool_choice", "reasoning_effort")


def conversation(request: Any) -> dict[str, Any]:
    """{system: [part], messages: [{role, parts}], tools: [{name,
    description, text}], parameters: {...}}. A part is {type, text, ...}:
    type text, thinking, tool_call (name, id), tool_result (id), other."""
    if not isinstance(request, dict):
        return {"system": [], "messages": [{"role": "?", "parts": [_text(request, "other")]}] if request else [],
                "tools": [], "parameters": {}}
    if "contents" in request:
        system, messages = _gemini(request)
    elif "input" in request or "instructions" in request:
        system, messages = _responses(request)
    elif isinstance(request.get("messages"), list):
        system, messages = _anthropic(request) if _anthropic_shaped(request) else _chat(request)
    elif isinstance(request.get("prompt"), (str, list)):  # legacy completions
        system, messages = [], [{"role": "user", "parts": [_text(request["prompt"])]}]
    else:
        system, messages = [], [{"role": "?", "parts": [_text(request, "other")]}]
    parameters = {k: request[k] for k in PARAMETERS if k in request and not isinstance(request[k], (dict, list))}
    return {"system": system, "messages": messages, "tools": _tools(request), "parameters": parameters}
