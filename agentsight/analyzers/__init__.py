"""What captured events mean: HTTP exchanges, LLM calls, and the links
between a model's tool calls and what they caused. Pure and replayable:
see `Analysis` (analysis.py) and `Correlator` (correlate.py)."""
from __future__ import annotations

from .analysis import Analysis
from .redact import REDACTED, Redactor

__all__ = ["Analysis", "REDACTED", "Redactor"]
