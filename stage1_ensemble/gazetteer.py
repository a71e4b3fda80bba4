"""The baseline to beat: exact, case-insensitive dictionary matching of training mentions."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from stage1_ensemble.chars import word_regex


class Gazetteer:
    """Longest match first, on word boundaries; spans as ``(start, end, score)``: the
    term's precision where ``measure`` found it, else 1.0.

    Mentions and text are compared lowered and in Unicode's composed form (NFC), so that a
    term learnt from "neumonía" is found in a file that writes it decomposed ("i" + U+0301);
    spans are offsets into the text as given."""

    def __init__(self) -> None:
        self.terms: dict[str, set[str]] = {}
        # per class, first word -> the numbers of words of the terms it starts, longest first
        self.lengths: dict[str, dict[str, list[int]]] = {}
        # per class, the score of a term's matches (its precision; 1.0 where not measured)
        self.scores: dict[str, dict[str, float]] = {}

    def fit(self, examples: Iterable[tuple[str, str, int, int]]) -> Gazetteer:
        """``examples``: (class, text, start, end) of each training mention."""
        for cls, text, start, end in examples:
            self.add(cls, text[start:end])
        return self

    def add(self, cls: str, term: str) -> None:
        """One term of class ``cls`` (compared lowered and composed, as text is)."""
        mention = unicodedata.normalize("NFC", term.strip().lower())
        words = word_regex().findall(mention)
        if not words:
            return
        self.terms.setdefault(cls, set()).add(mention)
        counts = self.lengths.setdefault(cls, {}).setdefault(words[0], [])
        if len(words) not in counts:
            counts.append(len(words))
            counts.sort(reverse=True)

    def measure(self, cls: str, examples: Iterable[tuple[str, Iterable[tuple[int, int]]]]
                ) -> dict[str, tuple[int, int]]:
        """Score each term of ``cls`` by its precision on ``examples`` (text, gold spans of
        the class): of the places it matches, the share that are annotated there. Returns
        (annotated, matched) per term; a term that never matches keeps 1.0."""
        counts: dict[str, list[int]] = {}
        for text, gold in examples:
            annotated = set(gold)
            for start, end, term in self.matches(text, cls):
                c = counts.setdefault(term, [0, 0])
                c[0] += (start, end) in annotated
                c[1] += 1
        self.scores[cls] = {t: a / n for t, (a, n) in counts.items()}
        return {t: (a, n) for t, (a, n) in counts.items()}

    def save(self, path: Path, **extra) -> None:
        """The terms and their scores as JSON (with ``extra`` facts about them)."""
        data = {"format_version": 1, **extra,
                "classes": {cls: {t: self.scores.get(cls, {}).get(t, 1.0)
                                  for t in sorted(terms)}
                            for cls, terms in sorted(self.terms.items())}}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Gazetteer:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            classes = data["classes"]
            gaz = cls()
            for label, terms in classes.items():
                for term, score in terms.items():
                    gaz.add(label, term)
                    if not 0.0 <= float(score) <= 1.0:
                        raise ValueError(f"the score of {term!r} is {score}, not in [0, 1]")
                    gaz.scores.setdefault(label, {})[
                        unicodedata.normalize("NFC", term.strip().lower())] = float(score)
            return gaz
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a gazetteer ({exc})") from None

    def predict(self, text: str, cls: str) -> list[tuple[int, int, float]]:
        scores = self.scores.get(cls, {})
        return [(start, end, scores.get(term, 1.0))
                for start, end, term in self.matches(text, cls)]

    def matches(self, text: str, cls: str) -> list[tuple[int, int, str]]:
        """(start, end, the term matched) of each match of a term of ``cls``."""
        terms = self.terms.get(cls)
        if not terms:
            return []
        words = [m.span() for m in word_regex().finditer(text)]
        lowered = text.lower()
        if len(lowered) != len(text):  # a few letters change length when lowered
            lowered = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
        composed = unicodedata.is_normalized("NFC", lowered)  # nearly all text: slices are too
        def nfc(key: str) -> str:
            return key if composed else unicodedata.normalize("NFC", key)

        lengths = self.lengths[cls]
        spans, i = [], 0
        while i < len(words):
            for n in lengths.get(nfc(lowered[words[i][0]:words[i][1]]), ()):
                if i + n > len(words):
                    continue
                start, end = words[i][0], words[i + n - 1][1]
                term = nfc(lowered[start:end])
                if term in terms:
                    spans.append((start, end, term))
                    i += n
                    break
            else:
                i += 1
        return spans
