"""An ensemble on disk (a manifest plus one folder per member) and its inference."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stage1_ensemble.cache import CharProbCache
from stage1_ensemble.config import InferenceConfig, load_config
from stage1_ensemble.infer import pick_device, use_bf16
from stage1_ensemble.kinds import kind_named
from stage1_ensemble.project import Projection

MANIFEST = "ensemble.json"
# A model folder needs one of each: without weights or a vocabulary, transformers may still
# load something (a random model, an empty tokenizer that turns every word into [UNK]).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
                    "spiece.model", "tokenizer.model")


def model_folder_problem(path: Path) -> str | None:
    """What a model folder lacks to be a member or an encoder, or None if nothing."""
    path = Path(path)
    for kind, names in (("config", ("config.json",)), ("weights", WEIGHT_FILES),
                        ("tokenizer vocabulary", VOCABULARY_FILES)):
        if not any((path / name).exists() for name in names):
            return f"no {kind} in {path} (looked for {', '.join(names)})"
    return None


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # (the fields keep their order: the manifest's JSON, and so its identity, depends on it)
    name: str
    entity_class: str
    fold: int = 0  # the fold it held out, of n_folds (a member not trained by folds: 0 of 1)
    n_folds: int = 1
    encoder: str = ""
    path: str  # relative to the ensemble folder
    tokenizer: str = ""
    # in the class's weighted mean; a member to leave out is removed, not weighted 0
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    config: dict = Field(default_factory=dict)
    validation: dict = Field(default_factory=dict)  # scores on the held-out fold
    train_documents: int = 0
    # what loads it (stage1_ensemble.kinds); manifests from before kinds are all binary
    kind: str = "binary"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    classes: list[str]
    members: list[Member]
    data_hash: str  # of the training corpus
    # Every member the training command makes, finished or not (empty in manifests written
    # before it was recorded): the manifest lists members as they finish, so that one
    # with fewer is a training that has not finished, not a smaller ensemble.
    planned: list[str] = Field(default_factory=list)
    # how the weights were chosen (`pipeline ensemble weigh`): the weights are the members'
    weighing: dict | None = None

    def identity(self) -> str:
        """A hash that changes when any member or weight changes (the cache key). A binary
        member's kind is left out, so that manifests from before kinds keep their keys."""
        exclude = {"planned": True, "weighing": True,
                   "members": {i: {"kind"} for i, m in enumerate(self.members)
                               if m.kind == "binary"}}
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]

    def unfinished(self) -> list[str]:
        """The planned members that are not in the manifest (yet)."""
        done = {m.name for m in self.members}
        return [name for name in self.planned if name not in done]


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no ensemble manifest (train one with "
                                "`pipeline train`)")
    return load_config(path, Manifest, "ensemble manifest")


def write_manifest(folder: Path, manifest: Manifest) -> None:
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, path)


