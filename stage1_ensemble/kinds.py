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

import numpy as np

from stage1_ensemble.config import InferenceConfig


class MemberKind(Protocol):
    name: str

    def problem(self, folder: Path) -> str | None:
        """What files ``folder`` lacks to be a member of this kind, or None."""

    def check(self, folder: Path) -> None:
        """A ValueError where what ``folder`` holds cannot be a member of this kind."""

    def load(self, folder: Path, config: InferenceConfig, member):
        """The runner of ``member`` (a ``Member`` of this kind, saved in ``folder``)."""


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

    def load(self, folder: Path, config: InferenceConfig, member):
        from stage1_ensemble.infer import MemberRunner

        return MemberRunner.load(folder, config)


class TokenClassifierKind:
    """Any Hugging Face token-classification model: a class's probability is the summed
    probability of its labels (``member.config["labels"]``: B-DISEASE and I-DISEASE of a
    BIO model, say), projected to characters as a binary member's."""

    name = "token-classifier"

    def problem(self, folder: Path) -> str | None:
        from stage1_ensemble.ensemble import model_folder_problem

        return model_folder_problem(folder)

    def check(self, folder: Path) -> None:
        pass  # its labels are checked against the model's when the member is added and loaded

    @staticmethod
    def label_ids(folder: Path, labels) -> tuple[int, ...]:
        from transformers import AutoConfig

        names = {name: int(i) for i, name in AutoConfig.from_pretrained(str(folder)).id2label.items()}
        unknown = [label for label in labels if label not in names]
        if unknown or not labels:
            raise ValueError(f"{folder}: labels {', '.join(unknown) or '(none)'} are not the "
                             f"model's (it has {', '.join(names)})")
        return tuple(sorted(names[label] for label in labels))

    def load(self, folder: Path, config: InferenceConfig, member):
        from stage1_ensemble.infer import MemberRunner

        labels = member.config.get("labels", [])
        return MemberRunner.load(folder, config, positive=self.label_ids(folder, labels))


class GazetteerKind:
    """A dictionary of a class's terms (``gazetteer.json``), each with the precision it
    had where it occurred in a gold corpus: a matched character gets its term's precision."""

    name = "gazetteer"
    FILE = "gazetteer.json"

    def problem(self, folder: Path) -> str | None:
        return None if (Path(folder) / self.FILE).is_file() else \
            f"no {self.FILE} in {folder}"

    def check(self, folder: Path) -> None:
        from stage1_ensemble.gazetteer import Gazetteer

        Gazetteer.load(Path(folder) / self.FILE)

    def load(self, folder: Path, config: InferenceConfig, member):
        from stage1_ensemble.gazetteer import Gazetteer

        return GazetteerRunner(Gazetteer.load(Path(folder) / self.FILE), member.entity_class)


class GazetteerRunner:
    def __init__(self, gazetteer, entity_class: str) -> None:
        self.gazetteer, self.entity_class = gazetteer, entity_class

    def char_probs(self, texts) -> list[np.ndarray]:
        out = []
        for text in texts:
            probs = np.zeros(len(text), dtype=np.float32)
            for start, end, score in self.gazetteer.predict(text, self.entity_class):
                probs[start:end] = np.maximum(probs[start:end], score)
            out.append(probs)
        return out


KINDS: dict[str, MemberKind] = {kind.name: kind for kind in (BinaryKind(), GazetteerKind(),
                                                              TokenClassifierKind())}


def kind_named(name: str) -> MemberKind:
    if name not in KINDS:
        raise ValueError(f"unknown member kind {name!r}; this version knows "
                         f"{', '.join(KINDS)}")
    return KINDS[name]
