"""The domain model: documents and character spans.

One span convention everywhere: 0-based, end-exclusive character offsets into the document
text, so that ``text[start:end]`` is the mention.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CLASSES: tuple[str, ...] = ("DISEASE", "SYMPTOM", "PROCEDURE")

# Labels as written in the Spanish corpora (DisTEMIST, SympTEMIST, MedProcNER) and in the
# MultiClinNER release folders, mapped to the task's classes.
DEFAULT_LABEL_MAP: dict[str, str] = {
    "ENFERMEDAD": "DISEASE",
    "SINTOMA": "SYMPTOM",
    "PROCEDIMIENTO": "PROCEDURE",
    "DISEASE": "DISEASE",
    "SYMPTOM": "SYMPTOM",
    "PROCEDURE": "PROCEDURE",
}


def class_named(name: str, option: str) -> str:
    """The class that ``name`` (given as ``option``) stands for: a class, or a corpus label
    that maps to one; anything else is refused in one line that says what would do."""
    from pipeline.errors import PipelineError

    if name in DEFAULT_LABEL_MAP:
        return DEFAULT_LABEL_MAP[name]
    hint = f" (did you mean {name.upper()}?)" if name.upper() in DEFAULT_LABEL_MAP else ""
    raise PipelineError(f"{option} {name}: not a class{hint}; choose from {', '.join(CLASSES)} "
                        "(or a corpus label that maps to one)")


@dataclass(frozen=True, slots=True)
class Span:
    """A mention: ``text[start:end]`` of document ``doc_id``, with optional stage scores."""

    doc_id: str
    label: str
    start: int
    end: int
    stage1_score: float | None = None
    stage2_score: float | None = None

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.doc_id, self.label, self.start, self.end)

    def with_scores(self, stage1: float | None = None, stage2: float | None = None) -> Span:
        return replace(
            self,
            stage1_score=self.stage1_score if stage1 is None else stage1,
            stage2_score=self.stage2_score if stage2 is None else stage2,
        )


@dataclass(slots=True)
class Document:
    """A text with its gold (or predicted) spans.

    ``entity_class`` is set for corpora such as the MultiClinNER release, where each class ships
    its own version of a text: such a document is only ever predicted for that class.
    """

    id: str
    text: str
    lang: str | None = None
    entity_class: str | None = None
    spans: list[Span] = field(default_factory=list)
    source: str | None = None

    def mention(self, span: Span) -> str:
        return self.text[span.start : span.end]

    def classes(self, wanted: tuple[str, ...] = CLASSES) -> tuple[str, ...]:
        """The classes this document is to be predicted for."""
        if self.entity_class is not None:
            return (self.entity_class,) if self.entity_class in wanted else ()
        return wanted
