"""The one failure the stage-2 library reports as not the input's: the LLM service."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """The LLM service failed (a server down or overloaded, a timeout, an engine that died):
    the same request may succeed later. Never a property of the prompt that was sent."""
