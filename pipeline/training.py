"""Training an ensemble: every (class, encoder, fold) member, resumable, with a manifest."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.documents import CLASSES, Document, Span
from pipeline.errors import PipelineError
from pipeline.metrics import evaluate
from pipeline.writers import atomic_write, folder_lock
from stage1_ensemble.config import InferenceConfig, TrainConfig, load_config
from stage1_ensemble.decode import decode_batch
from stage1_ensemble.ensemble import (
    Manifest,
    Member,
    data_hash,
    model_folder_problem,
    read_manifest,
    write_manifest,
)

logger = logging.getLogger(__name__)

# Translations of one case share a group: ids such as "case12_en" and "case12_ro" (or
# "en/case12") fall into group "case12" by default.
DEFAULT_GROUP_PATTERN = r"^(?:[a-z]{2}[/_-])?(.+?)(?:[_-](?:es|en|ro|sv|it|nl|cz))?$"
VALIDATION_THRESHOLD = 0.5
VALIDATION_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


def group_pattern_option(pattern: str | None) -> str:
    """``--group-pattern`` checked: a regular expression with a group (the default: none
    given); a bad one is refused in one line."""
    if pattern is None:
        return DEFAULT_GROUP_PATTERN
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise PipelineError(f"--group-pattern {pattern!r}: not a regular expression ({exc})"
                            ) from None
    if groups < 1:
        raise PipelineError(f"--group-pattern {pattern!r}: needs a group, (...), that "
                            "captures the part of a document id its translations share")
    return pattern


def document_group(doc_id: str, pattern: str = DEFAULT_GROUP_PATTERN) -> str:
    match = re.match(pattern, doc_id)
    return match.group(1) if match and match.groups() else doc_id


def fold_of(doc_id: str, n_folds: int, pattern: str = DEFAULT_GROUP_PATTERN,
            salt: str = "") -> int:
    """A stable fold per document group, so translations never split across folds. Another
    ``salt`` draws another split, independent of the unsalted one."""
    key = salt + document_group(doc_id, pattern)
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % n_folds


def held_for_validation(doc_id: str, share: int, pattern: str = DEFAULT_GROUP_PATTERN) -> bool:
    """Is the document's group among the 1/``share`` held out to validate a judge (never
    with ``share`` 0)? Its own salted hash, so that the held-out groups are spread evenly
    over every fold and ``--subset`` share, not all in one of them."""
    return share > 0 and fold_of(doc_id, share, pattern, salt="validation\x00") == 0


def in_subset(doc_id: str, part: tuple[int, int], pattern: str = DEFAULT_GROUP_PATTERN) -> bool:
    """Is the document in share ``i`` of ``n`` (``--subset i/n``)? Shares go by document
    group, as the folds do: tuning on one share and evaluating on another never meets the
    same case twice, in two languages."""
    index, count = part
    return fold_of(doc_id, count, pattern) == index


def slug(encoder: str) -> str:
    """A short name for an encoder: its folder's name (its parent's, for a generic one)."""
    path = Path(encoder)
    name = path.parent.name if path.name in ("model", "models", "checkpoint") else path.name
    return re.sub(r"[^A-Za-z0-9]+", "-", name or encoder).strip("-").lower()


def check_folds(docs: Sequence[Document], classes: Sequence[str], n_folds: int,
                group_pattern: str = DEFAULT_GROUP_PATTERN) -> None:
    """Refuse folds that leave a member nothing to train on (every document of a class in
    one fold: too few document groups); warn of folds that hold none (their members train
    on everything and have no held-out score). Folds go by a hash of the group, so a few
    groups can miss a fold even where there are as many groups as folds."""
    if n_folds < 2:
        return
    for cls in classes:
        mine = [d for d in docs if d.entity_class in (None, cls)]
        folds = {fold_of(d.id, n_folds, group_pattern) for d in mine}
        groups = len({document_group(d.id, group_pattern) for d in mine})
        if len(folds) == 1:
            many = len(mine) != 1
            raise PipelineError(
                f"--folds {n_folds}: {'all ' if many else ''}{len(mine)} {cls} "
                f"document{'s' if many else ''} ({groups} document "
                f"group{'s' if groups != 1 else ''}) fall{'' if many else 's'} in fold "
                f"{folds.pop()}, whose member would have nothing to train on; use --folds 1, "
                "or more groups (--group-pattern)")
        empty = sorted(set(range(n_folds)) - folds)
        if empty:
            logger.warning("--folds %d: no %s document falls in fold %s (%d document groups); "
                           "a member of such a fold trains on every document and has no "
                           "held-out score", n_folds, cls, ", ".join(map(str, empty)), groups)


def validate_member(model_dir: Path, docs: Sequence[Document], cls: str) -> dict:
    """Strict and char F1 of one member on its held-out documents at the default threshold,
    and the threshold of a 0.05 grid that gives it the best char F1 there (ties: the lower,
    as stage 1 favours recall). Chosen on held-out training data, that threshold is a fair
    starting point where no separate dev set exists."""
    if not docs:
        return {}
    from stage1_ensemble.infer import MemberRunner

    runner = MemberRunner.load(model_dir, InferenceConfig())
    texts = [d.text for d in docs]
    probs = runner.char_probs(texts)
    gold = [s for d in docs for s in d.spans if s.label == cls]

    def scores(threshold: float) -> tuple[float, float]:
        pred = [Span(d.id, cls, s, e) for d, found in zip(docs, decode_batch(texts, probs, threshold))
                for s, e, _ in found]
        result = evaluate(gold, pred).pooled.as_dict()
        return result["strict"]["f1"], result["char_f1"]["f1"]

    strict_f1, char_f1 = scores(VALIDATION_THRESHOLD)
    best = max((scores(t)[1], -t) for t in VALIDATION_GRID)
    return {"threshold": VALIDATION_THRESHOLD, "documents": len(docs),
            "strict_f1": strict_f1, "char_f1": char_f1,
            "best_threshold": -best[1], "best_char_f1": best[0]}


def corpus_data_hash(docs: Sequence[Document]) -> str:
    """The manifest's ``data_hash`` of a training corpus: which corpus members trained on."""
    return data_hash([(d.id, d.text, [(s.label, s.start, s.end) for s in d.spans]) for d in docs])


