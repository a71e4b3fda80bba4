"""Streaming corpus readers: each yields Documents one at a time.

Text is read as UTF-8 with no newline translation (``\\r\\n`` stays two characters, so offsets
match the official scorer's); a leading BOM is stripped and reported.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

from pipeline.documents import CLASSES, DEFAULT_LABEL_MAP, Document, Span
from pipeline.errors import CorpusError, ReadReport
from stage1_ensemble.chars import text_problem

logger = logging.getLogger(__name__)

# Characters that cannot stand inside a TSV field or a brat mention (line breaks, tabs).
_BREAKS = re.compile(r"[\t\r\n\v\f\x85\u2028\u2029]")
TSV_COLUMNS = ("filename", "label", "start_span", "end_span", "text")
LANGUAGES = ("es", "en", "ro", "sv", "it", "nl", "cz")
# Folder names under which the MultiClinNER release (and its source corpora) ship each class.
CLASS_FOLDERS = {
    "disease": "DISEASE", "distemist": "DISEASE", "enfermedad": "DISEASE",
    "symptom": "SYMPTOM", "symptemist": "SYMPTOM", "sintoma": "SYMPTOM",
    "procedure": "PROCEDURE", "medprocner": "PROCEDURE", "procedimiento": "PROCEDURE",
}  # fmt: skip


def fold_breaks(mention: str) -> str:
    """A mention as one line: tabs and line breaks become spaces (offsets are unchanged)."""
    return _BREAKS.sub(" ", mention)


def lang_from_id(doc_id: str) -> str | None:
    """The language of a document named like ``case12_ro`` or ``ro/case12`` (as a
    MultiClinNER tree of several languages names them); None when the name says none."""
    match = _LANG_IN_ID.search(doc_id)
    return (match.group(1) or match.group(2)) if match else None


_LANG_IN_ID = re.compile(rf"[_.-]({'|'.join(LANGUAGES)})$|^({'|'.join(LANGUAGES)})/")


def read_text(path: Path, report: ReadReport | None = None) -> str:
    """Read ``path`` as strict UTF-8, keeping ``\\r\\n``; strip and report a BOM."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CorpusError(path, f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                          line) from None
    if text.startswith("\ufeff"):
        text = text[1:]
        if report is not None:
            report.bom_stripped.append(str(path))
        logger.warning("%s: BOM stripped (offsets count from the character after it)", path)
    return text


def check_span(path: Path, line: int, text: str, start: int, end: int,
               mention: str | None) -> CorpusError | None:
    """The reason a span cannot be used on ``text``, or None when it is fine."""
    if end <= start:
        return CorpusError(path, f"end {end} is not after start {start}", line)
    if start < 0 or end > len(text):
        return CorpusError(path, f"span {start}-{end} lies outside the text "
                                 f"({len(text)} characters)", line)
    if mention is not None and fold_breaks(text[start:end]) != fold_breaks(mention):
        return CorpusError(path, f"mention {mention!r} differs from the text at {start}-{end}: "
                                 f"{text[start:end]!r}", line)
    return None


def _map_label(raw: str, label_map: dict[str, str], classes: tuple[str, ...],
               report: ReadReport) -> str | None:
    label = label_map.get(raw, raw)
    if label not in classes:
        report.dropped_labels[raw] += 1
        return None
    return label


def parse_ann(path: Path, text: str, doc_id: str, *, label_map: dict[str, str],
              classes: tuple[str, ...], report: ReadReport, lenient: bool) -> list[Span]:
    """Entity (``T``) lines of a brat ``.ann`` file, checked against ``text``."""
    spans: list[Span] = []
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.startswith("T"):
            continue  # relations, events, AnnotatorNotes: not entities
        fields = line.split("\t")
        if len(fields) < 2 or len(fields[1].split(" ")) < 3:
            report.skip(CorpusError(path, f"malformed entity line: {line!r}", lineno), lenient)
            continue
        raw_label, _, offsets = fields[1].partition(" ")
        if ";" in offsets:
            report.skip(CorpusError(path, f"discontinuous span {offsets!r} is not supported",
                                    lineno), lenient)
            continue
        try:
            start, end = (int(x) for x in offsets.split(" "))
        except ValueError:
            report.skip(CorpusError(path, f"bad offsets {offsets!r}", lineno), lenient)
            continue
        mention = fields[2] if len(fields) > 2 else None
        error = check_span(path, lineno, text, start, end, mention)
        if error is not None:
            report.skip(error, lenient)
            continue
        label = _map_label(raw_label, label_map, classes, report)
        if label is not None:
            spans.append(Span(doc_id, label, start, end))
    return spans


