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
        # per class, first word -> the numbers of words of the terms it starts, longest first
        self.lengths: dict[str, dict[str, list[int]]] = {}

    def fit(self, examples: Iterable[tuple[str, str, int, int]]) -> Gazetteer:
        """``examples``: (class, text, start, end) of each training mention."""
        for cls, text, start, end in examples:
            mention = unicodedata.normalize("NFC", text[start:end].strip().lower())
            words = word_regex().findall(mention)
            if not words:
                continue
            self.terms.setdefault(cls, set()).add(mention)
            counts = self.lengths.setdefault(cls, {}).setdefault(words[0], [])
            if len(words) not in counts:
                counts.append(len(words))
                counts.sort(reverse=True)
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
        def nfc(key: str) -> str:
            return key if composed else unicodedata.normalize("NFC", key)

        lengths = self.lengths[cls]
        spans, i = [], 0
        while i < len(words):
            for n in lengths.get(nfc(lowered[words[i][0]:words[i][1]]), ()):
                if i + n > len(words):
                    continue
                start, end = words[i][0], words[i + n - 1][1]
                if nfc(lowered[start:end]) in terms:
                    spans.append((start, end, 1.0))
                    i += n
                    break
            else:
                i += 1
        return spans