def train_ensemble(docs: Sequence[Document], *, out: Path, encoders: Sequence[str],
                   classes: Sequence[str] = CLASSES, n_folds: int = 1,
                   config: TrainConfig | None = None,
                   group_pattern: str = DEFAULT_GROUP_PATTERN,
                   on_member: Callable[[str, str], None] | None = None) -> Manifest:
    """Train every member not yet finished; write the manifest after each one."""
    config = config or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "pipeline train"):
        corpus_hash = corpus_data_hash(docs)
        manifest_path = out / "ensemble.json"
        added: list[Member] = []  # members of other kinds (`pipeline ensemble add`): kept
        if manifest_path.exists():
            old = read_manifest(out)
            if old.data_hash != corpus_hash:
                raise ValueError(f"{manifest_path}: was trained on other data "
                                 f"({old.data_hash} vs {corpus_hash}); use another --out")
            added = [m for m in old.members if m.kind != "binary"]
        empty = [c for c in classes
                 if not any(s.label == c for d in docs if d.entity_class in (None, c) for s in d.spans)]
        if empty:  # members would learn that nothing is ever a mention
            raise PipelineError(f"no gold {', '.join(empty)} spans in the training documents; "
                                "choose the classes the corpus annotates (--classes)")
        check_folds(docs, classes, n_folds, group_pattern)
        names = encoder_names(encoders)
        check_encoders([e for e in encoders
                        if any(not member_file(out, member_name(c, names[e], f)).exists()
                               for c in classes for f in range(n_folds))], config)
        planned = [member_name(c, names[e], f) for c in classes for e in encoders
                   for f in range(n_folds)] + [m.name for m in added]
        members: list[Member] = []
        for cls in classes:
            cls_docs = [d for d in docs if d.entity_class in (None, cls)]
            for encoder in encoders:
                for fold in range(n_folds):
                    name = member_name(cls, names[encoder], fold)
                    member = train_one(name, cls, encoder, fold, n_folds, cls_docs, out, config,
                                       group_pattern, on_member)
                    members.append(member)
                    write_manifest(out, Manifest(classes=list(classes), members=members + added,
                                                 data_hash=corpus_hash, planned=planned))
        return Manifest(classes=list(classes), members=members + added, data_hash=corpus_hash,
                        planned=planned)


# Settings that change how a member is logged, not what it learns.
LOGGING_ONLY = {"logging_steps"}


def kept_member_changes(member: Member, n_folds: int, config: TrainConfig,
                        encoder: str | None = None) -> list[str]:
    """How a finished member's training differs from the one asked for now."""
    changes = [f"--folds {member.n_folds}, now {n_folds}"] if member.n_folds != n_folds else []
    if encoder is not None and encoder_key(member.encoder) != encoder_key(encoder):
        changes.append(f"encoder {member.encoder}, now {encoder}")
    try:
        then = TrainConfig.model_validate(member.config).model_dump()
    except ValueError:
        return changes + [f"a recipe this version does not read: {member.config}"]
    now = config.model_dump()
    changes += [f"{key} {then[key]}, now {now[key]}" for key in sorted(now)
                if key not in LOGGING_ONLY and then[key] != now[key]]
    return changes


