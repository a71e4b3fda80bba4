"""The baseline to beat: exact, case-insensitive dictionary matching of training mentions."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from stage1_ensemble.chars import word_regex


class Gazetteer:
    """Longest match first, on word boundaries; spans as ``(start, end, 1.0)``.

    Mentions and text are compared lowered and in Unicode's composed form (NFC), so that a
    term learnt from "neumonía" is found in a file that writes it decomposed ("i" + U+0301);
    spans are offsets into the text as given."""

    def __init__(self) -> None:
        self.terms: dict[str, set[str]] = {}
        self.max_words: dict[str, int] = {}

    def fit(self, examples: Iterable[tuple[str, str, int, int]]) -> Gazetteer:
        """``examples``: (class, text, start, end) of each training mention."""
        for cls, text, start, end in examples:
            mention = unicodedata.normalize("NFC", text[start:end].strip().lower())
            words = len(word_regex().findall(mention))
            if words == 0:
                continue
            self.terms.setdefault(cls, set()).add(mention)
            self.max_words[cls] = max(self.max_words.get(cls, 0), words)
        return self

    def predict(self, text: str, cls: str) -> list[tuple[int, int, float]]:
        terms = self.terms.get(cls)
        if not terms:
            return []
        words = [m.span() for m in word_regex().finditer(text)]
        lowered = text.lower()
        if len(lowered) != len(text):  # a few letters change length when lowered
            lowered = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
        composed = unicodedata.is_normalized("NFC", lowered)  # nearly all text: slices are too
        spans, i = [], 0
        while i < len(words):
            for n in range(min(self.max_words[cls], len(words) - i), 0, -1):
                start, end = words[i][0], words[i + n - 1][1]
                key = lowered[start:end]
                if (key if composed else unicodedata.normalize("NFC", key)) in terms:
                    spans.append((start, end, 1.0))
                    i += n
                    break
            else:
                i += 1
        return spans
