"""Assembling an ensemble without training: members of other kinds added to (or removed
from) an ensemble folder, and what it holds (``pipeline ensemble add|remove|show``)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline.documents import Document
from pipeline.errors import CorpusError, PipelineError
from pipeline.writers import folder_lock
from stage1_ensemble.ensemble import Member, read_manifest, write_manifest
from stage1_ensemble.gazetteer import Gazetteer
from stage1_ensemble.kinds import GazetteerKind


def read_terms(path: Path) -> list[str]:
    """A term file: one term a line, UTF-8; blank lines are skipped."""
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CorpusError(path, f"not UTF-8: byte at offset {exc.start}") from None
    terms = [line.strip() for line in lines if line.strip()]
    if not terms:
        raise CorpusError(path, "holds no term")
    return terms


def gold_of(docs: Sequence[Document], cls: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """(text, gold spans of ``cls``) of each document that may hold the class."""
    return [(d.text, [(s.start, s.end) for s in d.spans if s.label == cls])
            for d in docs if d.entity_class in (None, cls)]


def add_gazetteer(ensemble: Path, cls: str, *, docs: Sequence[Document] = (),
                  terms: Sequence[str] = (), source: str = "", weight: float = 1.0,
                  name: str | None = None) -> Member:
    """A gazetteer member of class ``cls``: the ``terms`` given, else the gold mentions of
    ``docs``; each term scored by its precision on ``docs`` where they are given (how often
    the surface form is annotated where it occurs), 1.0 otherwise."""
    ensemble = Path(ensemble)
    with folder_lock(ensemble, "pipeline ensemble add"):
        manifest = read_manifest(ensemble)
        if cls not in manifest.classes:
            raise PipelineError(f"{ensemble}: the ensemble has no class {cls} (its classes: "
                                f"{', '.join(manifest.classes)})")
        name = name or f"{cls.lower()}-gazetteer"
        if any(m.name == name for m in manifest.members) or (ensemble / name).exists():
            raise PipelineError(f"{ensemble}: a member {name!r} is there already; give "
                                "another --name, or remove it first")
        gazetteer = Gazetteer()
        for term in terms:
            gazetteer.add(cls, term)
        if not terms:
            gazetteer.fit((s.label, d.text, s.start, s.end) for d in docs for s in d.spans
                          if s.label == cls)
        if not gazetteer.terms.get(cls):
            raise PipelineError(f"no {cls} terms to make a gazetteer of" +
                                (f" in {source}" if source else ""))
        counts = gazetteer.measure(cls, gold_of(docs, cls)) if docs else {}
        matched = sum(n for _, n in counts.values())
        annotated = sum(a for a, _ in counts.values())
        validation = {"terms": len(gazetteer.terms[cls])}
        if docs:
            validation.update(measured_on=source, matches=matched,
                              precision=round(annotated / matched, 4) if matched else None)
        folder = ensemble / name
        folder.mkdir()
        try:
            gazetteer.save(folder / GazetteerKind.FILE, entity_class=cls)
            member = Member(name=name, entity_class=cls, path=name, kind=GazetteerKind.name,
                            weight=weight, validation=validation)
            planned = manifest.planned + [name] if manifest.planned else []
            write_manifest(ensemble, manifest.model_copy(
                update={"members": manifest.members + [member], "planned": planned}))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return member


def remove_member(ensemble: Path, name: str) -> Member:
    """Take member ``name`` out of the manifest and delete its folder. The last member of
    a class is kept: the class would have no probabilities."""
    ensemble = Path(ensemble)
    with folder_lock(ensemble, "pipeline ensemble remove"):
        manifest = read_manifest(ensemble)
        found = [m for m in manifest.members if m.name == name]
        if not found:
            raise PipelineError(f"{ensemble}: no member {name!r} (its members: "
                                f"{', '.join(m.name for m in manifest.members)})")
        member = found[0]
        rest = [m for m in manifest.members if m.name != name]
        if not any(m.entity_class == member.entity_class for m in rest):
            raise PipelineError(f"{name} is the last member of {member.entity_class}; an "
                                "ensemble needs one for each of its classes")
        write_manifest(ensemble, manifest.model_copy(
            update={"members": rest, "planned": [p for p in manifest.planned if p != name]}))
        folder = (ensemble / member.path).resolve()
        if ensemble.resolve() in folder.parents and \
                not any((ensemble / m.path).resolve() == folder for m in rest):
            shutil.rmtree(folder.parent if folder.name == "model" and
                          folder.parent != ensemble.resolve() else folder, ignore_errors=True)
        return member


def describe(ensemble: Path) -> list[dict]:
    """A row for each member: name, kind, class, weight, fold, and its validation."""
    manifest = read_manifest(ensemble)
    return [{"name": m.name, "kind": m.kind, "class": m.entity_class, "weight": m.weight,
             "fold": f"{m.fold}/{m.n_folds}" if m.n_folds > 1 else "-",
             "validation": m.validation} for m in manifest.members]



