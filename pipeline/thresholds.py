"""Per-class thresholds of both stages, as written by ``pipeline tune``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ClassThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage1: float = Field(0.6, ge=0.0, le=1.0)
    stage2: float = Field(0.5, ge=0.0, le=1.0)
    route: float | None = Field(None, ge=0.0, le=1.0)  # stage-1 score that skips the LLM


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="allow")  # tune adds the figures it reached

    default: ClassThresholds = ClassThresholds()
    classes: dict[str, ClassThresholds] = Field(default_factory=dict)

    def of(self, cls: str) -> ClassThresholds:
        return self.classes.get(cls, self.default)

    def unfit(self, classes: Sequence[str], ensemble: str, llm: str | None) -> list[str]:
        """Why these thresholds may not suit the ensemble of ``classes`` and identity
        ``ensemble`` with the LLM scorer ``llm`` (None: no LLM); empty if nothing does."""
        problems = []
        lacking = [c for c in classes if c not in self.classes]
        if self.classes and lacking:
            problems.append(f"no thresholds for {', '.join(lacking)}: the default (stage 1 "
                            f"{self.default.stage1}, stage 2 {self.default.stage2}) applies")
        tuned = (self.model_extra or {}).get("tuned_for") or {}
        if tuned.get("ensemble") not in (None, ensemble):
            problems.append(f"tuned for ensemble {tuned['ensemble']}, used with {ensemble}")
        if tuned and tuned.get("llm") != llm:
            problems.append(f"tuned with LLM {tuned.get('llm') or 'none'}, used with "
                            f"{llm or 'none'}")
        return problems

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        from stage1_ensemble.config import load_config

        return load_config(path, cls, "thresholds file")

    @classmethod
    def uniform(cls, stage1: float, stage2: float = 0.5) -> Thresholds:
        return cls(default=ClassThresholds(stage1=stage1, stage2=stage2))
