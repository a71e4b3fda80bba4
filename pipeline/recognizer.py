"""Both stages from Python: texts in, spans out.

    from pipeline import Recognizer

    rec = Recognizer.load("runs/demo/ensemble", llm="runs/demo/smollm2",
                          thresholds="runs/demo/thresholds.json")
    for span in rec("Paciente con fiebre y disnea de esfuerzo."):
        print(span.label, span.start, span.end, span.stage1_score, span.stage2_score)

The loaders here also serve the ``pipeline`` command (``run``, ``tune``, ``ablate``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import overload

from pipeline.documents import Document, Span
from pipeline.errors import PipelineError
from pipeline.thresholds import Thresholds

logger = logging.getLogger(__name__)

BACKENDS = ("vllm", "openai", "hf")


def default_backend() -> str:
    """The embedded vLLM engine where vLLM is installed, transformers otherwise."""
    try:
        import vllm  # noqa: F401

        return "vllm"
    except ImportError:
        return "hf"


def load_ensemble(path: Path, inference_config=None, models: bool = True):
    """The stage-1 ensemble of folder ``path`` (with an ``InferenceConfig``, or the JSON
    file of one, if given); ``models=False``: its manifest, checked, without loading the
    models (for a driver whose workers hold them)."""
    from stage1_ensemble.config import InferenceConfig, load_config
    from stage1_ensemble.ensemble import Ensemble

    try:
        config = load_config(inference_config, InferenceConfig) \
            if isinstance(inference_config, (str, Path)) else inference_config
        ensemble = Ensemble.load(path, config)
        if models:  # a broken member stops here, not as every document failing
            ensemble.load_models()
        return ensemble
    except (FileNotFoundError, ValueError) as exc:
        raise PipelineError(str(exc)) from None


def char_cache(cache_dir: Path, ensemble):
    """The on-disk cache of ``ensemble``'s character probabilities under ``cache_dir``."""
    from stage1_ensemble.cache import CharProbCache

    return CharProbCache(Path(cache_dir), ensemble.probs_identity)


def resolve_backend(llm: str | Path | None, backend: str | None = None,
                urls: list[str] | None = None) -> str | None:
    """The backend that will serve ``llm`` (None: no LLM), or a PipelineError for options
    that do not go together. Cheap: commands call it before loading any model."""
    if llm is None:
        if urls or backend:
            raise PipelineError("an LLM backend or server URLs were given but no LLM (--llm: "
                                "the model folder, whose tokenizer builds the prompts)")
        return None
    backend = backend or ("openai" if urls else default_backend())
    if urls and backend != "openai":
        raise PipelineError(f"server URLs (--llm-url) are for the openai backend (vLLM "
                            f"servers); they cannot go with the {backend} backend")
    if backend not in BACKENDS:
        raise PipelineError(f"unknown LLM backend {backend!r}; choose from {BACKENDS}")
    return backend


def llm_arguments(llm: str | Path | None, backend: str | None = None,
                  urls: list[str] | None = None, settings=None, **options
                  ) -> tuple[str | None, dict]:
    """(backend, keyword arguments of ``load_scorer``) for ``load_llm``'s arguments;
    backend None: no LLM."""
    backend = resolve_backend(llm, backend, urls)
    if backend is None:
        return None, {}
    if settings is not None:
        options = {**settings.scorer_options(backend), **options}
    if backend == "openai":
        options["urls"] = urls or ["http://127.0.0.1:8000"]
    return backend, options


def load_llm(llm: str | Path | None, backend: str | None = None, urls: list[str] | None = None,
             cache_dir: Path | None = None, settings=None, **options):
    """The stage-2 scorer of model ``llm`` (None: no re-ranking). Server URLs mean the
    openai backend; without them vLLM where it is installed, else transformers.
    ``settings`` (an ``LlmConfig``) gives the prompt and the backend's options."""
    backend, options = llm_arguments(llm, backend, urls, settings, **options)
    if backend is None:
        return None
    from stage2_rerank import load_scorer

    try:
        return load_scorer(backend, llm, cache_dir=cache_dir, **options)
    except FileNotFoundError as exc:
        raise PipelineError(str(exc)) from None


def llm_identity(llm: str | Path | None, backend: str | None = None,
                 urls: list[str] | None = None, settings=None) -> str | None:
    """The ``identity`` of the scorer ``load_llm`` would make (None: no LLM), found without
    loading the model: what a driver that leaves the models to its workers records."""
    backend, options = llm_arguments(llm, backend, urls, settings)
    if backend is None:
        return None
    from stage2_rerank.scorer import scorer_identity

    try:
        return scorer_identity(backend, llm, **options)
    except FileNotFoundError as exc:
        raise PipelineError(str(exc)) from None