def file_stem(doc_id: str) -> str:
    """A document id as a file name (without suffix) in one folder: '%', '/' and '\\' are
    written as %25, %2F and %5C, a leading '.' as %2E; other ids are their own names."""
    name = doc_id.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    return "%2E" + name[1:] if name.startswith(".") else name


def stem_id(stem: str) -> str:
    """The document id of a file name written by ``file_stem`` (any other name: itself,
    unless it holds %-escapes)."""
    return unquote(stem) if "%" in stem else stem


def brat_stems(path: Path) -> list[str]:
    """The file names (without .txt) of the documents of a brat or text folder, sorted; of a
    single ``.txt`` file, its own."""
    path = Path(path)
    return [path.stem] if path.is_file() else sorted(p.stem for p in path.glob("*.txt"))


def read_brat(folder: Path, *, label_map: dict[str, str] | None = None,
              classes: tuple[str, ...] = CLASSES, lang: str | None = None,
              entity_class: str | None = None, lenient: bool = False,
              report: ReadReport | None = None, ann_folder: Path | None = None,
              annotations: bool = True) -> Iterator[Document]:
    """A brat folder (``NAME.txt`` + ``NAME.ann``), or one such ``NAME.txt`` file; a ``.txt``
    without ``.ann`` has no spans. ``annotations=False`` reads the texts only."""
    folder, ann_folder = Path(folder), Path(ann_folder or folder)
    label_map = DEFAULT_LABEL_MAP if label_map is None else label_map
    report = report if report is not None else ReadReport()
    one = folder.is_file() and folder.suffix == ".txt"  # one document: NAME.txt (+ NAME.ann)
    if not one and not folder.is_dir():
        raise CorpusError(folder, "not a folder")
    if one and ann_folder == folder:
        ann_folder = folder.parent
    stems = brat_stems(folder)
    folder = folder.parent if one else folder
    orphans = ann_folder.glob("*.ann") if annotations and not one else ()
    for orphan in sorted(p for p in orphans if p.stem not in stems):
        report.skip(CorpusError(orphan, f"has no text file {orphan.stem}.txt in {folder}"),
                    lenient)
    for stem in stems:
        txt, doc_id = folder / f"{stem}.txt", stem_id(stem)
        try:
            text = read_text(txt, report)
        except CorpusError as exc:  # an unreadable document: stop, or skip it and say so
            report.skip(exc, lenient)
            report.failed_documents.append((doc_id, exc.reason))
            continue
        ann = ann_folder / f"{stem}.ann"
        spans = []
        if annotations and ann.exists():
            try:
                spans = parse_ann(ann, text, doc_id, label_map=label_map, classes=classes,
                                  report=report, lenient=lenient)
            except CorpusError as exc:  # the whole file unreadable (not UTF-8, say)
                report.skip(exc, lenient)
        report.documents += 1
        report.spans += len(spans)
        yield Document(doc_id, text, lang=lang or lang_from_id(doc_id),
                       entity_class=entity_class, spans=spans, source=str(txt))


def read_tsv_rows(path: Path, *, label_map: dict[str, str] | None = None,
                  classes: tuple[str, ...] = CLASSES, lenient: bool = False,
                  report: ReadReport | None = None) -> Iterator[tuple[int, Span, str]]:
    """Rows of a task TSV as (line number, span, text column)."""
    label_map = DEFAULT_LABEL_MAP if label_map is None else label_map
    report = report if report is not None else ReadReport()
    lines = read_text(Path(path)).split("\n")
    header = lines[0].rstrip("\r").split("\t") if lines else []
    if tuple(header[:4]) != TSV_COLUMNS[:4]:
        expected = "\t".join(TSV_COLUMNS)
        raise CorpusError(path, f"header must be {expected!r}, found {lines[0]!r}", 1)
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 4:
            report.skip(CorpusError(path, f"expected {len(TSV_COLUMNS)} tab-separated columns "
                                          f"({', '.join(TSV_COLUMNS)}), found {len(fields)}",
                                    lineno), lenient)
            continue
        try:
            start, end = int(fields[2]), int(fields[3])
        except ValueError:
            report.skip(CorpusError(path, f"offsets {fields[2]!r}, {fields[3]!r} are not "
                                          "integers", lineno), lenient)
            continue
        if end <= start:
            report.skip(CorpusError(path, f"end {end} is not after start {start}", lineno),
                        lenient)
            continue
        label = _map_label(fields[1], label_map, classes, report)
        if label is not None:
            report.spans += 1
            yield lineno, Span(fields[0], label, start, end), (fields[4] if len(fields) > 4
                                                               else "")


