from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.documents import Document, Span
from pipeline.errors import CorpusError, ReadReport
from pipeline.readers import (
    detect_format,
    open_corpus,
    read_brat,
    read_jsonl,
    read_multiclinner,
    read_tsv_corpus,
    read_tsv_spans,
)
from pipeline.writers import atomic_write, clean_tsv_text, write_brat, write_jsonl, write_tsv


def brat(tmp_path: Path, text: str | bytes, ann: str, name: str = "d1") -> Path:
    folder = tmp_path / "brat"
    folder.mkdir(parents=True, exist_ok=True)
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    (folder / f"{name}.txt").write_bytes(data)
    (folder / f"{name}.ann").write_text(ann, encoding="utf-8")
    return folder


def test_span_convention_is_end_exclusive_character_offsets(tmp_path):
    text = "Dolor torácico y fiebre."
    folder = brat(tmp_path, text, "T1\tSINTOMA 0 14\tDolor torácico\n#1\tAnnotatorNotes T1\tx\n")
    doc = next(read_brat(folder))
    (span,) = doc.spans
    assert (span.start, span.end, span.label) == (0, 14, "SYMPTOM")
    assert doc.mention(span) == text[0:14] == "Dolor torácico"


def test_crlf_kept_and_bom_stripped_and_reported(tmp_path):
    text = "\ufeffLínea uno\r\nFiebre alta"
    start = text.index("Fiebre") - 1  # offsets count after the BOM
    folder = brat(tmp_path, text, f"T1\tSINTOMA {start} {start + 6}\tFiebre\n")
    report = ReadReport()
    doc = next(read_brat(folder, report=report))
    assert "\r\n" in doc.text and not doc.text.startswith("\ufeff")
    assert doc.mention(doc.spans[0]) == "Fiebre"
    assert len(report.bom_stripped) == 1


def test_labels_outside_classes_are_dropped_and_counted(tmp_path):
    folder = brat(tmp_path, "aspirina y fiebre", "T1\tMEDICATION 0 8\taspirina\n"
                                                  "T2\tSINTOMA 11 17\tfiebre\n")
    report = ReadReport()
    doc = next(read_brat(folder, report=report))
    assert [s.label for s in doc.spans] == ["SYMPTOM"]
    assert report.dropped_labels == {"MEDICATION": 1}


@pytest.mark.parametrize("ann, message", [
    ("T1\tSINTOMA 3 2\tx\n", r"d1\.ann:1: end 2 is not after start 3"),
    ("T1\tSINTOMA 0 99\tx\n", r"d1\.ann:1: span 0-99 lies outside the text"),
    ("T1\tSINTOMA 0 5\tfiebre\n", r"d1\.ann:1: mention 'fiebre' differs from the text"),
    ("#1\tnote\nT1\tSINTOMA 0 2;3 5\tfi br\n", r"d1\.ann:2: discontinuous span"),
])
def test_bad_brat_annotations_name_file_and_line(tmp_path, ann, message):
    folder = brat(tmp_path, "fiebre alta", ann)
    with pytest.raises(CorpusError, match=message):
        list(read_brat(folder))
    report = ReadReport()
    docs = list(read_brat(folder, lenient=True, report=report))
    assert docs[0].spans == [] and len(report.skipped) == 1


def test_ann_without_txt_and_non_utf8(tmp_path):
    folder = brat(tmp_path, "fiebre", "")
    (folder / "orphan.ann").write_text("T1\tSINTOMA 0 1\tf\n")
    with pytest.raises(CorpusError, match=r"orphan\.ann: has no text file orphan\.txt"):
        list(read_brat(folder))
    folder2 = brat(tmp_path / "x", b"linea\nfi\xe9bre\n", "")
    with pytest.raises(CorpusError, match=r"d1\.txt:2: not UTF-8: byte 0xe9"):
        list(read_brat(folder2))


def test_one_text_file_is_a_corpus_of_one_document(tmp_path):
    folder = brat(tmp_path, "fiebre alta y tos", "T1\tSINTOMA 0 11\tfiebre alta\n")
    brat(tmp_path, "otra nota", "", name="d2")
    (folder / "orphan.ann").write_text("T1\tSINTOMA 0 1\tf\n")  # not this document's
    assert detect_format(folder / "d1.txt") == "txt"
    docs = list(open_corpus(folder / "d1.txt"))
    assert [(d.id, d.text, [(s.label, s.start, s.end) for s in d.spans]) for d in docs] == [
        ("d1", "fiebre alta y tos", [("SYMPTOM", 0, 11)])]
    assert [d.id for d in open_corpus(folder / "d2.txt")] == ["d2"]
    with pytest.raises(CorpusError, match=r"d1\.ann: a corpus file must be \.txt"):
        open_corpus(folder / "d1.ann")


