"""Fault injection: a fault of the service or the machine stops a run without recording it
as any document's failure, and the same command, run again, ends byte-identical to a run
that never saw the fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ErrorKind, PipelineError, is_document_fault, kind_of
from tests.cli_inprocess import run_cli
from tests.fake_llm_server import FakeServer
from tests.test_pipeline import make_corpus

OUTPUTS = ("predictions.tsv", "predictions.jsonl", "summary.json")


def same_outputs(a: Path, b: Path) -> None:
    """The finished outputs of two runs are equal (the summaries but for their timings)."""
    for name in OUTPUTS:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "summary.json":
            x, y = (json.loads(v) for v in (x, y))
            x.pop("seconds"), y.pop("seconds")
        assert x == y, name


def test_the_kinds_of_errors():
    import sqlite3

    from stage2_rerank.backends.openai_server import ServerError

    assert kind_of(ServerError("down")) is ErrorKind.TRANSIENT
    assert kind_of(TimeoutError()) is ErrorKind.TRANSIENT
    assert kind_of(ConnectionRefusedError()) is ErrorKind.TRANSIENT
    assert kind_of(ValueError("bad")) is ErrorKind.INPUT
    assert kind_of(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")) is ErrorKind.INPUT
    assert kind_of(FileNotFoundError(2, "No such file", "x")) is ErrorKind.INPUT
    assert kind_of(OSError(28, "No space left on device")) is ErrorKind.REFUSAL
    assert kind_of(sqlite3.OperationalError("disk I/O error")) is ErrorKind.REFUSAL
    assert kind_of(KeyboardInterrupt()) is ErrorKind.INTERRUPTED
    assert kind_of(KeyError("x")) is ErrorKind.BUG
    # what a corpus run may record as a document's failure
    assert is_document_fault(ValueError("bad")) and is_document_fault(RuntimeError("model"))
    assert not is_document_fault(ServerError("down"))
    assert not is_document_fault(OSError(28, "No space left on device"))
    assert not is_document_fault(KeyError("x"))


def test_an_llm_outage_stops_the_run_and_the_rerun_finishes_it_identically(
        tmp_path, tiny_ensemble, tiny_llm_dir, capsys):
    make_corpus(tmp_path / "corpus", n=12)
    config = tmp_path / "llm.json"
    config.write_text(json.dumps({"server": {"retries": 2, "backoff": 0.01, "timeout": 20,
                                             "batch_size": 2, "concurrency": 1}}))

    def run(server: FakeServer, out: str):
        return run_cli("run", "--ensemble", tiny_ensemble, "--input", tmp_path / "corpus",
                       "--output", tmp_path / out, "--cache-dir", tmp_path / f"cache_{out}",
                       "--llm", tiny_llm_dir, "--llm-url", server.url, "--llm-config", config,
                       "--stage1-threshold", "0.3", "--stage2-threshold", "0.4",
                       "--chunk-size", "2", capsys=capsys)

    healthy, flaky = FakeServer(), FakeServer(down_after=3)
    try:
        code, out, err = run(healthy, "clean")
        assert code == 0, err
        summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
        assert summary["llm_calls"] > 6 and summary["failed"] == 1  # broken.txt, unreadable
        code, out, err = run(flaky, "faulty")  # the server goes down after 3 requests
        assert code == 1, err
        assert "no LLM server answered" in err and "the same command continues" in err
        assert "Traceback" not in err and out == ""
        parts = sorted((tmp_path / "faulty" / "parts").glob("*.jsonl"))
        assert 0 < len(parts) < len(list((tmp_path / "clean" / "parts").glob("*.jsonl")))
        records = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
        assert all(r["status"] != "failed" for r in records)  # nobody's fault: none recorded
        assert not (tmp_path / "faulty" / "summary.json").exists()
        flaky.down_after = None  # the server is back
        code, out, err = run(flaky, "faulty")
        assert code == 0, err
        same_outputs(tmp_path / "clean", tmp_path / "faulty")
    finally:
        healthy.close()
        flaky.close()


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of a writer under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*tmp*"))


def test_a_write_that_fails_part_way_leaves_the_old_output_and_no_temporary_file(tmp_path):
    from pipeline.documents import Document, Span
    from pipeline.writers import write_brat, write_jsonl, write_tsv

    good = Document("a", "fiebre alta", spans=[Span("a", "SYMPTOM", 0, 6)])
    bad = Document("b", "tos", spans=[Span("b", "SYMPTOM", 2, 2)])  # empty: cannot be written

    class Unreadable(Exception):
        pass

    def docs_then(error):
        yield good
        raise error

    for write, name in ((write_tsv, "o.tsv"), (write_jsonl, "o.jsonl"), (write_brat, "brat")):
        write([good], tmp_path / name)
        before = {p: p.read_bytes() for p in sorted((tmp_path / name).rglob("*"))
                  if p.is_file()} if name == "brat" else (tmp_path / name).read_bytes()
        with pytest.raises((ValueError, Unreadable)):
            write([good, bad] if write is write_tsv else docs_then(Unreadable()),
                  tmp_path / name)
        after = {p: p.read_bytes() for p in sorted((tmp_path / name).rglob("*"))
                 if p.is_file()} if name == "brat" else (tmp_path / name).read_bytes()
        assert after == before, name
    assert leftovers(tmp_path) == []
    with pytest.raises(PipelineError, match="is a folder; give the name of a file"):
        write_tsv([good], tmp_path / "brat")
    assert leftovers(tmp_path) == []


def test_outputs_that_cannot_be_written_are_refused_before_the_work(
        tmp_path, tiny_ensemble, capsys):
    corpus = make_corpus(tmp_path / "corpus", n=4, broken=False)
    (corpus / "doc03.ann").write_text("T1\tDISEASE 0 400\tx\n")  # the last document is bad
    code, _, err = run_cli("convert", "--input", corpus, "--output", tmp_path / "o.tsv",
                           capsys=capsys)
    assert code == 2 and "doc03.ann:1" in err
    code, _, err = run_cli("convert", "--input", corpus, "--output", tmp_path / "brat",
                           "--format", "brat", capsys=capsys)
    assert code == 2 and "doc03.ann:1" in err
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.tsv").exists()
    assert not (tmp_path / "brat").exists()  # no partial folder
    (tmp_path / "folder").mkdir()
    code, _, err = run_cli("convert", "--input", corpus, "--output", tmp_path / "folder",
                           "--lenient", capsys=capsys)
    assert code == 2 and f"{tmp_path / 'folder'} is a folder; give the name of a file" in err
    common = ("--ensemble", tiny_ensemble, "--gold", corpus, "--cache-dir", tmp_path / "cache")
    code, _, err = run_cli("tune", *common, "--out", tmp_path / "folder", capsys=capsys)
    assert code == 2 and "is a folder; give the name of a file" in err
    assert "tuning on" not in err  # refused before any work
    (tmp_path / "file").write_text("")
    (tmp_path / "th.json").write_text("{}")
    code, _, err = run_cli("ablate", *common, "--out", tmp_path / "file", "--thresholds",
                           tmp_path / "th.json", capsys=capsys)
    assert code == 2 and "is a file; give the name of a folder" in err
    code, _, err = run_cli("run", "--ensemble", tiny_ensemble, "--input", corpus,
                           "--output", tmp_path / "file", capsys=capsys)
    assert code == 2 and "is a file; give the name of a folder" in err
    (tmp_path / "no-ensemble").mkdir()  # a run refused inside its lock leaves no folder
    code, _, err = run_cli("run", "--ensemble", tmp_path / "no-ensemble", "--input", corpus,
                           "--output", tmp_path / "new", capsys=capsys)
    assert code == 2 and "no ensemble manifest" in err and not (tmp_path / "new").exists()


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys (Linux)")
def test_tune_into_a_read_only_folder_is_refused_before_tuning(tmp_path, tiny_ensemble, capsys):
    corpus = make_corpus(tmp_path / "corpus", n=4, broken=False)
    code, _, err = run_cli("tune", "--ensemble", tiny_ensemble, "--gold", corpus,
                           "--cache-dir", tmp_path / "cache", "--out", "/sys/thresholds.json",
                           capsys=capsys)
    if code == 0:
        pytest.skip("/sys is writable here")
    assert code == 1 and "tuning on" not in err and "error: " in err and "/sys" in err
