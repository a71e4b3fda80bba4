"""Bad input, each kind tried as a user would: what they see and the exit code (the table
in docs/bad-input.md). One line naming the file (and line) or the option, exit 2; never a
traceback, never silently accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_inprocess import run_cli
from tests.test_pipeline import make_corpus

JSONL_CASES = [  # (what, line, exit code, what stderr says)
    ("spans is not a list", {"id": "a", "text": "fiebre", "spans": 5}, 2,
     "'spans' must be a list, not 5"),
    ("a span's text is no string", {"id": "a", "text": "fiebre", "spans": [
        {"start": 0, "end": 6, "label": "SINTOMA", "text": 5}]}, 2,
     "a string 'text'"),
    ("id null", {"id": None, "text": "fiebre"}, 2, "'id' must be a non-empty string, not None"),
    ("id empty", {"id": "", "text": "fiebre"}, 2, "'id' must be a non-empty string, not ''"),
    ("class in lower case", {"id": "a", "text": "fiebre", "entity_class": "symptom"}, 2,
     "'entity_class' 'symptom' is not a class (DISEASE, SYMPTOM, PROCEDURE) (did you mean "
     "SYMPTOM?)"),
]


@pytest.mark.parametrize("what,obj,code,said", JSONL_CASES, ids=[c[0] for c in JSONL_CASES])
def test_bad_jsonl_documents(tmp_path, what, obj, code, said):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "ok", "text": "tos"}) + "\n" + json.dumps(obj) + "\n")
    got, out, err = run_cli("convert", "--input", src, "--output", tmp_path / "o.tsv")
    assert got == code and f"{src}:2: " in err and said in err, err
    assert "Traceback" not in err


def test_jsonl_keeps_the_promises_of_the_other_readers(tmp_path):
    """A BOM is stripped and said; corpus labels map to classes (SINTOMA: SYMPTOM);
    "spans": null is no spans."""
    src = tmp_path / "in.jsonl"
    lines = [{"id": "a", "text": "fiebre alta", "spans": [
        {"start": 0, "end": 6, "label": "SINTOMA", "text": "fiebre"}]},
        {"id": "b", "text": "tos", "spans": None, "entity_class": "SINTOMA"}]
    src.write_bytes(b"\xef\xbb\xbf" + "\n".join(map(json.dumps, lines)).encode())
    code, out, err = run_cli("convert", "--input", src, "--output", tmp_path / "o.jsonl",
                             "--format", "jsonl")
    assert code == 0, err
    assert "2 documents, 1 spans; BOM stripped from 1 files" in err
    back = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [s["label"] for s in back[0]["spans"]] == ["SYMPTOM"]
    assert back[1]["entity_class"] == "SYMPTOM"


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "corpus", n=2, broken=False)


def refused(*args) -> str:
    code, out, err = run_cli(*args)
    assert code == 2 and "Traceback" not in err and out == "", (code, err)
    (line,) = err.strip().splitlines()
    return line


def test_bad_thresholds_files(tmp_path, corpus, tiny_ensemble):
    th = tmp_path / "th.json"
    run = ("run", "--ensemble", tiny_ensemble, "--input", corpus, "--output", tmp_path / "o",
           "--thresholds", th)
    th.write_text('{"clases": {"DISEASE": {"stage1": 0.4}}}')  # misspelt: defaults applied
    assert "clases: Extra inputs are not permitted" in refused(*run)
    th.write_text('{"classes": {"DISEASES": {"stage1": 0.4}}}')  # no such class
    line = refused(*run)
    assert f"{th}: 'DISEASES' is not a class; the classes are DISEASE" in line
    assert not (tmp_path / "o").exists()


def test_bad_options(tmp_path, corpus, tiny_ensemble):
    run = ("run", "--ensemble", tiny_ensemble, "--input", corpus, "--output", tmp_path / "o")
    assert "output.shard: 0/0: the number of parts must be at least 1" in refused(
        *run, "--shard", "0/0")
    assert "no output format given" in refused(*run, "--format", ",")
    train = ("train", "--corpus", corpus, "--out", tmp_path / "ens", "--encoder", "x")
    assert "--classes disease: not a class (did you mean DISEASE?)" in refused(
        *train, "--classes", "disease")
    assert "--group-pattern '(': not a regular expression" in refused(
        *train, "--group-pattern", "(")
    assert "needs a group" in refused(*train, "--group-pattern", "case")
    config = tmp_path / "inference.json"
    config.write_text('{"device": "banana"}')
    assert "device: Value error, 'banana' is not a torch device" in refused(
        *run, "--inference-config", config)
    import torch

    if not torch.cuda.is_available():
        config.write_text('{"device": "cuda"}')
        assert "'cuda': this machine has no CUDA device" in refused(
            *run, "--inference-config", config)
    assert not (tmp_path / "o").exists() and not (tmp_path / "ens").exists()


def test_version():
    code, out, err = run_cli("--version")
    assert code == 0 and out.startswith("pipeline ") and out.split()[1][0].isdigit()


def test_tune_and_ablate_skip_bad_gold_annotations_only_when_lenient(
        tmp_path, corpus, tiny_ensemble):
    (corpus / "doc01.ann").write_text("T1\tDISEASE 0 999\tx\n")
    common = ("--ensemble", tiny_ensemble, "--gold", corpus, "--cache-dir", tmp_path / "c")
    assert f"{corpus / 'doc01.ann'}:1: span 0-999" in refused(
        "tune", *common, "--out", tmp_path / "t.json")
    code, out, err = run_cli("tune", *common, "--out", tmp_path / "t.json", "--lenient")
    assert code == 0, err
    assert "1 bad annotations skipped" in err and f"skipped: {corpus / 'doc01.ann'}:1" in err
    code, out, err = run_cli("ablate", *common, "--thresholds", tmp_path / "t.json",
                             "--out", tmp_path / "a", "--lenient")
    assert code == 0 and "skipped: " in err, err
