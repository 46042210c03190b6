"""Analysis pipeline: raw TLS-plaintext and process events -> LLM call records.

Pure, sans-I/O Python::

    from agentsight.analyzers import Pipeline
    p = Pipeline(redact=True)
    for raw in events:            # dicts, see docs/events.md
        for out in p.feed(raw):   # exec/exit/fork/open, http, llm_call
            ...
    tail = p.close()
    p.stats                       # {"skipped.not_http": 1, ...}

Stages (one ``dict`` event type flows between them)::

    StreamReassembler -> Http1Parser (httptools, h11) -> LlmAnalyzer (providers/) -> Redactor
"""
from __future__ import annotations

from .pipeline import Pipeline
from .redact import REDACTED, mask_event

__all__ = ["Pipeline", "REDACTED", "mask_event"]
