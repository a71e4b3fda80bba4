"""Member kinds: any model that gives character probabilities joins an ensemble.

A kind checks a member's folder and loads a runner from it. Every runner gives
``char_probs(texts)``, one float32 array of character probabilities a text; a runner that
works on token windows also has ``tokenizer_key``, ``windows`` and ``window_probs``, so that
members of one tokenizer share the tokenizing and the projection to characters
(``Ensemble.char_probs``). A new kind is a class with ``name``, ``problem`` and ``load``,
added to ``KINDS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from stage1_ensemble.config import InferenceConfig


class MemberKind(Protocol):
    name: str

    def problem(self, folder: Path) -> str | None:
        """What files ``folder`` lacks to be a member of this kind, or None."""

    def check(self, folder: Path) -> None:
        """A ValueError where what ``folder`` holds cannot be a member of this kind."""

    def load(self, folder: Path, config: InferenceConfig, entity_class: str):
        """The member's runner."""


class BinaryKind:
    """A binary token classifier fine-tuned by ``pipeline train`` (label 1: in a mention)."""

    name = "binary"

    def problem(self, folder: Path) -> str | None:
        from stage1_ensemble.ensemble import model_folder_problem

        return model_folder_problem(folder)

    def check(self, folder: Path) -> None:
        from stage1_ensemble.infer import labels_problem

        problem = labels_problem(folder)
        if problem:
            raise ValueError(problem)

    def load(self, folder: Path, config: InferenceConfig, entity_class: str):
        from stage1_ensemble.infer import MemberRunner

        return MemberRunner.load(folder, config)


KINDS: dict[str, MemberKind] = {kind.name: kind for kind in (BinaryKind(),)}


def kind_named(name: str) -> MemberKind:
    if name not in KINDS:
        raise ValueError(f"unknown member kind {name!r}; this version knows "
                         f"{', '.join(KINDS)}")
    return KINDS[name]
