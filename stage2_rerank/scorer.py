"""The one interface: ``score(candidates) -> list[float]``, batch in, same order out."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from prompts import load_template
from stage2_rerank.cache import ScoreCache
from stage2_rerank.candidate import Candidate
from stage2_rerank.prompting import PromptBuilder, PromptIds

logger = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    # The longest prompt (in tokens) the model takes with its one answer token, or None
    # when the backend cannot tell.
    max_prompt_tokens: int | None

    def score_prompts(self, prompts: Sequence[PromptIds], yes_id: int, no_id: int,
                      ) -> list[float]: ...


def yes_probability(logit_or_logprob_yes: float, logit_or_logprob_no: float) -> float:
    """P(yes) / (P(yes) + P(no)) from two logits or log-probabilities (a 2-way softmax)."""
    diff = logit_or_logprob_no - logit_or_logprob_yes
    if diff > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(diff))


def model_identity(model: str | Path) -> str:
    """A name for the model's weights: the path plus a fingerprint of its files."""
    path = Path(model)
    if not path.is_dir():
        return str(model)
    h = hashlib.sha256(str(path.resolve()).encode())
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".gguf")):
            stat = f.stat()
            h.update(f"{f.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
            if f.suffix == ".json" and stat.st_size < 1_000_000:
                h.update(f.read_bytes())
    return f"{path.name}@{h.hexdigest()[:16]}"


class Scorer:
    """Candidates -> prompts -> cache -> backend -> p(yes).

    Prompts the cache lacks go to the backend ``chunk_size`` at a time, and each chunk's
    scores are cached as soon as they come back: a run killed after hours of scoring keeps
    them. ``on_progress(done, total)``, if set, is called after each chunk.

    The context shown is bounded (``max_context_tokens``), the mention is not: a run-away
    stage-1 span of thousands of characters can make a prompt longer than the model takes,
    which vLLM refuses (failing every candidate sent with it) and transformers would run
    past its trained positions. Such a candidate is no mention the model can judge: it is
    not sent, scores 0 (dropped at any stage-2 threshold above 0), is counted in
    ``too_long``, listed in ``skipped`` (its position in the last call's candidates) and
    logged. A context that alone does not fit is a setting to change: an error.
    """

    def __init__(self, backend: Backend, builder: PromptBuilder, *, identity: str,
                 cache: ScoreCache | None = None, chunk_size: int = 512) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
        self.backend, self.builder, self.cache = backend, builder, cache
        self.identity = f"{identity}|{builder.template.name}|{builder.max_context_tokens}"
        self.chunk_size = chunk_size
        self.calls = 0  # prompts sent to the model (cache misses)
        self.too_long = 0  # candidates not sent: their prompt does not fit the model
        self.skipped: list[int] = []  # their positions in the last call to score()
        self.on_progress: Callable[[int, int], None] | None = None

    def score(self, candidates: Sequence[Candidate]) -> list[float]:
        self.skipped = []
        if not candidates:
            return []
        prompts = self.builder.build(candidates)  # validates every candidate first
        keys = [p.digest() for p in prompts]
        scores: list[float | None] = (self.cache.get_many(self.identity, keys) if self.cache is not None
                                      else [None] * len(prompts))
        self.skipped = self._too_long(candidates, prompts)
        for i in self.skipped:
            scores[i] = 0.0
        missing = [i for i, s in enumerate(scores) if s is None]
        for lo in range(0, len(missing), self.chunk_size):
            part = missing[lo : lo + self.chunk_size]
            fresh = self.backend.score_prompts([prompts[i] for i in part],
                                               self.builder.yes_id, self.builder.no_id)
            if len(fresh) != len(part):
                raise RuntimeError(f"backend {self.backend.name} returned {len(fresh)} scores "
                                   f"for {len(part)} prompts")
            self.calls += len(part)
            for i, s in zip(part, fresh):
                scores[i] = s
            if self.cache is not None:
                self.cache.put_many(self.identity, [(keys[i], scores[i]) for i in part])
            if self.on_progress is not None:
                self.on_progress(lo + len(part), len(missing))
        return [float(s) for s in scores]  # type: ignore[arg-type]

    def _too_long(self, candidates: Sequence[Candidate], prompts: Sequence[PromptIds],
                  ) -> list[int]:
        limit = getattr(self.backend, "max_prompt_tokens", None)
        if limit is None:
            return []
        lengths = [len(p.prefix) + len(p.suffix) for p in prompts]
        over = [i for i, n in enumerate(lengths) if n > limit]
        if not over:
            return []
        uses = self.builder.template.suffix.count("{mention}")
        for i in over:  # the prompt without its mention must fit, or the settings are wrong
            mention = uses * len(self.builder.tokenizer.encode(candidates[i].mention,
                                                               add_special_tokens=False))
            if lengths[i] - mention > limit:
                raise ValueError(f"the model takes prompts of at most {limit} tokens, but one "
                                 f"without its mention takes {lengths[i] - mention}; lower "
                                 f"max_context_tokens (now {self.builder.max_context_tokens}) "
                                 "or give the model a longer context")
        self.too_long += len(over)
        c = candidates[over[0]]
        logger.warning("%d candidate(s) make prompts longer than the model takes (%d tokens) "
                       "and are dropped without asking it (score 0); the first: document %r, "
                       "%s at %d-%d, %d characters, a prompt of %d tokens", len(over), limit,
                       c.doc_id, c.label, c.start, c.end, c.end - c.start, lengths[over[0]])
        return over


def load_tokenizer(model: str | Path, tokenizer: str | Path | None = None):
    from transformers import AutoTokenizer

    source = Path(tokenizer or model)
    if not source.exists():
        raise FileNotFoundError(f"model path {source} does not exist (give a local folder "
                                "with the model's tokenizer)")
    return AutoTokenizer.from_pretrained(str(source))


JUDGE_RECORD = "judge.json"


def prompt_settings(model: str | Path) -> dict:
    """The prompt a judge was trained with (template, context, chat template), from the
    ``judge.json`` that ``train-judge`` leaves in its folder; empty for any other model.
    A judge answers well only to the prompt it learnt on, so it is the default."""
    record = judge_record(model)
    if record is None:
        return {}
    try:
        prompt = record["prompt"]
        settings = {k: prompt[k] for k in ("max_context_tokens", "use_chat_template")}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{Path(model) / JUDGE_RECORD}: not a judge record this version "
                         f"reads (no {exc})") from None
    # the template itself travels with the judge: a later edit of a shipped one changes
    # nothing the judge was trained on
    return {**settings, "template": str(Path(model) / prompt.get("template_file", "template.json"))}