def encoder_names(encoders: Sequence[str]) -> dict[str, str]:
    """Each encoder's part of its members' names: its ``slug``, and where two encoders of
    one ensemble share a slug (``v1/minilm`` and ``v2/minilm``), the slug and a short hash
    of the encoder, so that no member stands in for another's."""
    seen: dict[str, str] = {}
    for encoder in encoders:
        key = encoder_key(encoder)
        if key in seen:
            raise PipelineError(f"encoder {encoder} is given twice (as {seen[key]} too)")
        seen[key] = encoder
    slugs = [slug(e) for e in encoders]
    return {e: s if slugs.count(s) == 1 else
            f"{s}-{hashlib.sha1(encoder_key(e).encode()).hexdigest()[:6]}"
            for e, s in zip(encoders, slugs)}


def encoder_key(encoder: str) -> str:
    """One spelling of an encoder: a folder by its absolute path, a hub name as given."""
    path = Path(encoder).expanduser()
    return str(path.resolve()) if path.exists() else encoder


def member_name(cls: str, encoder_name: str, fold: int) -> str:
    return f"{cls.lower()}-{encoder_name}-f{fold}"


def member_file(out: Path, name: str) -> Path:
    """Written last, once the member is trained and scored: a member with one is done."""
    return out / name / "member.json"


def check_encoders(encoders: Sequence[str], config: TrainConfig | None = None) -> None:
    """Fail before any training if an encoder that still has members to train cannot be
    loaded (a typo in the last ``--encoder`` would otherwise surface hours in)."""
    from transformers import AutoConfig, AutoTokenizer

    from stage1_ensemble.train import load_encoder

    for encoder in encoders:
        path = Path(encoder).expanduser()
        if not path.exists() and (path.is_absolute() or str(encoder).startswith(".")):
            raise PipelineError(f"encoder {encoder}: no such folder")
        problem = model_folder_problem(path) if path.is_dir() else None
        if problem:
            raise PipelineError(f"encoder {encoder}: {problem}")
        try:
            AutoConfig.from_pretrained(str(encoder))
            tokenizer = AutoTokenizer.from_pretrained(str(encoder))
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"encoder {encoder}: cannot be loaded ({reason}); give a "
                                "model folder or a model name in the local HF cache") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise PipelineError(f"encoder {encoder}: its tokenizer has no fast version "
                                "(offsets are needed to map tokens to characters)")
        try:  # its weights, once, before hours of training on other encoders
            load_encoder(encoder, config)
        except ValueError as exc:  # its messages may name the folder already
            reason = str(exc).removeprefix(f"{encoder}: ")
            raise PipelineError(f"encoder {encoder}: {reason}") from None


def train_one(name: str, cls: str, encoder: str, fold: int, n_folds: int,
              docs: Sequence[Document], out: Path, config: TrainConfig, group_pattern: str,
              on_member: Callable[[str, str], None] | None) -> Member:
    from stage1_ensemble.train import train_member

    member_dir = out / name
    done = member_file(out, name)
    held_out = [d for d in docs if n_folds > 1 and fold_of(d.id, n_folds, group_pattern) == fold]
    if done.exists():  # finished before a crash or an earlier run: keep it
        try:
            member = load_config(done, Member, "member record")
        except ValueError as exc:  # written atomically now; a version before may have left half
            raise PipelineError(f"{exc}; delete {member_dir} to train this member again") from None
        changed = kept_member_changes(member, n_folds, config, encoder)
        if changed:  # keeping it would mix members of two recipes or two fold splits
            raise PipelineError(f"{done}: this member was trained with other settings "
                                f"({'; '.join(changed)}); train into another --out, or "
                                f"delete {member_dir} to train it again")
        if held_out and "best_threshold" not in member.validation:
            # trained by a version that scored one threshold only: score the grid now
            member.validation = validate_member(out / member.path, held_out, cls)
            atomic_write(done, member.model_dump_json(indent=2))
        if on_member:
            on_member(name, "kept")
        return member
    if on_member:
        on_member(name, "training")
    held_ids = {d.id for d in held_out}
    train_docs = [d for d in docs if d.id not in held_ids]
    model_dir = train_member([d.text for d in train_docs],
                             [[(s.start, s.end) for s in d.spans if s.label == cls]
                              for d in train_docs],
                             encoder=encoder, out_dir=member_dir, config=config)
    member = Member(name=name, entity_class=cls, fold=fold, n_folds=n_folds, encoder=encoder,
                    path=str(model_dir.relative_to(out)), tokenizer=encoder,
                    config=config.model_dump(), train_documents=len(train_docs),
                    validation=validate_member(model_dir, held_out, cls))
    atomic_write(done, member.model_dump_json(indent=2))
    return member
