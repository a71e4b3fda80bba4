"""Per-class thresholds of both stages, as written by ``pipeline tune``."""

from __future__ import annotations

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

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        from stage1_ensemble.config import load_config

        return load_config(path, cls, "thresholds file")

    @classmethod
    def uniform(cls, stage1: float, stage2: float = 0.5) -> Thresholds:
        return cls(default=ClassThresholds(stage1=stage1, stage2=stage2))