def judge_record(model: str | Path) -> dict | None:
    """The ``judge.json`` of a judge folder, or None for any other model."""
    path = Path(model) / JUDGE_RECORD
    if not path.is_file():
        return None
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not a judge record ({exc})") from None


def judge_band(model: str | Path) -> float | None:
    """The stage-1 score a judge learnt below (``max_stage1_score``: it saw no candidate at
    or above it), or None: a judge of every candidate, or no judge."""
    record = judge_record(model) or {}
    return (record.get("config") or {}).get("max_stage1_score")


def lora_parts(judge: str | Path) -> tuple[Path, Path, int]:
    """(base model, adapter folder, rank) of a judge trained with LoRA."""
    record = judge_record(judge)
    lora = (record or {}).get("lora")
    if record is None:
        raise ValueError(f"{judge}: not a judge (no {JUDGE_RECORD}); serve it as a plain model")
    if not lora:
        raise ValueError(f"{judge}: this judge was fully fine-tuned and has no LoRA adapter; "
                         "serve its folder as a plain model")
    base = Path(record["base"])
    if not base.is_dir():
        raise FileNotFoundError(f"{judge}: its base model {base} is not there; the adapter "
                                "needs it (or serve the judge's merged weights)")
    return base, Path(judge) / lora["adapter"], int(lora["rank"])


def resolve(backend: str, model: str | Path, *, template: str | None = None,
            max_context_tokens: int | None = None, tokenizer: str | Path | None = None,
            use_chat_template: bool | None = None, **options) -> dict:
    """What ``load_scorer`` will serve, decided without loading anything: the model folder,
    its identity (the key of its cached scores), the prompt settings (left unset: the
    judge's record where ``model`` is a judge trained here, else the defaults,
    ``rerank_v1`` and 1,024 tokens of context) and the backend's options."""
    trained = prompt_settings(model)
    identity = model_identity(model)
    if options.pop("lora", False):  # the judge's adapter on its base, not its merged weights
        if backend != "vllm":
            raise ValueError(f"serving a judge as a LoRA adapter needs the vllm backend, not "
                             f"{backend}")
        base, adapter, rank = lora_parts(model)
        options.update(lora_adapter=adapter, lora_rank=rank)
        tokenizer = tokenizer or model
        model, identity = base, identity + "+lora"
    template = template or trained.get("template") or "rerank_v1"
    max_context_tokens = max_context_tokens or trained.get("max_context_tokens") or 1024
    if use_chat_template is None:
        use_chat_template = trained.get("use_chat_template")
    return {"model": model, "tokenizer": tokenizer, "template": template,
            "max_context_tokens": max_context_tokens, "use_chat_template": use_chat_template,
            "options": options, "model_identity": identity,
            # as Scorer composes it
            "identity": f"{identity}|{load_template(template).name}|{max_context_tokens}"}


def scorer_identity(backend: str, model: str | Path, **settings) -> str:
    """The ``identity`` of the scorer that ``load_scorer`` with these arguments makes."""
    return resolve(backend, model, **settings)["identity"]


def load_scorer(backend: str, model: str | Path, *, cache_dir: Path | None = None,
                **settings) -> Scorer:
    """A scorer with backend ``vllm`` (in-process engine), ``openai`` (servers by URL,
    ``urls=[...]``) or ``hf`` (transformers); ``settings`` as in `resolve`."""
    r = resolve(backend, model, **settings)
    model, options = r["model"], r["options"]
    tok = load_tokenizer(model, r["tokenizer"])
    builder = PromptBuilder(tok, load_template(r["template"]),
                            max_context_tokens=r["max_context_tokens"],
                            use_chat_template=r["use_chat_template"])
    if backend == "hf":
        from stage2_rerank.backends.hf import HFBackend

        impl: Backend = HFBackend(model, **options)
    elif backend == "vllm":
        from stage2_rerank.backends.vllm_engine import VLLMBackend

        impl = VLLMBackend(model, **options)
    elif backend == "openai":
        from stage2_rerank.backends.openai_server import OpenAIBackend

        impl = OpenAIBackend(model=str(options.pop("served_model", model)), **options)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose vllm, openai or hf")
    cache = ScoreCache(Path(cache_dir) / "scores.sqlite") if cache_dir else None
    return Scorer(impl, builder, identity=r["model_identity"], cache=cache)