def read_tsv_spans(path: Path, **options) -> list[Span]:
    return [span for _, span, _ in read_tsv_rows(path, **options)]


def read_tsv_corpus(tsv: Path, texts: Path, *, lenient: bool = False,
                    report: ReadReport | None = None, **options) -> Iterator[Document]:
    """The task TSV plus a folder of ``NAME.txt``: offsets are checked against the texts."""
    from pipeline.writers import clean_tsv_text  # the writer's cleaning tells what to expect

    report = report if report is not None else ReadReport()
    by_doc: dict[str, list[tuple[int, Span, str]]] = {}
    for row in read_tsv_rows(tsv, lenient=lenient, report=report, **options):
        by_doc.setdefault(row[1].doc_id, []).append(row)
    ids = {stem_id(p.stem): p for p in Path(texts).glob("*.txt")}
    for missing in sorted(set(by_doc) - set(ids)):
        line = by_doc[missing][0][0]
        report.skip(CorpusError(tsv, f"document {missing!r} has no text file in {texts}", line),
                    lenient)
    for doc_id in sorted(ids):
        text = read_text(ids[doc_id], report)
        spans = []
        for lineno, span, mention in by_doc.get(doc_id, []):
            shown = clean_tsv_text(text[span.start:span.end]) if mention else None
            error = check_span(Path(tsv), lineno, text, span.start, span.end, None)
            if error is None and shown is not None and shown != mention:
                error = CorpusError(tsv, f"mention {mention!r} differs from the text at "
                                         f"{span.start}-{span.end}: {shown!r}", lineno)
            if error is not None:
                report.skip(error, lenient)
                continue
            spans.append(span)
        report.documents += 1
        yield Document(doc_id, text, lang=lang_from_id(doc_id), spans=spans,
                       source=str(ids[doc_id]))


def read_jsonl(path: Path, *, classes: tuple[str, ...] = CLASSES, lenient: bool = False,
               report: ReadReport | None = None, annotations: bool = True,
               label_map: dict[str, str] | None = None) -> Iterator[Document]:
    """One JSON object a line: ``{"id", "text", "lang"?, "entity_class"?, "spans"?}``;
    labels (and ``entity_class``) go through the label map; ``annotations=False`` passes
    the spans by."""
    report = report if report is not None else ReadReport()
    label_map = DEFAULT_LABEL_MAP if label_map is None else label_map
    seen: dict[tuple[str, str | None], int] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for lineno, line in enumerate(_utf8_lines(path, handle), start=1):
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
                report.bom_stripped.append(str(path))
            if not line.strip():
                continue
            obj, problem = _document_object(line, label_map, classes)
            if problem is not None:  # an unusable document: stop, or skip it and say so
                error = CorpusError(path, f"not a document object ({problem})", lineno)
                report.skip(error, lenient)
                has_id = isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) \
                    and str(obj["id"])
                report.failed_documents.append(
                    (str(obj["id"]) if has_id else f"{Path(path).name}:{lineno}", error.reason))
                continue
            doc_id, text = str(obj["id"]), obj["text"]
            entity_class = label_map.get(obj.get("entity_class"), obj.get("entity_class"))
            key = (doc_id, entity_class)
            if key in seen:
                error = CorpusError(path, f"duplicate document id {doc_id!r} (first on line "
                                          f"{seen[key]})", lineno)
                report.skip(error, lenient)
                report.failed_documents.append((doc_id, error.reason))
                continue
            seen[key] = lineno
            spans = []
            for item in obj.get("spans") or () if annotations else ():
                try:
                    start, end, label = int(item["start"]), int(item["end"]), item["label"]
                    mention = item.get("text")
                    if not isinstance(label, str) or not isinstance(mention, (str, type(None))):
                        raise TypeError("'label' and 'text' must be strings")
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    report.skip(CorpusError(path, f"span {item!r} needs integer 'start' and "
                                                  f"'end', a 'label' and, if any, a string "
                                                  f"'text' ({exc})", lineno), lenient)
                    continue
                error = check_span(Path(path), lineno, text, start, end, mention)
                if error is not None:
                    report.skip(error, lenient)
                    continue
                label = _map_label(label, label_map, classes, report)
                if label is not None:
                    spans.append(Span(doc_id, label, start, end,
                                      item.get("stage1_score"), item.get("stage2_score")))
            report.documents += 1
            report.spans += len(spans)
            yield Document(doc_id, text, lang=obj.get("lang"), entity_class=entity_class,
                           spans=spans, source=str(path))


