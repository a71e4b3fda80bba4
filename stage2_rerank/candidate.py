"""A candidate span to judge: a piece of a text, with its class."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str
    start: int
    end: int
    label: str
    doc_id: str | None = None
    lang: str | None = None
    score: float | None = None  # stage 1's span score, for templates that show it

    @property
    def mention(self) -> str:
        return self.text[self.start : self.end]

    def check(self, labels: set[str] | dict[str, str], index: int | None = None, *,
              needs_score: bool = False) -> None:
        """Raise ValueError naming the candidate when it cannot be judged."""
        where = f"candidate {index}" if index is not None else "candidate"
        if self.doc_id is not None:
            where += f" (document {self.doc_id!r})"
        if not 0 <= self.start < self.end <= len(self.text):
            raise ValueError(f"{where}: span {self.start}-{self.end} is empty or outside its "
                             f"text of {len(self.text)} characters")
        if not self.mention.strip():
            raise ValueError(f"{where}: the mention at {self.start}-{self.end} is only "
                             "whitespace")
        if needs_score and self.score is None:
            raise ValueError(f"{where}: the prompt template shows the stage-1 score, but the "
                             "candidate has none")
        if self.label not in labels:
            raise ValueError(f"{where}: unknown label {self.label!r}; the prompt template "
                             f"defines {sorted(labels)}")