def warn_unfit(thresholds: Thresholds, ensemble, scorer, source: str = "thresholds",
               model: str | Path | None = None) -> None:
    """A warning for each way ``thresholds`` may not suit this ensemble and LLM (tuned for
    others, lacking a class, asking a judge about candidates it never learnt on): they run,
    but are not what tuning chose for these. ``scorer``: the LLM's scorer, or its identity
    (None: no LLM); ``model``: its folder (a judge's record tells what it learnt on)."""
    from stage2_rerank.scorer import judge_band

    llm = scorer if scorer is None or isinstance(scorer, str) else scorer.identity
    band = judge_band(model) if model is not None and scorer is not None else None
    for problem in thresholds.unfit(ensemble.classes, ensemble.identity, llm, band):
        logger.warning("%s: %s (pipeline tune chooses thresholds for this ensemble and LLM)",
                       source, problem)


class Recognizer:
    """The ensemble proposes spans, the LLM (if any) judges them, the thresholds decide.

    ``thresholds`` may be changed between calls to trade precision for recall; with a
    ``cache_dir`` the models' outputs are kept on disk, so that calling again on the same
    texts with other thresholds runs no model.
    """

    def __init__(self, ensemble, scorer=None, thresholds: Thresholds | None = None,
                 char_cache=None, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        for name, value, ok in (("ensemble", ensemble, hasattr(ensemble, "classes")),
                                ("scorer", scorer, scorer is None or hasattr(scorer, "score")),
                                ("thresholds", thresholds,
                                 thresholds is None or isinstance(thresholds, Thresholds))):
            if not ok:  # a folder or file name most likely: that is what load() takes
                raise TypeError(f"Recognizer's {name} is a {type(value).__name__} ({value!r:.80}), "
                                "not a loaded object; Recognizer.load(ensemble folder, llm, "
                                "thresholds=file) loads them from their files")
        self.ensemble = ensemble
        self.scorer = scorer
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.char_cache = char_cache
        self.batch_size = batch_size

    @classmethod
    def load(cls, ensemble: str | Path, llm: str | Path | None = None, *,
             thresholds: str | Path | Thresholds | None = None, stage1_threshold: float = 0.6,
             stage2_threshold: float = 0.5, backend: str | None = None,
             urls: list[str] | None = None, cache_dir: str | Path | None = None,
             inference_config: str | Path | None = None, batch_size: int = 16,
             **llm_options) -> Recognizer:
        """Load the ensemble folder (from ``pipeline train``) and the LLM ``llm`` (None: the
        ensemble alone). ``thresholds`` (a ``pipeline tune`` file or a ``Thresholds``)
        overrides the two uniform thresholds. ``llm_options`` go to the backend (e.g.
        ``dtype="float32"`` for vLLM)."""
        if not isinstance(thresholds, Thresholds):
            thresholds = Thresholds.load(Path(thresholds)) if thresholds is not None else \
                Thresholds.uniform(stage1_threshold, stage2_threshold)
        resolve_backend(llm, backend, urls)  # before the slow loads
        ens = load_ensemble(Path(ensemble), Path(inference_config) if inference_config else None)
        thresholds.check_classes(ens.classes)
        cache = Path(cache_dir) if cache_dir is not None else None
        scorer = load_llm(llm, backend, urls, cache, **llm_options)
        warn_unfit(thresholds, ens, scorer, model=llm)
        return cls(ens, scorer, thresholds, char_cache(cache, ens) if cache else None,
                   batch_size)

    @overload
    def __call__(self, texts: str | Document) -> list[Span]: ...

    @overload
    def __call__(self, texts: Sequence[str | Document]) -> list[list[Span]]: ...

    def __call__(self, texts):
        """The kept spans of one text (a list), or of each of several (a list of lists).

        Texts given as strings are documents named by their position ("0", "1", ...); a
        ``Document`` keeps its id, and its ``entity_class`` (if set) limits it to that class.
        Spans carry their stage-1 score and, where the LLM judged them, its score."""
        if isinstance(texts, (str, Document)):
            return self.recognise([texts])[0][1]
        return [kept for _, kept in self.recognise(texts)]

    def recognise(self, texts: Sequence[str | Document],
                  ) -> list[tuple[list[Span], list[Span]]]:
        """(stage-1 candidates, kept spans) of each text, in the order given."""
        from pipeline.predict import two_stages

        docs = [t if isinstance(t, Document) else Document(str(i), self._text(t, i))
                for i, t in enumerate(texts)]
        out: list[tuple[list[Span], list[Span]]] = []
        for lo in range(0, len(docs), self.batch_size):
            batch = docs[lo : lo + self.batch_size]
            candidates, kept = two_stages(batch, ensemble=self.ensemble, scorer=self.scorer,
                                          thresholds=self.thresholds, char_cache=self.char_cache)
            out += zip(candidates, kept)
        return out

    @staticmethod
    def _text(text: object, i: int) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}; give strings or Documents")
        return text