def _document_object(line: str, label_map: dict[str, str],
                     classes: tuple[str, ...]) -> tuple[object, str | None]:
    """A JSONL line's object, and what makes it unusable as a document (None if nothing)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(obj, dict) or "id" not in obj or "text" not in obj:
        return obj, "needs 'id' and 'text'"
    if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool) or \
            not str(obj["id"]).strip():
        return obj, f"'id' must be a non-empty string, not {obj['id']!r}"
    if not isinstance(obj["text"], str):
        return obj, "'text' must be a string"
    for key in ("id", "text"):
        problem = text_problem(obj[key]) if isinstance(obj[key], str) else None
        if problem:
            return obj, f"its {key!r} {problem}"
    if not isinstance(obj.get("lang"), (str, type(None))):
        return obj, f"'lang' must be a string, not {obj['lang']!r}"
    if not isinstance(obj.get("spans"), (list, type(None))):
        return obj, f"'spans' must be a list, not {obj['spans']!r}"
    cls, known = obj.get("entity_class"), (*classes, *(c for c in CLASSES if c not in classes))
    if cls is not None and (not isinstance(cls, str) or label_map.get(cls, cls) not in known):
        hint = f" (did you mean {cls.upper()}?)" if isinstance(cls, str) and \
            label_map.get(cls.upper(), cls.upper()) in known else ""
        return obj, f"'entity_class' {cls!r} is not a class ({', '.join(known)}){hint}"
    return obj, None


def _utf8_lines(path: Path, handle: Iterable[str]) -> Iterator[str]:
    lineno = 0
    try:
        for lineno, line in enumerate(handle, start=1):  # noqa: B007
            yield line
    except UnicodeDecodeError as exc:
        raise CorpusError(path, f"not UTF-8 ({exc.reason})", lineno + 1) from None


def find_multiclinner(root: Path) -> list[tuple[Path, Path, str | None, str | None]]:
    """(txt folder, ann or tsv, language, class) for each part of a MultiClinNER-style tree."""
    parts = []
    for txt in sorted(Path(root).rglob("txt")):
        if not txt.is_dir():
            continue
        names = [p.lower() for p in txt.relative_to(root).parts[:-1]] + [Path(root).name.lower()]
        lang = next((n for n in names if n in LANGUAGES), None)
        cls = next((CLASS_FOLDERS[w] for n in names for w in re.split(r"[^a-z]+", n)
                    if w in CLASS_FOLDERS), None)
        ann = txt.parent / "ann"
        tsvs = sorted((txt.parent / "tsv").glob("*.tsv")) if (txt.parent / "tsv").is_dir() else []
        parts.append((txt, ann if ann.is_dir() else (tsvs[0] if tsvs else ann), lang, cls))
    return parts


def read_multiclinner(root: Path, *, classes: tuple[str, ...] = CLASSES, lenient: bool = False,
                      report: ReadReport | None = None, annotations: bool = True,
                      **options) -> Iterator[Document]:
    """The release layout: per language and class, ``txt/`` with ``ann/`` or ``tsv/``.

    A tree of one language keeps the file names as document ids (as the task's TSV names
    them). In a tree of several, the translations of a case share a file name, so the ids
    become ``LANG/NAME`` (``en/case12``): otherwise their spans would be scored, tuned and
    written as one document's (the fold rule still groups them as one case)."""
    report = report if report is not None else ReadReport()
    parts = find_multiclinner(root)
    several = len({lang for _, _, lang, _ in parts}) > 1
    for txt, gold, lang, cls in parts:
        wanted = classes if cls is None else tuple(c for c in classes if c == cls)
        if cls is not None and not wanted:
            continue
        if gold.suffix == ".tsv" and annotations:
            docs = read_tsv_corpus(gold, txt, classes=wanted, lenient=lenient, report=report,
                                   **options)
        else:
            docs = read_brat(txt, ann_folder=gold if gold.is_dir() else txt, classes=wanted,
                             lenient=lenient, report=report, annotations=annotations,
                             **options)
        for doc in docs:
            doc.lang, doc.entity_class = lang, cls
            if several and lang:
                doc.id = f"{lang}/{doc.id}"
                doc.spans = [replace(s, doc_id=doc.id) for s in doc.spans]
            yield doc


