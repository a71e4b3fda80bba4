"""Per-class thresholds of both stages, as written by ``pipeline tune``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ClassThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage1: float = Field(0.6, ge=0.0, le=1.0)
    # a stage-1 span whose score (its mean character probability) is below it is dropped
    floor: float = Field(0.0, ge=0.0, le=1.0)
    stage2: float = Field(0.5, ge=0.0, le=1.0)
    route: float | None = Field(None, ge=0.0, le=1.0)  # stage-1 score that skips the LLM


class TunedFor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ensemble: str | None = None
    llm: str | None = None


class Thresholds(BaseModel):
    """A misspelt key is refused (it would leave the defaults to apply unseen)."""

    model_config = ConfigDict(extra="forbid")

    default: ClassThresholds = ClassThresholds()
    classes: dict[str, ClassThresholds] = Field(default_factory=dict)
    # written by tune: what it optimised, the figures it reached, what it tuned for
    objective: str | None = None
    figures: dict[str, Any] | None = None
    tuned_for: TunedFor | None = None

    def of(self, cls: str) -> ClassThresholds:
        return self.classes.get(cls, self.default)

    def unfit(self, classes: Sequence[str], ensemble: str, llm: str | None,
              band: float | None = None) -> list[str]:
        """Why these thresholds may not suit the ensemble of ``classes`` and identity
        ``ensemble`` with the LLM scorer ``llm`` (None: no LLM); empty if nothing does.
        ``band``: the stage-1 score a judge learnt below (it never saw a candidate above)."""
        problems = []
        if llm is not None and band is not None:
            wide = {c: self.of(c).route for c in classes
                    if self.of(c).route is None or self.of(c).route > band}
            if wide:
                asks = ", ".join(f"{c} {'at any score' if r is None else f'up to {r}'}"
                                 for c, r in wide.items())
                problems.append(f"the judge learnt on candidates of stage-1 score below {band} "
                                f"only, and these thresholds ask it about {asks}")
        other = [c for c in self.classes if c not in classes]
        if other:
            problems.append(f"thresholds for {', '.join(other)}, which this ensemble does not "
                            f"recognise (its classes: {', '.join(classes)})")
        lacking = [c for c in classes if c not in self.classes]
        if self.classes and lacking:
            problems.append(f"no thresholds for {', '.join(lacking)}: the default (stage 1 "
                            f"{self.default.stage1}, stage 2 {self.default.stage2}) applies")
        tuned = self.tuned_for
        if tuned is not None and tuned.ensemble not in (None, ensemble):
            problems.append(f"tuned for ensemble {tuned.ensemble}, used with {ensemble}")
        if tuned is not None and tuned.llm != llm:
            problems.append(f"tuned with LLM {tuned.llm or 'none'}, used with {llm or 'none'}")
        return problems

    def check_classes(self, classes: Sequence[str], source: str = "thresholds") -> None:
        """Refuse a class name that is no class at all (``DISEASES``): its thresholds would
        never apply, and the default would, unseen. One of the task's classes that this
        ensemble lacks is only warned about (``unfit``)."""
        from pipeline.documents import CLASSES
        from pipeline.errors import PipelineError

        unknown = [c for c in self.classes if c not in classes and c not in CLASSES]
        if unknown:
            raise PipelineError(f"{source}: {', '.join(map(repr, unknown))} is not a class; "
                                f"the classes are {', '.join(dict.fromkeys([*classes, *CLASSES]))}")

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        from stage1_ensemble.config import load_config

        return load_config(path, cls, "thresholds file")

    @classmethod
    def uniform(cls, stage1: float, stage2: float = 0.5) -> Thresholds:
        return cls(default=ClassThresholds(stage1=stage1, stage2=stage2))
