"""Options and loaders shared by run, tune and ablate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import PipelineError

BACKENDS = ("vllm", "openai", "hf")


def default_backend() -> str:
    """The embedded vLLM engine where vLLM is installed, transformers otherwise."""
    try:
        import vllm  # noqa: F401

        return "vllm"
    except ImportError:
        return "hf"


InferenceConfigOption = Annotated[Path | None, typer.Option(
    help="InferenceConfig JSON for the ensemble (batch_size, device, bf16, compile, "
         "width_multiple, max_length, stride; unknown keys fail).")]


def load_ensemble(path: Path, inference_config: Path | None = None):
    from stage1_ensemble.config import InferenceConfig, load_config
    from stage1_ensemble.ensemble import Ensemble

    try:
        config = load_config(inference_config, InferenceConfig) if inference_config else None
        return Ensemble.load(path, config)
    except (FileNotFoundError, ValueError) as exc:
        raise PipelineError(str(exc)) from None


def char_cache(cache_dir: Path, ensemble):
    from stage1_ensemble.ensemble import CharProbCache

    return CharProbCache(cache_dir / "charprobs", ensemble.identity)


def load_llm(llm: str | None, backend: str | None, urls: list[str] | None, cache_dir: Path,
             max_context_tokens: int = 1024):
    if llm is None:
        return None
    from stage2_rerank import load_scorer

    backend = backend or ("openai" if urls else default_backend())  # URLs: servers
    if urls and backend != "openai":
        raise PipelineError(f"--llm-url is for the openai backend (vLLM servers); it cannot "
                            f"go with --llm-backend {backend}")
    if backend not in BACKENDS:
        raise PipelineError(f"unknown --llm-backend {backend!r}; choose from {BACKENDS}")
    options: dict = {}
    if backend == "openai":
        options["urls"] = urls or ["http://127.0.0.1:8000"]
    try:
        return load_scorer(backend, llm, cache_dir=cache_dir,
                           max_context_tokens=max_context_tokens, **options)
    except FileNotFoundError as exc:
        raise PipelineError(str(exc)) from None