def corpus_path(path: Path) -> Path:
    """What to read for ``path``: a ``pipeline run`` output folder stands for its
    predictions (JSONL, else TSV); anything else (a corpus folder that a run also wrote
    into included) for itself."""
    path = Path(path)
    if not (path.is_dir() and (path / "run.json").is_file()) or any(path.glob("*.txt")):
        return path
    for name in ("predictions.jsonl", "predictions.tsv"):
        if (path / name).is_file():
            return path / name
    raise CorpusError(path, "a `pipeline run` output without predictions.jsonl or "
                            "predictions.tsv (has the run finished? its command resumes it)")


def detect_format(path: Path) -> str:
    """brat, multiclinner, tsv, jsonl or txt, from what the path holds."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(path, "does not exist")
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return "jsonl"
        if path.suffix in (".tsv", ".csv"):
            return "tsv"
        if path.suffix == ".txt":
            return "txt"
        raise CorpusError(path, "a corpus file must be .txt (one document, with its .ann if "
                                "any beside it), .tsv or .jsonl")
    if any(path.glob("*.ann")):
        return "brat"
    if any(path.glob("*.txt")):
        return "txt"
    if class_folders(path):
        return "brat-classes"
    if find_multiclinner(path):
        return "multiclinner"
    raise CorpusError(path, "holds no .txt, .ann, txt/ folder, class folders of brat files, "
                            ".tsv or .jsonl corpus")


def class_folders(path: Path) -> list[str]:
    """The classes of a brat folder written a folder per class (``DISEASE/``, ...: how
    ``write_brat`` lays out documents whose text belongs to one class, as MultiClinNER's)."""
    return [c for c in CLASSES if (path / c).is_dir() and any((path / c).glob("*.txt"))]


def read_class_folders(root: Path, *, classes: tuple[str, ...] = CLASSES,
                       **options) -> Iterator[Document]:
    """A brat folder per class, each document predicted for its folder's class only."""
    for cls in class_folders(Path(root)):
        if cls in classes:
            yield from read_brat(Path(root) / cls, classes=(cls,), entity_class=cls, **options)


def corpus_layout(path: Path, texts: Path | None = None) -> str:
    """``detect_format`` of what ``open_corpus`` would read, checked without reading it (a
    TSV needs its texts): commands call it before loading any model."""
    fmt = detect_format(corpus_path(path))
    if fmt == "tsv" and texts is None:
        raise CorpusError(path, "a TSV corpus needs the folder of its texts (--texts)")
    return fmt


def open_corpus(path: Path, *, texts: Path | None = None, lenient: bool = False,
                report: ReadReport | None = None, classes: tuple[str, ...] = CLASSES,
                label_map: dict[str, str] | None = None,
                annotations: bool = True) -> Iterator[Document]:
    """Any supported corpus, by its layout (a `pipeline run` output: its predictions); a
    TSV needs the folder of its texts. ``annotations=False`` reads the documents only (what
    a run needs): a broken annotation then stops nothing."""
    path = corpus_path(path)
    fmt = corpus_layout(path, texts)
    common = {"lenient": lenient, "report": report, "classes": classes}
    if not annotations:
        if fmt == "tsv":  # the texts are the documents
            return read_brat(texts, annotations=False, **common)
        common["annotations"] = False
    if fmt in ("brat", "txt"):
        return read_brat(path, label_map=label_map, **common)
    if fmt == "multiclinner":
        return read_multiclinner(path, label_map=label_map, **common)
    if fmt == "brat-classes":
        return read_class_folders(path, label_map=label_map, **common)
    if fmt == "jsonl":
        return read_jsonl(path, label_map=label_map, **common)
    return read_tsv_corpus(path, texts, label_map=label_map, **common)
