"""Stage-2 prompt templates and class definitions, as versioned data.

A template has a *prefix* (instructions, the class definition, the document or a window of
it) that is byte-identical for every candidate of a document and class, so that the LLM
server's prefix cache reuses it, and a *suffix* (the candidate, shown quoted and in place,
and the question) that changes per candidate.
"""

from __future__ import annotations

from importlib import resources
from string import Formatter

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TEMPLATE = "rerank_v1"


class PromptTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    instructions: str
    prefix: str
    suffix: str
    plain_answer_cue: str = "\nAnswer:"
    snippet_chars: int = Field(60, ge=0)
    answer_yes: str = "yes"
    answer_no: str = "no"
    definitions: dict[str, str]

    def render_prefix(self, *, label: str, context: str) -> str:
        return self.prefix.format(instructions=self.instructions, label=label,
                                  definition=self.definitions[label], context=context)

    @property
    def uses_score(self) -> bool:
        """Whether the suffix shows the candidate's stage-1 score (``{score:.2f}``): the
        judge then weighs what stage 1 thought with what it reads."""
        return any(field == "score" for _, field, _, _ in Formatter().parse(self.suffix))

    def render_suffix(self, *, label: str, text: str, start: int, end: int,
                      score: float | None = None) -> str:
        if score is None and self.uses_score:
            raise ValueError(f"prompt template {self.name!r} shows the stage-1 score, but the "
                             "candidate has none")
        n = self.snippet_chars
        one_line = str.maketrans({"\r": " ", "\n": " ", "\t": " "})
        return self.suffix.format(label=label, mention=text[start:end].translate(one_line),
                                  start=start, end=end, score=score,
                                  left=text[max(0, start - n) : start].translate(one_line),
                                  right=text[end : end + n].translate(one_line))


def available() -> list[str]:
    folder = resources.files(__package__) / "templates"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir()
                  if p.name.endswith(".json"))


def load_template(name: str = DEFAULT_TEMPLATE) -> PromptTemplate:
    """A shipped template by name (see ``available()``), or a path to a JSON file."""
    if name.endswith(".json"):
        from pathlib import Path

        raw = Path(name).read_text(encoding="utf-8")
    else:
        path = resources.files(__package__) / "templates" / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"unknown prompt template {name!r}; shipped: {available()}")
        raw = path.read_text(encoding="utf-8")
    return PromptTemplate.model_validate_json(raw)