class Ensemble:
    """Per-class character probabilities from the weighted mean of the class's members."""

    def __init__(self, folder: Path, manifest: Manifest,
                 config: InferenceConfig | None = None) -> None:
        self.folder, self.manifest = Path(folder), manifest
        self.config = config or InferenceConfig()
        self.identity = manifest.identity()
        self._runners: dict[str, object] = {}

    @classmethod
    def load(cls, folder: Path, config: InferenceConfig | None = None) -> Ensemble:
        manifest = read_manifest(folder)
        missing = manifest.unfinished()
        if missing:  # a smaller ensemble than the one asked for, used without a word
            raise ValueError(f"{Path(folder) / MANIFEST}: its training has not finished: "
                             f"{len(missing)} of {len(manifest.planned)} members missing "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                             "run the same `pipeline train` command again to finish it")
        for m in manifest.members:
            path = Path(folder) / m.path
            if not path.is_dir():
                raise FileNotFoundError(f"{Path(folder) / MANIFEST}: member {m.name!r} has no "
                                        f"model at {path}")
            try:
                kind = kind_named(m.kind)
                problem = kind.problem(path)
                if problem:
                    raise FileNotFoundError(problem)
                kind.check(path)
            except (FileNotFoundError, ValueError) as exc:
                raise type(exc)(f"{Path(folder) / MANIFEST}: member {m.name!r}: {exc}") from None
            if m.entity_class not in manifest.classes:
                raise ValueError(f"{Path(folder) / MANIFEST}: member {m.name!r} is for "
                                 f"{m.entity_class!r}, not one of {manifest.classes}")
        lacking = [c for c in manifest.classes
                   if not any(m.entity_class == c for m in manifest.members)]
        if lacking:  # found here, not as every document failing later
            raise ValueError(f"{Path(folder) / MANIFEST}: no member for {', '.join(lacking)} "
                             "(is its training unfinished? `pipeline train` resumes it)")
        return cls(folder, manifest, config)

    def restricted(self, members: Sequence[Member]) -> Ensemble:
        """The ensemble of only ``members`` (say, the members of one fold, to propose on
        the documents they did not train on), sharing the models already loaded. Its
        identity, and so its cache keys, are its own."""
        names = {m.name for m in members}
        kept = [m for m in self.manifest.members if m.name in names]
        classes = [c for c in self.manifest.classes if any(m.entity_class == c for m in kept)]
        manifest = self.manifest.model_copy(update={"members": kept, "classes": classes,
                                                    "planned": [m.name for m in kept]})
        sub = Ensemble(self.folder, manifest, self.config)
        sub._runners = self._runners
        return sub

    @property
    def output_settings(self) -> dict:
        """The inference settings that change the character probabilities, not only how
        fast they come: the windows, and bf16 (which can move a value by a few 1e-3)."""
        bf16 = use_bf16(self.config.bf16, pick_device(self.config))
        return {"max_length": self.config.max_length, "stride": self.config.stride,
                "bf16": bf16}

    @property
    def probs_identity(self) -> str:
        """What cached character probabilities depend on: the members and those settings."""
        key = f"{self.identity} {json.dumps(self.output_settings, sort_keys=True)}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def runner(self, member: Member):
        """The member's model, loaded on first use and kept."""
        if member.name not in self._runners:
            self._runners[member.name] = kind_named(member.kind).load(
                self.folder / member.path, self.config, member)
        return self._runners[member.name]

    def load_models(self) -> None:
        """Load every member now (otherwise each loads on first use), so that one that
        cannot run is found before any document is."""
        for m in self.manifest.members:
            self.runner(m)

    def char_probs(self, texts: Sequence[str], classes: Sequence[str] | None = None,
                   ) -> list[dict[str, np.ndarray]]:
        """For each text, {class: float32 character probabilities}.

        Members that share a tokenizer (all of them, usually) share the work on the host:
        the texts are tokenized once, where tokens land on characters is worked out once,
        and members are averaged per segment before characters are written, once a class.
        """
        classes = list(classes) if classes is not None else self.classes
        members = {cls: self.members_of(cls) for cls in classes}
        total_weight = {cls: sum(m.weight for m in members[cls]) for cls in classes}
        groups: dict[str, list[Member]] = {}
        on_chars: list[Member] = []  # members that give characters directly (no windows)
        for cls in classes:
            for m in members[cls]:
                key = getattr(self.runner(m), "tokenizer_key", None)
                if key is None:
                    on_chars.append(m)
                else:
                    groups.setdefault(key, []).append(m)
        out: list[dict[str, np.ndarray]] = [{} for _ in texts]
        for group in groups.values():
            windows = self.runner(group[0]).windows(texts)
            projection = Projection(texts, windows.doc_index, windows.offsets)
            for cls in classes:
                mine = [m for m in group if m.entity_class == cls]
                if not mine:
                    continue
                total = projection.weighted_sum(
                    [self.runner(m).window_probs(windows) for m in mine],
                    [m.weight for m in mine])
                chars = projection.chars([t / total_weight[cls] for t in total])
                for i, c in enumerate(chars):
                    out[i][cls] = c if cls not in out[i] else out[i][cls] + c
        for m in on_chars:
            share = m.weight / total_weight[m.entity_class]
            for i, c in enumerate(self.runner(m).char_probs(texts)):
                c = (c * share).astype(np.float32)
                out[i][m.entity_class] = c if m.entity_class not in out[i] else \
                    out[i][m.entity_class] + c
        return out

    def members_of(self, cls: str) -> list[Member]:
        members = [m for m in self.manifest.members if m.entity_class == cls]
        if not members:
            raise ValueError(f"the ensemble has no member for class {cls!r}")
        return members


def cached_char_probs(ensemble: Ensemble, texts: Sequence[str], classes: Sequence[str],
                      cache: CharProbCache | None) -> list[dict[str, np.ndarray]]:
    """Like ``Ensemble.char_probs``, running the models only for what the cache lacks."""
    if cache is None:
        return ensemble.char_probs(texts, classes)
    out: list[dict[str, np.ndarray]] = [{} for _ in texts]
    for cls in classes:
        for i, hit in enumerate(cache.get_many(cls, texts)):
            if hit is not None:
                out[i][cls] = hit
    # texts lacking the same classes are run together (usually all of them, all classes):
    # the models then tokenize them once for all classes
    lacking: dict[tuple[str, ...], list[int]] = {}
    for i, found in enumerate(out):
        missing = tuple(cls for cls in classes if cls not in found)
        if missing:
            lacking.setdefault(missing, []).append(i)
    for missing, rows in lacking.items():
        fresh = ensemble.char_probs([texts[i] for i in rows], list(missing))
        for cls in missing:
            stored = cache.put_many(cls, [(texts[i], p[cls]) for i, p in zip(rows, fresh)])
            for i, values in zip(rows, stored):
                out[i][cls] = values
    return out


def data_hash(items: Sequence[tuple[str, str, Sequence[tuple[str, int, int]]]]) -> str:
    """A hash of (id, text, spans) of a training corpus, to tell corpora apart."""
    h = hashlib.sha256()
    for doc_id, text, spans in items:
        h.update(json.dumps([doc_id, text, sorted(spans)], ensure_ascii=False).encode())
    return h.hexdigest()[:16]