def test_tsv_errors(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("filename\tlabel\tstart_span\tend_span\ttext\nd1\tDISEASE\t3\n")
    with pytest.raises(CorpusError, match=r"p\.tsv:2: expected 5 tab-separated columns"):
        read_tsv_spans(tsv)
    tsv.write_text("file\tlabel\n")
    with pytest.raises(CorpusError, match=r"p\.tsv:1: header must be"):
        read_tsv_spans(tsv)


def test_tsv_corpus_checks_mentions_against_texts(tmp_path):
    texts = tmp_path / "txt"
    texts.mkdir()
    (texts / "d1.txt").write_text("Tiene \"asma\"\ty tos")
    tsv = tmp_path / "g.tsv"
    tsv.write_text("filename\tlabel\tstart_span\tend_span\ttext\n"
                   "d1\tDISEASE\t6\t12\t'asma'\n"
                   "d1\tSYMPTOM\t15\t18\ttoz\n")
    with pytest.raises(CorpusError, match=r"g\.tsv:3: mention 'toz' differs"):
        list(read_tsv_corpus(tsv, texts))


def test_jsonl_duplicate_ids_and_bad_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: duplicate document id 'a' \(first on line 1\)"):
        list(read_jsonl(path))
    path.write_text('{"id": "a", "text": "x"}\nnot json\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: not a document object"):
        list(read_jsonl(path))
    path.write_text('{"id": "a", "text": "fiebre", "spans": [{"start": 0, "end": 6}, '
                    '{"start": 0, "end": 6, "label": "SYMPTOM"}]}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: span .* needs integer 'start'"):
        list(read_jsonl(path))
    # lenient (as `pipeline run` reads): the usable documents come through, the others are
    # named with their reason, and nothing stops
    path.write_text('{"id": "a", "text": "fiebre", "spans": [{"start": 0, "end": "x", '
                    '"label": "SYMPTOM"}, {"start": 0, "end": 6, "label": "SYMPTOM"}]}\n'
                    'not json\n{"id": "b", "text": 5}\n{"id": "a", "text": "again"}\n'
                    '{"text": "no id"}\n{"id": "c", "text": "tos"}\n')
    report = ReadReport()
    docs = list(read_jsonl(path, lenient=True, report=report))
    assert [(d.id, len(d.spans)) for d in docs] == [("a", 1), ("c", 0)]
    assert [i for i, _ in report.failed_documents] == ["c.jsonl:2", "b", "a", "c.jsonl:5"]
    assert "duplicate document id 'a'" in report.failed_documents[2][1]
    assert len(report.skipped) == 5 and "c.jsonl:1: span" in report.skipped[0]
    # JSON escapes can make a lone surrogate, which no tokenizer takes: named, not a crash
    path.write_text('{"id": "a", "text": "fiebre \\ud800 alta"}\n{"id": "b\\udfff", "text": "x"}\n'
                    '{"id": "c", "text": "\\ud83d\\ude37 tos"}\n')  # a valid pair: a character
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: not a document object \(its 'text' "
                                          r"holds a lone surrogate \(U\+D800\) at character 7"):
        list(read_jsonl(path))
    report = ReadReport()
    assert [d.text for d in read_jsonl(path, lenient=True, report=report)] == ["\U0001f637 tos"]
    assert [i for i, _ in report.failed_documents] == ["a", "b\udfff"]
    assert "its 'id' holds a lone surrogate (U+DFFF)" in report.failed_documents[1][1]


def test_tsv_text_column_is_safe_for_pandas():
    assert clean_tsv_text('a\t"b"\r\nc') == "a 'b'  c"


def test_writers_refuse_empty_spans(tmp_path):
    doc = Document("d", "abc", spans=[Span("d", "DISEASE", 2, 2)])
    with pytest.raises(ValueError, match="empty span"):
        write_tsv([doc], tmp_path / "o.tsv")


def test_multiclinner_layout_takes_language_and_class_from_path(tmp_path):
    for lang, cls, text in [("en", "disease", "Has asthma."), ("ro", "symptom", "Are tuse.")]:
        base = tmp_path / "multiclinner" / lang / f"multiclinner_{lang}_{cls}"
        (base / "txt").mkdir(parents=True)
        (base / "ann").mkdir()
        (base / "txt" / "c1.txt").write_text(text)
        label = cls.upper()
        word = text.split()[1].rstrip(".")
        s = text.index(word)
        (base / "ann" / "c1.ann").write_text(f"T1\t{label} {s} {s + len(word)}\t{word}\n")
    assert detect_format(tmp_path / "multiclinner") == "multiclinner"
    docs = list(read_multiclinner(tmp_path / "multiclinner"))
    got = sorted((d.lang, d.entity_class, [d.mention(s) for s in d.spans]) for d in docs)
    assert got == [("en", "DISEASE", ["asthma"]), ("ro", "SYMPTOM", ["tuse"])]


def test_multiclinner_translations_of_a_case_stay_apart(tmp_path):
    """The release names a case's file alike in every language: read as one document id,
    the English and Spanish spans were scored against each other's texts (here a Spanish
    gold span that no prediction found counted 0.8 of a match)."""
    from pipeline.corpus import load_spans
    from pipeline.metrics import evaluate
    from pipeline.training import document_group

    root = tmp_path / "multiclinner"
    for lang, text, word in [("en", "Has asthma.", "asthma"), ("es", "Tiene asma.", "asma")]:
        base = root / lang / f"multiclinner_{lang}_disease"
        (base / "txt").mkdir(parents=True)
        (base / "ann").mkdir()
        (base / "txt" / "c1.txt").write_text(text)
        s = text.index(word)
        (base / "ann" / "c1.ann").write_text(f"T1\tDISEASE {s} {s + len(word)}\t{word}\n")
    docs = list(open_corpus(root))
    assert [(d.id, d.lang, [sp.doc_id for sp in d.spans]) for d in docs] == \
        [("en/c1", "en", ["en/c1"]), ("es/c1", "es", ["es/c1"])]
    assert {document_group(d.id) for d in docs} == {"c1"}  # one case for folds and subsets
    assert [d.id for d in open_corpus(root / "es")] == ["c1"]  # one language: the task's names
    gold, lang_of = load_spans(root)
    result = evaluate(gold, [s for s in gold if s.doc_id == "en/c1"], lang_of=lang_of).as_dict()
    assert result["char_f1"]["recall"] == 0.5
    assert {s["value"]: s["char_f1"]["recall"] for s in result["slices"]} == {"en": 1.0, "es": 0.0}


def test_brat_written_a_folder_per_class_reads_back(tmp_path):
    """Documents whose text belongs to one class (MultiClinNER's) are written to brat in a
    folder per class; that output was no corpus any reader knew."""
    docs = [Document("en/c1", "Has asthma.", lang="en", entity_class="DISEASE",
                     spans=[Span("en/c1", "DISEASE", 4, 10)]),
            Document("en/c1", "Has a cough.", lang="en", entity_class="SYMPTOM",
                     spans=[Span("en/c1", "SYMPTOM", 6, 11)]),
            Document("es/c1", "Tiene asma.", lang="es", entity_class="DISEASE", spans=[])]
    write_brat(docs, tmp_path / "out")
    assert detect_format(tmp_path / "out") == "brat-classes"
    back = list(open_corpus(tmp_path / "out"))
    assert sorted((d.id, d.lang, d.entity_class, d.text, [s.key for s in d.spans]) for d in back) \
        == sorted((d.id, d.lang, d.entity_class, d.text, [s.key for s in d.spans]) for d in docs)
    assert [d.entity_class for d in open_corpus(tmp_path / "out", classes=("SYMPTOM",))] == \
        ["SYMPTOM"]


def _docs_key(docs):
    return sorted((d.id, d.text, sorted(s.key for s in d.spans)) for d in docs)


def test_round_trips_on_shared_data(shared_data, tmp_path):
    for name in ("spaccc_train", "cardioccc_dev"):
        original = list(open_corpus(shared_data / name))
        write_tsv(original, tmp_path / f"{name}.tsv")
        via_tsv = list(read_tsv_corpus(tmp_path / f"{name}.tsv", shared_data / name))
        write_brat(via_tsv, tmp_path / f"{name}_brat")
        back = list(read_brat(tmp_path / f"{name}_brat"))
        assert _docs_key(back) == _docs_key(original)
        write_jsonl(original, tmp_path / f"{name}.jsonl")
        write_brat(read_jsonl(tmp_path / f"{name}.jsonl"), tmp_path / f"{name}_brat2")
        assert _docs_key(read_brat(tmp_path / f"{name}_brat2")) == _docs_key(original)


def test_jsonl_keeps_scores(tmp_path):
    doc = Document("d", "fiebre", lang="es",
                   spans=[Span("d", "SYMPTOM", 0, 6, stage1_score=0.9, stage2_score=0.25)])
    write_jsonl([doc], tmp_path / "o.jsonl")
    line = json.loads((tmp_path / "o.jsonl").read_text())
    assert line["spans"][0]["stage2_score"] == 0.25
    (back,) = read_jsonl(tmp_path / "o.jsonl")
    assert back.spans == doc.spans and back.lang == "es"


def test_ids_that_are_no_file_names_round_trip_through_brat_inside_its_folder(tmp_path):
    ids = ["en/case1", "../outside", "50%_dose", "a\\b", ".hidden", "plain_id"]
    docs = [Document(i, "fiebre alta", spans=[Span(i, "SYMPTOM", 0, 6)]) for i in ids]
    write_brat(docs, tmp_path / "brat")
    files = sorted(p.name for p in (tmp_path / "brat").iterdir())
    assert len(files) == 2 * len(ids) and all(p.is_file() for p in (tmp_path / "brat").iterdir())
    assert "plain_id.txt" in files and not (tmp_path / "outside.txt").exists()
    back = {d.id: d for d in read_brat(tmp_path / "brat")}
    assert sorted(back) == sorted(ids)
    assert all(back[i].spans == [Span(i, "SYMPTOM", 0, 6)] for i in ids)
    write_tsv(docs, tmp_path / "o.tsv")  # a TSV corpus finds its texts by the same names
    assert sorted(d.id for d in read_tsv_corpus(tmp_path / "o.tsv", tmp_path / "brat")) \
        == sorted(ids)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_half_one(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "summary.json"
    atomic_write(path, "old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, "new" * 1000)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
