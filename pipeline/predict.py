"""The two stages over documents: propose candidates (stage 1), score them (stage 2), keep.

Each step is a function over a batch of documents, testable alone; ``pipeline.run`` strings
them together for large corpora, ``pipeline.tune`` and ``pipeline.ablate`` reuse them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from pipeline.documents import Document, Span
from pipeline.thresholds import Thresholds
from stage1_ensemble.cache import CharProbCache
from stage1_ensemble.decode import decode_batch
from stage1_ensemble.ensemble import Ensemble, cached_char_probs


def char_probabilities(docs: Sequence[Document], ensemble: Ensemble,
                       cache: CharProbCache | None = None) -> list[dict[str, np.ndarray]]:
    """{class: character probabilities} per document, for the classes it is predicted for.

    Documents predicted for the same classes (usually all of them) go to the ensemble
    together, so that its models tokenize them once for all classes."""
    out: list[dict[str, np.ndarray]] = [{} for _ in docs]
    known = tuple(ensemble.classes)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, d in enumerate(docs):
        classes = tuple(c for c in known if c in d.classes(known))
        if classes:
            groups.setdefault(classes, []).append(i)
    for classes, idx in groups.items():
        probs = cached_char_probs(ensemble, [docs[i].text for i in idx], classes, cache)
        for i, p in zip(idx, probs):
            out[i].update(p)
    return out


def propose(docs: Sequence[Document], probs: Sequence[dict[str, np.ndarray]],
            thresholds: Thresholds) -> list[list[Span]]:
    """Stage-1 candidates of each document, with their stage-1 scores: the spans of the
    characters at or above a class's stage-1 threshold whose score reaches its floor."""
    out: list[list[Span]] = [[] for _ in docs]
    classes = sorted({c for p in probs for c in p})
    for cls in classes:
        idx = [i for i, p in enumerate(probs) if cls in p]
        spans = decode_batch([docs[i].text for i in idx], [probs[i][cls] for i in idx],
                             thresholds.of(cls).stage1)
        floor = thresholds.of(cls).floor
        for i, found in zip(idx, spans):
            out[i] += [Span(docs[i].id, cls, s, e, stage1_score=score) for s, e, score in found
                       if score >= floor]
    for spans in out:
        spans.sort(key=lambda s: (s.start, s.end, s.label))
    return out


def needs_llm(span: Span, thresholds: Thresholds) -> bool:
    route = thresholds.of(span.label).route
    return route is None or (span.stage1_score or 0.0) < route


def rerank(docs: Sequence[Document], candidates: Sequence[Sequence[Span]], scorer,
           thresholds: Thresholds, too_long: list[int] | None = None) -> list[list[Span]]:
    """Candidates with their stage-2 scores; those routed past the LLM keep stage2 None.
    ``too_long`` (if given, one count per document) adds up the candidates the scorer did
    not send because their prompt does not fit the model (they score 0)."""
    from stage2_rerank import Candidate

    asks: list[tuple[int, int]] = []
    batch = []
    for i, (doc, spans) in enumerate(zip(docs, candidates)):
        for j, span in enumerate(spans):
            if needs_llm(span, thresholds):
                asks.append((i, j))
                batch.append(Candidate(doc.text, span.start, span.end, span.label, doc.id,
                                       doc.lang, span.stage1_score))
    scores = scorer.score(batch) if batch else []
    out = [list(spans) for spans in candidates]
    for (i, j), p in zip(asks, scores):
        out[i][j] = out[i][j].with_scores(stage2=p)
    if too_long is not None and batch:
        for k in scorer.skipped:
            too_long[asks[k][0]] += 1
    return out


def keep(spans: Sequence[Span], thresholds: Thresholds) -> list[Span]:
    """Spans that pass stage 2 (or were routed past it)."""
    return [s for s in spans if s.stage2_score is None and not needs_llm(s, thresholds)
            or s.stage2_score is not None and s.stage2_score >= thresholds.of(s.label).stage2]


def stage_one(docs: Sequence[Document], *, ensemble, thresholds: Thresholds,
              char_cache: CharProbCache | None = None,
              seconds: dict[str, float] | None = None) -> list[list[Span]]:
    """Stage-1 candidates of each document (none for a text of whitespace only).
    ``seconds`` (if given) adds the time taken under "stage1"."""
    t0 = time.perf_counter()
    live = [i for i, d in enumerate(docs) if d.text.strip()]
    some = [docs[i] for i in live]
    found = propose(some, char_probabilities(some, ensemble, char_cache), thresholds)
    out: list[list[Span]] = [[] for _ in docs]
    for i, spans in zip(live, found):
        out[i] = spans
    if seconds is not None:
        seconds["stage1"] += time.perf_counter() - t0
    return out


def stage_two(docs: Sequence[Document], found: Sequence[Sequence[Span]], *, scorer,
              thresholds: Thresholds, seconds: dict[str, float] | None = None,
              too_long: list[int] | None = None) -> tuple[list[list[Span]], list[list[Span]]]:
    """The candidates ``found`` of each document with the LLM's scores (where it was
    asked), and the spans kept. Without a scorer every candidate is kept. ``seconds`` (if
    given) adds the time taken under "stage2"; ``too_long`` (if given) is as in `rerank`."""
    t0 = time.perf_counter()
    if scorer is None:
        candidates = [list(spans) for spans in found]
        kept = candidates
    else:
        candidates = rerank(docs, found, scorer, thresholds, too_long)
        kept = [keep(spans, thresholds) for spans in candidates]
    if seconds is not None:
        seconds["stage2"] += time.perf_counter() - t0
    return candidates, kept


def two_stages(docs: Sequence[Document], *, ensemble, scorer, thresholds: Thresholds,
               char_cache: CharProbCache | None = None, seconds: dict[str, float] | None = None,
               too_long: list[int] | None = None,
               ) -> tuple[list[list[Span]], list[list[Span]]]:
    """Stage-1 candidates (with the LLM's scores, where it was asked) and kept spans of
    each document (none for a text of whitespace only): `stage_one`, then `stage_two`."""
    found = stage_one(docs, ensemble=ensemble, thresholds=thresholds, char_cache=char_cache,
                      seconds=seconds)
    return stage_two(docs, found, scorer=scorer, thresholds=thresholds, seconds=seconds,
                     too_long=too_long)
