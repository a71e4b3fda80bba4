"""Character classes of a text, looked up only at the positions asked for.

Lookup tables cover the Basic Multilingual Plane (built once, ~10 ms); the rare characters
beyond it are classified one by one. Span boundaries are few compared with characters, so
decoding and projection ask about positions, never build a mask over the whole text.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

import numpy as np


def is_word_char(c: str) -> bool:
    """A Unicode letter or digit (``str.isalnum``), or a combining mark (categories Mn, Mc,
    Me): in decomposed text (NFD, as some systems write files) "š" is "s" + U+030C, and a
    word must not end between a letter and its accent."""
    return c.isalnum() or unicodedata.category(c)[0] == "M"


_BMP = 0x10000
_ALNUM = np.array([is_word_char(chr(c)) for c in range(_BMP)], dtype=bool)


@functools.cache
def word_regex() -> re.Pattern:
    """Words as decoding sees them (maximal runs of ``is_word_char``), as a regular
    expression (built on first use: it scans every code point for marks)."""
    marks = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M"]
    ranges, i = [], 0
    while i < len(marks):
        j = i
        while j + 1 < len(marks) and marks[j + 1] == marks[j] + 1:
            j += 1
        ranges.append(re.escape(chr(marks[i])) + (f"-{re.escape(chr(marks[j]))}" if j > i else ""))
        i = j + 1
    return re.compile(rf"(?:[^\W_]|[{''.join(ranges)}])+")


_SPACE = np.array([chr(c).isspace() for c in range(_BMP)], dtype=bool)


# Batches of texts are joined and worked on in pieces of about this many characters: large
# enough that per-call overheads vanish, small enough that the arrays stay in cache.
CHUNK_CHARS = 1 << 19


def chunks(lengths: list[int], budget: int | None = None) -> list[tuple[int, int]]:
    """``(lo, hi)`` ranges of consecutive texts of at most ``budget`` (CHUNK_CHARS)
    characters in all, separators counted (a longer text is a range of its own)."""
    budget = CHUNK_CHARS if budget is None else budget
    out, lo, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > lo and total + n > budget:
            out.append((lo, i))
            lo, total = i, 0
        total += n + 1
    if lo < len(lengths):
        out.append((lo, len(lengths)))
    return out


def running_total(values: np.ndarray, dtype) -> np.ndarray:
    """Inclusive prefix sums of a 1-D array, as ``dtype`` (int32, int64 or float64).

    Torch's CPU kernel does this at about 1 ns per element, numpy's cumsum at 3 to 5 (both
    single-threaded; bench/RESULTS.md); the projection keeps running counts over every
    character of a batch.
    """
    import torch  # stage 1 needs it anyway; imported here so that decoding alone stays light

    out = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return torch.cumsum(torch.from_numpy(np.ascontiguousarray(values)), 0, dtype=out).numpy()


_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: object) -> str | None:
    """Why ``text`` cannot be tokenized (None when it can): not a string, or a lone
    surrogate (JSON's "\\ud800" escapes can make one; it is no Unicode character and
    tokenizers refuse the whole text)."""
    if not isinstance(text, str):
        return f"is a {type(text).__name__}, not a string"
    bad = _SURROGATE.search(text)
    if bad:
        return (f"holds a lone surrogate (U+{ord(bad.group()):04X}) at character "
                f"{bad.start()}: not Unicode text")
    return None


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class TextChars:
    """Is the character at each of these positions a word character / whitespace?

    A word character is a Unicode letter or digit or a combining mark (``is_word_char``);
    whitespace is ``str.isspace``. Positions must lie inside the text.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.codes = code_points(text)
        self._wide = len(text) > 0 and int(self.codes.max()) >= _BMP

    def _lookup(self, positions: np.ndarray, table: np.ndarray, test) -> np.ndarray:
        codes = self.codes[positions]
        if not self._wide:
            return np.take(table, codes)
        inside = codes < _BMP
        found = np.take(table, np.where(inside, codes, 0))
        for k in np.flatnonzero(~inside).tolist():
            found[k] = test(self.text[int(positions[k])])
        return found

    def is_word(self, positions: np.ndarray) -> np.ndarray:
        return self._lookup(positions, _ALNUM, is_word_char)

    def is_space(self, positions: np.ndarray) -> np.ndarray:
        return self._lookup(positions, _SPACE, str.isspace)


def walk(positions: np.ndarray, active: np.ndarray, step: int, go) -> None:
    """Move ``positions[i]`` by ``step`` (in place) for each ``i`` in ``active`` (those that
    must move at least once) as long as ``go(i)`` holds after the move; ``go`` takes an
    array of indices and returns a mask over it.

    Each round touches only the positions still moving, so the cost follows the longest
    walk (a word, a run of spaces), not the length of the text.
    """
    while active.size:
        positions[active] += step
        active = active[go(active)]


def trim_spaces(starts: np.ndarray, ends: np.ndarray, chars: TextChars,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty ``(start, end)`` ranges without their leading and trailing whitespace (new
    arrays). Ranges of whitespace only come back empty (``end <= start``); the caller drops
    them."""
    starts, ends = starts.copy(), ends.copy()
    if not starts.size:
        return starts, ends
    last = len(chars.text) - 1
    walk(starts, np.flatnonzero(chars.is_space(starts)), 1,
         lambda i: (starts[i] < ends[i]) & chars.is_space(np.minimum(starts[i], last)))
    walk(ends, np.flatnonzero(chars.is_space(ends - 1)), -1,
         lambda i: (ends[i] > starts[i]) & chars.is_space(np.maximum(ends[i] - 1, 0)))
    return starts, ends
