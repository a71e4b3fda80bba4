"""Prompts as token ids: prefix ids + suffix ids, the same way for every backend.

Tokenizing the joined string could merge tokens at the seam, and the prefix would then differ
between candidates; keeping the two id lists apart makes the prefix byte-identical for every
candidate of a document window and class, which is what prefix caching needs.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from prompts import PromptTemplate, load_template
from stage2_rerank.candidate import Candidate

_SEAM = "\u2063\u2063SUFFIX\u2063\u2063"  # never in a note; marks where the suffix goes


@dataclass(frozen=True)
class PromptIds:
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.prefix, *self.suffix]

    def digest(self) -> str:
        data = ",".join(map(str, self.prefix)) + "|" + ",".join(map(str, self.suffix))
        return hashlib.sha256(data.encode()).hexdigest()


def resolve_answer_ids(tokenizer, yes: str = "yes", no: str = "no") -> tuple[int, int]:
    """Single-token ids of the yes and no answers as the model would write them first."""
    found = []
    for word in (yes, no):
        tried = [word, word.capitalize(), " " + word, " " + word.capitalize()]
        for variant in tried:
            ids = tokenizer.encode(variant, add_special_tokens=False)
            # one token that is really the word (not an unknown-word token)
            if len(ids) == 1 and tokenizer.decode(ids).strip() == variant.strip():
                found.append(ids[0])
                break
        else:
            raise ValueError(f"the tokenizer has no single token for the answer {word!r}; "
                             f"tried {tried!r}")
    if found[0] == found[1]:
        raise ValueError(f"the answers {yes!r} and {no!r} map to the same token {found[0]}")
    return found[0], found[1]


class Recent(OrderedDict):
    """A dict that keeps only the ``size`` most recently used entries: a corpus run meets
    each document once, so what it remembers per document must not grow with the corpus."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key, make: Callable[[], object]):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


class PromptBuilder:
    """Renders candidates into ``PromptIds`` with a tokenizer and a template."""

    def __init__(self, tokenizer, template: PromptTemplate | None = None, *,
                 max_context_tokens: int = 1024, use_chat_template: bool | None = None,
                 remember: int = 16384) -> None:
        self.tokenizer = tokenizer
        self.template = template or load_template()
        self.max_context_tokens = max_context_tokens
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        self.chat = has_chat if use_chat_template is None else use_chat_template
        if self.chat and not has_chat:
            raise ValueError("use_chat_template=True, but the tokenizer has no chat template")
        self.yes_id, self.no_id = resolve_answer_ids(tokenizer, self.template.answer_yes,
                                                     self.template.answer_no)
        # token ids of recent prefixes (per note, class and context block; packed, ~4 KB for
        # 1,000 tokens where a tuple takes ~36 KB) and the context blocks of recent notes.
        # Candidates of one note arrive together; tuning meets every note of its gold set
        # once per stage-1 threshold, so the bound is well above a dev set's notes × classes.
        self._prefix_cache = Recent(remember)
        self._blocks = Recent(remember)

    @property
    def labels(self) -> dict[str, str]:
        return self.template.definitions

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def _encode_packed(self, text: str) -> array:
        return array("i", self.tokenizer.encode(text, add_special_tokens=False))

    def _wrap(self, prefix_text: str, suffix_text: str) -> tuple[str, str]:
        """The chat template around prefix + suffix, split where the suffix begins."""
        if not self.chat:
            bos = self.tokenizer.bos_token if getattr(self.tokenizer, "add_bos_token", False) \
                else ""
            return (bos or "") + prefix_text, suffix_text + self.template.plain_answer_cue
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prefix_text + _SEAM}], tokenize=False,
            add_generation_prompt=True)
        before, _, after = rendered.partition(_SEAM)
        return before, suffix_text + after

    def context_block(self, text: str, start: int, end: int) -> tuple[int, int]:
        """The character range of the note shown with a candidate: the whole note when it
        fits in ``max_context_tokens``, else the fixed block (half-overlapping, so the same
        for many candidates) whose centre is nearest the candidate's."""
        key = hashlib.sha1(text.encode("utf-8")).hexdigest()
        blocks = self._blocks.get_or_make(key, partial(self._make_blocks, text))
        inside = [b for b in blocks if b[0] <= start and end <= b[1]] or blocks
        centre = (start + end) / 2
        return min(inside, key=lambda b: abs((b[0] + b[1]) / 2 - centre))

    def _make_blocks(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        size = self.max_context_tokens
        if len(offsets) <= size:
            return [(0, len(text))]
        step = max(1, size // 2)
        blocks = []
        for first in range(0, len(offsets), step):
            last = min(first + size, len(offsets)) - 1
            blocks.append((offsets[first][0], offsets[last][1]))
            if last == len(offsets) - 1:
                break
        return blocks

    def _texts(self, cand: Candidate) -> tuple[tuple[int, int], str, str]:
        """The context block and the prompt text before and after the seam."""
        a, b = self.context_block(cand.text, cand.start, cand.end)
        before, after = self._wrap(
            self.template.render_prefix(label=cand.label, context=cand.text[a:b]),
            self.template.render_suffix(label=cand.label, text=cand.text, start=cand.start,
                                        end=cand.end, score=cand.score))
        return (a, b), before, after

    def build(self, candidates: Sequence[Candidate]) -> list[PromptIds]:
        out = []
        needs_score = self.template.uses_score
        for i, cand in enumerate(candidates):
            cand.check(self.labels, i, needs_score=needs_score)
            block, before, after = self._texts(cand)
            key = (hashlib.sha1(cand.text.encode("utf-8")).hexdigest(), cand.label, *block)
            packed = self._prefix_cache.get_or_make(key, partial(self._encode_packed, before))
            out.append(PromptIds(tuple(packed), self._encode(after)))
        return out

    def render_text(self, candidate: Candidate) -> str:
        """The prompt as one string (for reading and for the golden test)."""
        _, before, after = self._texts(candidate)
        return before + after
