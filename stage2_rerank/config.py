"""Settings of the stage-2 LLM that a user reaches without editing code (``--llm-config``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ServerOptions(BaseModel):
    """How the openai backend talks to its servers; unset: the backend's defaults."""

    model_config = ConfigDict(extra="forbid")

    timeout: float | None = Field(None, gt=0)  # seconds a request may take
    retries: int | None = Field(None, ge=1)  # tries per server before the run stops
    backoff: float | None = Field(None, ge=0)  # seconds before the first retry; doubles
    batch_size: int | None = Field(None, ge=1)  # prompts per request
    concurrency: int | None = Field(None, ge=1)  # requests in flight


class LlmConfig(BaseModel):
    """The prompt and the backend's options. Prompt settings left unset come from a
    judge's ``judge.json`` (the prompt it learnt on), else the defaults."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = None  # a shipped template's name or a .json file
    max_context_tokens: int | None = Field(None, ge=16)  # tokens of the note shown
    use_chat_template: bool | None = None  # None: where the tokenizer has one
    dtype: Literal["auto", "float32", "bfloat16"] | None = None  # hf and vllm
    max_model_len: int | None = Field(None, ge=16)  # vllm
    lora: bool = False  # vllm: serve a judge as its LoRA adapter on its base model
    engine: dict[str, Any] = Field(default_factory=dict)  # more vLLM engine options, as is
    server: ServerOptions = Field(default_factory=ServerOptions)  # openai

    def scorer_options(self, backend: str) -> dict:
        """Keyword arguments of ``load_scorer`` for ``backend``; a setting that backend
        does not have is an error, not silently dropped."""
        opts: dict[str, Any] = {k: v for k, v in (
            ("template", self.template), ("max_context_tokens", self.max_context_tokens),
            ("use_chat_template", self.use_chat_template)) if v is not None}
        only = {"dtype": ("hf", "vllm"), "max_model_len": ("vllm",), "lora": ("vllm",),
                "engine": ("vllm",), "server": ("openai",)}
        for key, backends in only.items():
            value = getattr(self, key)
            if isinstance(value, BaseModel):
                value = value.model_dump(exclude_none=True)
            if not value:
                continue
            if backend not in backends:
                raise ValueError(f"the LLM setting {key} is for the {' and '.join(backends)} "
                                 f"backend{'s' if len(backends) > 1 else ''}, not {backend}"
                                 + (" (a server's own options set it)" if backend == "openai"
                                    else ""))
            if key in ("engine", "server"):
                opts.update(value)
            else:
                opts[key] = value
        return opts
