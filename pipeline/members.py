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
    check_class(ensemble, cls)  # before the terms are counted
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
    name = name or f"{cls.lower()}-gazetteer"

    def write(folder: Path) -> Member:
        gazetteer.save(folder / GazetteerKind.FILE, entity_class=cls)
        return Member(name=name, entity_class=cls, path=name, kind=GazetteerKind.name,
                      weight=weight, validation=validation)

    return add_member(ensemble, name, cls, write)


def parse_label_map(text: str) -> tuple[list[str], str]:
    """``"B-DISEASE,I-DISEASE=DISEASE"`` -> (the model's labels, the class they make)."""
    from pipeline.documents import class_named

    labels, sep, cls = text.rpartition("=")
    names = [x.strip() for x in labels.split(",") if x.strip()]
    if not sep or not names:
        raise PipelineError(f"--labels {text!r}: give the model's labels of one class and the "
                            "class, as B-DISEASE,I-DISEASE=DISEASE")
    return names, class_named(cls.strip(), "--labels")


def add_token_classifier(ensemble: Path, model: Path, labels: Sequence[str], cls: str, *,
                         weight: float = 1.0, name: str | None = None) -> Member:
    """A member of class ``cls`` from a token-classification model (copied into the
    ensemble): its probability is the summed probability of the model's ``labels``."""
    from transformers import AutoTokenizer

    from stage1_ensemble.ensemble import model_folder_problem
    from stage1_ensemble.kinds import TokenClassifierKind

    ensemble, model = Path(ensemble), Path(model)
    check_class(ensemble, cls)
    problem = model_folder_problem(model) if model.is_dir() else f"{model}: no such folder"
    if problem:
        raise PipelineError(problem)
    try:
        TokenClassifierKind.label_ids(model, labels)
        fast = AutoTokenizer.from_pretrained(str(model)).is_fast
    except (OSError, ValueError) as exc:
        raise PipelineError(str(exc)) from None
    if not fast:
        raise PipelineError(f"{model}: its tokenizer has no fast version (offsets are needed "
                            "to map tokens to characters)")
    name = name or f"{cls.lower()}-{model.name.lower()}"

    def write(folder: Path) -> Member:
        shutil.copytree(model, folder / "model")
        return Member(name=name, entity_class=cls, path=f"{name}/model", encoder=str(model),
                      tokenizer=str(model), kind=TokenClassifierKind.name, weight=weight,
                      config={"labels": list(labels)})

    return add_member(ensemble, name, cls, write)


def check_class(ensemble: Path, cls: str):
    """The ensemble's manifest, if it has class ``cls``."""
    manifest = read_manifest(ensemble)
    if cls not in manifest.classes:
        raise PipelineError(f"{ensemble}: the ensemble has no class {cls} (its classes: "
                            f"{', '.join(manifest.classes)})")
    return manifest


def add_member(ensemble: Path, name: str, cls: str, write) -> Member:
    """Add the member that ``write(folder)`` makes in a new folder ``ensemble/name`` (and
    returns): refused if the name is taken or the ensemble lacks the class; nothing is left
    of it if writing fails."""
    with folder_lock(ensemble, "pipeline ensemble add"):
        manifest = check_class(ensemble, cls)
        if any(m.name == name for m in manifest.members) or (ensemble / name).exists():
            raise PipelineError(f"{ensemble}: a member {name!r} is there already; give "
                                "another --name, or remove it first")
        folder = ensemble / name
        folder.mkdir()
        try:
            member = write(folder)
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



