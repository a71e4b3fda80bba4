from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError, ReadReport
from pipeline.metrics import evaluate
from pipeline.predict import char_probabilities, propose
from pipeline.readers import open_corpus
from pipeline.run import run_pipeline
from pipeline.settings import RunConfig, run_record
from pipeline.thresholds import Thresholds
from pipeline.tune import collect, tune_class
from stage1_ensemble.ensemble import Ensemble
from tests.tiny_models import SENTENCES

GOLD = ["diabetes mellitus", "neumonía"]


def make_corpus(folder: Path, n: int = 12, broken: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = SENTENCES[i % 2] + (" " + SENTENCES[(i + 1) % 2]) * (i % 3)
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
        m = GOLD[i % 2]
        s = text.index(m)
        (folder / f"doc{i:02d}.ann").write_text(f"T1\tDISEASE {s} {s + len(m)}\t{m}\n")
    (folder / "empty.txt").write_text("  \n")
    if broken:
        (folder / "broken.txt").write_bytes(b"fiebre \xff\xfe alta")
    return folder


def run(tmp, ens_dir, scorer=None, out="out", th=None, **kw):
    ens = Ensemble.load(ens_dir)
    report = ReadReport()
    docs = open_corpus(tmp / "corpus", lenient=True, report=report, classes=("DISEASE",))
    th = th or Thresholds.uniform(0.5, 0.5)
    shard = kw.get("shard", (0, 1))
    formats = kw.pop("formats", ("tsv", "jsonl", "brat"))
    config = RunConfig(output={"formats": sorted(formats), "shard": f"{shard[0]}/{shard[1]}",
                               "chunk_size": 4})
    settings = run_record(config, ensemble=ens, scorer=scorer, thresholds=th,
                          input=kw.pop("input", tmp / "corpus"))
    return run_pipeline(docs, out=tmp / out, ensemble=ens, scorer=scorer, thresholds=th,
                        settings=settings, formats=formats, chunk_size=4,
                        unreadable=report.failed_documents, **kw)


def test_run_accounts_for_every_document(tmp_path, tiny_ensemble):
    make_corpus(tmp_path / "corpus")
    summary = run(tmp_path, tiny_ensemble)
    assert (summary.written, summary.empty) == (12, 1)
    assert [i for i, _ in summary.failed] == ["broken"]
    assert "not UTF-8" in summary.failed[0][1]
    rows = (tmp_path / "out" / "predictions.tsv").read_text().splitlines()
    mentions = {r.split("\t")[4] for r in rows[1:]}
    assert mentions == set(GOLD)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failed"] == 1
    assert (tmp_path / "out" / "brat" / "doc00.ann").exists()


def test_a_run_folder_reads_as_its_predictions(tmp_path, tiny_ensemble):
    from pipeline.corpus import load_spans
    from pipeline.errors import CorpusError

    make_corpus(tmp_path / "corpus", n=3, broken=False)
    run(tmp_path, tiny_ensemble, out="both", formats=("jsonl", "tsv"))
    run(tmp_path, tiny_ensemble, out="tsv", formats=("tsv",))
    spans, langs = load_spans(tmp_path / "both")
    assert spans and (spans, langs) == load_spans(tmp_path / "both" / "predictions.jsonl")
    assert load_spans(tmp_path / "tsv")[0] == load_spans(tmp_path / "tsv" / "predictions.tsv")[0]
    assert sorted(s.doc_id for s in spans) == sorted(s.doc_id for s in load_spans(
        tmp_path / "tsv")[0])
    assert [d.id for d in open_corpus(tmp_path / "both")] == ["doc00", "doc01", "doc02"]
    # a corpus folder a run wrote into (--output the same as --input) stays a corpus
    run(tmp_path, tiny_ensemble, out="corpus", formats=("jsonl",))
    assert (tmp_path / "corpus" / "run.json").exists()
    assert all(d.source.endswith(".txt") for d in open_corpus(tmp_path / "corpus"))
    (tmp_path / "both" / "predictions.jsonl").unlink()
    (tmp_path / "both" / "predictions.tsv").unlink()  # as a run killed before its end
    with pytest.raises(CorpusError, match="a `pipeline run` output without predictions"):
        load_spans(tmp_path / "both")


def test_output_folder_with_other_settings_is_refused(tmp_path, tiny_ensemble):
    make_corpus(tmp_path / "corpus", n=2, broken=False)
    run(tmp_path, tiny_ensemble)
    with pytest.raises(PipelineError, match=r"holds a run with other settings \(resolved\."
                                            r"thresholds.default.stage1\)"):
        run(tmp_path, tiny_ensemble, th=Thresholds.uniform(0.7))

    # other output formats only: the parts are reused and the new files assembled from them
    run(tmp_path, tiny_ensemble, out="formats", formats=("tsv",))
    assert not (tmp_path / "formats" / "brat").exists()
    parts = {p: p.stat().st_mtime_ns for p in (tmp_path / "formats" / "parts").iterdir()}

    class NoModels:  # any call to the models would fail
        identity = Ensemble.load(tiny_ensemble).identity
        classes = ["DISEASE"]

    summary = run_pipeline(open_corpus(tmp_path / "corpus", classes=("DISEASE",)),
                           out=tmp_path / "formats", ensemble=NoModels(), thresholds=
                           Thresholds.uniform(0.5, 0.5), formats=("tsv", "brat"), chunk_size=4,
                           settings=with_formats(tmp_path / "formats", ["brat", "tsv"]))
    assert summary.written == 2 and len(list((tmp_path / "formats" / "brat").glob("*.ann"))) == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "formats" / "parts").iterdir()} == parts
    record = json.loads((tmp_path / "formats" / "run.json").read_text())
    assert record["config"]["output"]["formats"] == ["brat", "tsv"]


def with_formats(out: Path, formats: list[str]) -> dict:
    record = json.loads((out / "run.json").read_text())
    record["config"]["output"]["formats"] = formats
    return record


def test_texts_with_unicode_line_separators_survive_the_part_files(tmp_path, tiny_ensemble):
    make_corpus(tmp_path / "corpus", n=2, broken=False)
    text = SENTENCES[0] + "\u2028" + SENTENCES[1] + "\x85\u2029fin"  # no line ends for JSON
    (tmp_path / "corpus" / "sep.txt").write_text(text, encoding="utf-8")
    first = run(tmp_path, tiny_ensemble).as_dict()
    again = run(tmp_path, tiny_ensemble).as_dict()  # every part read back
    first.pop("seconds"), again.pop("seconds")
    assert first == again and first["written"] == 3 and first["failed"] == 0
    records = [json.loads(line) for line in
               (tmp_path / "out" / "predictions.jsonl").read_text().split("\n") if line]
    (sep,) = [r for r in records if r["id"] == "sep"]
    assert sep["text"] == text and [text[s["start"]:s["end"]] for s in sep["spans"]] == GOLD


def test_rerank_keeps_spans_above_the_stage2_threshold(tmp_path, tiny_ensemble, tiny_llm_dir):
    from stage2_rerank import load_scorer

    make_corpus(tmp_path / "corpus", n=4, broken=False)
    scorer = load_scorer("hf", tiny_llm_dir)
    summary = run(tmp_path, tiny_ensemble, scorer=scorer, th=Thresholds.uniform(0.5, 0.0))
    assert summary.llm_calls == summary.candidates > 0 and summary.kept == summary.candidates
    spans = [s for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
             for s in json.loads(line)["spans"]]
    scores = [s["stage2_score"] for s in spans]
    assert all(0.0 <= p <= 1.0 for p in scores)
    cut = sorted(scores)[len(scores) // 2]
    summary = run(tmp_path, tiny_ensemble, scorer=scorer, out="out2",
                  th=Thresholds.uniform(0.5, cut))
    assert summary.kept == sum(p >= cut for p in scores)
    # what the judge turned down is in the parts, with its scores (for pipeline report)
    from pipeline.report import dropped_candidates

    dropped = dropped_candidates(tmp_path / "out2")
    assert len(dropped) == summary.candidates - summary.kept > 0
    assert all(d.stage2_score < cut for d in dropped)
    routed = Thresholds.model_validate({"default": {"stage1": 0.5, "stage2": 1.0, "route": 0.0}})
    summary = run(tmp_path, tiny_ensemble, scorer=scorer, out="out3", th=routed)
    assert summary.llm_calls == 0 and summary.kept == summary.candidates


def test_run_counts_candidates_too_long_for_the_llm(tmp_path, tiny_ensemble, tiny_llm_dir):
    from stage2_rerank import load_scorer

    make_corpus(tmp_path / "corpus", n=4, broken=False)
    scorer = load_scorer("hf", tiny_llm_dir)
    lengths = []
    real = scorer.backend.score_prompts
    scorer.backend.score_prompts = lambda ps, y, n: lengths.extend(len(p.ids) for p in ps) or \
        real(ps, y, n)
    th = Thresholds.uniform(0.5, 1e-9)
    assert run(tmp_path, tiny_ensemble, scorer=scorer, th=th).too_long == 0
    # the longest prompts no longer fit: those candidates are dropped unasked, and counted
    asked = list(lengths)
    scorer.backend.max_prompt_tokens = max(asked) - 1
    over = asked.count(max(asked))
    first = run(tmp_path, tiny_ensemble, scorer=scorer, out="short", th=th)
    assert first.too_long == over and first.kept == len(asked) - over
    assert len(lengths) == 2 * len(asked) - over  # those were not sent
    assert json.loads((tmp_path / "short" / "summary.json").read_text())["too_long"] == over
    again = run(tmp_path, tiny_ensemble, scorer=scorer, out="short", th=th)  # from its parts
    assert again.too_long == over and again.kept == first.kept


def test_shards_together_equal_one_run(tmp_path, tiny_ensemble):
    import shutil

    from pipeline.run import merge_shards

    make_corpus(tmp_path / "corpus")  # with an unreadable document: one shard reports it
    full_summary = run(tmp_path, tiny_ensemble, out="full").as_dict()
    assert full_summary["failed"] == 1
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i in range(3):
        run(tmp_path, tiny_ensemble, out=f"shard{i}", shard=(i, 3))
    summary = merge_shards(tmp_path / "merged", shards, ["tsv", "jsonl"])
    full = (tmp_path / "full" / "predictions.tsv").read_text().splitlines()
    merged = (tmp_path / "merged" / "predictions.tsv").read_text().splitlines()
    assert merged[0] == full[0] and sorted(merged[1:]) == sorted(full[1:])
    # the documents in id order, each record as the single run wrote it
    lines = {name: (tmp_path / name / "predictions.jsonl").read_text().splitlines()
             for name in ("full", "merged")}
    ids = [json.loads(line)["id"] for line in lines["merged"]]
    assert ids == sorted(ids) and len(ids) > 3
    assert sorted(lines["full"], key=lambda line: json.loads(line)["id"]) == lines["merged"]
    sizes = [len(list((tmp_path / f"shard{i}" / "parts").glob("*"))) for i in range(3)]
    assert all(s >= 1 for s in sizes)
    assert json.loads((tmp_path / "merged" / "summary.json").read_text()) == summary
    for key in ("written", "empty", "failed", "failures", "candidates", "kept_spans"):
        assert summary[key] == full_summary[key], key

    # what cannot be merged is refused, naming the problem
    run(tmp_path, tiny_ensemble, out="other", shard=(2, 3), th=Thresholds.uniform(0.7))
    run(tmp_path, tiny_ensemble, out="elsewhere", shard=(2, 3),
        input=tmp_path / "another-corpus")
    shutil.copytree(shards[1], tmp_path / "unfinished")
    (tmp_path / "unfinished" / "summary.json").unlink()
    for folders, problem in (
            (shards[:2], "shards of /3: missing: 2"),
            (shards + shards[2:], "given twice: 2"),
            ([shards[0], tmp_path / "full"], "split the corpus in different ways"),
            (shards[:2] + [tmp_path / "other"], r"\(resolved.thresholds.default.stage1\)"),
            ([shards[0], tmp_path / "unfinished", shards[2]], "that run has not finished"),
            ([shards[0], tmp_path / "corpus"], "not the output of `pipeline run`"),
            (shards[:2] + [tmp_path / "elsewhere"], r"\(resolved.input\)")):
        with pytest.raises(PipelineError, match=problem):
            merge_shards(tmp_path / "refused", folders, ["tsv"])
    assert not (tmp_path / "refused").exists()
    # a merge into one of its shards would later be merged again, its spans twice
    for out, where in ((shards[0], "is the shard folder"), (shards[1] / "m", "is inside")):
        with pytest.raises(PipelineError, match=where):
            merge_shards(out, shards, ["tsv"])
    assert not (shards[1] / "m").exists()


HOLD = """import sys, time
from pipeline.writers import folder_lock
with folder_lock(sys.argv[1], "test job"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_folder_in_use_by_another_process_is_refused_until_that_process_ends(tmp_path,
                                                                               tiny_ensemble):
    from pipeline.run import merge_shards
    from pipeline.training import train_ensemble
    from pipeline.writers import folder_lock

    make_corpus(tmp_path / "corpus", n=2, broken=False)
    run(tmp_path, tiny_ensemble, out="done")
    holders = {}
    try:
        for name in ("out", "merged", "ensemble"):
            holders[name] = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / name)],
                                             stdout=subprocess.PIPE, text=True)
            assert holders[name].stdout.readline().strip() == "held"
        in_use = r"{} is in use by test job \(process {}\); wait for it to finish"
        with pytest.raises(PipelineError, match=in_use.format("out", holders["out"].pid)):
            run(tmp_path, tiny_ensemble)
        assert not (tmp_path / "out" / "run.json").exists()
        with pytest.raises(PipelineError, match=in_use.format("merged", holders["merged"].pid)):
            merge_shards(tmp_path / "merged", [tmp_path / "done"], ["tsv"])
        with pytest.raises(PipelineError, match=in_use.format("ensemble",
                                                              holders["ensemble"].pid)):
            train_ensemble([], out=tmp_path / "ensemble", encoders=["any"])
    finally:
        for proc in holders.values():
            proc.kill()  # no clean-up of its own: the system releases the lock
            proc.wait()
    assert run(tmp_path, tiny_ensemble).written == 2
    assert merge_shards(tmp_path / "merged", [tmp_path / "done"], ["tsv"])["written"] == 2
    with folder_lock(tmp_path / "out", "one"), folder_lock(tmp_path / "out", "two"):
        pass  # one process may take its own folder again


def test_killed_runs_resume_to_identical_outputs(tmp_path, tiny_ensemble):
    """SIGKILL `pipeline run` at random moments; the finished outputs equal a clean run's."""
    make_corpus(tmp_path / "corpus", n=150)
    cmd = [sys.executable, "-m", "pipeline", "run", "--ensemble", str(tiny_ensemble),
           "--input", str(tmp_path / "corpus"), "--stage1-threshold", "0.5", "--chunk-size", "2",
           "--format", "tsv,jsonl,brat"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    clean = subprocess.run(cmd + ["--output", str(tmp_path / "clean"),
                                  "--cache-dir", str(tmp_path / "cache_clean")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    total = len(list((tmp_path / "clean" / "parts").glob("*.jsonl")))
    rng = random.Random(3)
    kills, parts_seen = 0, []
    killed = cmd + ["--output", str(tmp_path / "killed"), "--cache-dir", str(tmp_path / "cache")]
    parts = tmp_path / "killed" / "parts"

    def written() -> int:
        return len(list(parts.glob("*.jsonl"))) if parts.exists() else 0

    # Kill as soon as the run has written a randomly chosen number of parts, so the kills
    # land at random places in the work whatever the machine's speed (a wall-clock delay
    # either never reaches the writing or outlasts a fast run).
    while kills < 4 and written() < total - 2:
        done = written()
        target = done + rng.randint(1, max(1, (total - 2 - done) // 2))  # leave work for more
        proc = subprocess.Popen(killed, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and written() < target:
            time.sleep(0.002)
        if proc.poll() is not None:
            break  # it finished before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        parts_seen.append(written())
    final = subprocess.run(killed, env=env,
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 2 and parts_seen == sorted(parts_seen), parts_seen
    for name in ("predictions.tsv", "predictions.jsonl", "summary.json"):
        a = (tmp_path / "clean" / name).read_bytes()
        b = (tmp_path / "killed" / name).read_bytes()
        if name == "summary.json":  # timings differ; the accounting must not
            a, b = (json.loads(x) for x in (a, b))
            a.pop("seconds"), b.pop("seconds")
        assert a == b, name
    for ann in (tmp_path / "clean" / "brat").glob("*.ann"):
        assert ann.read_bytes() == (tmp_path / "killed" / "brat" / ann.name).read_bytes()


def interrupted(out: Path, last_parts: int = 1) -> None:
    """Make a finished run look like one killed before its last ``last_parts`` parts."""
    parts = sorted((out / "parts").glob("*.jsonl"))
    for part in parts[len(parts) - last_parts:]:
        part.unlink()
    (out / "summary.json").unlink()


@pytest.mark.parametrize("change", ["added", "edited", "removed", "truncated", "appended"])
def test_resuming_after_the_corpus_changed_is_refused(tmp_path, tiny_ensemble, change):
    """Parts kept from before a crash must hold the documents the corpus gives now: one
    document added in front used to shift every chunk by one, so that the resumed run wrote
    one document twice and lost the new one, with totals that looked right."""
    corpus = make_corpus(tmp_path / "corpus", broken=False)  # 13 documents: parts of 4
    run(tmp_path, tiny_ensemble)
    interrupted(tmp_path / "out", last_parts=0 if change == "appended" else 1)
    if change == "added":
        (corpus / "aaa.txt").write_text("Paciente con neumonía grave.")
        where = "000000.jsonl: its document 1 is 'doc00', and the corpus's is now 'aaa'"
    elif change == "edited":
        (corpus / "doc05.txt").write_text("Paciente con neumonía grave.")
        where = "000001.jsonl: document 'doc05' reads otherwise now"
    elif change == "removed":
        (corpus / "doc03.txt").unlink()
        where = "000000.jsonl: its document 4 is 'doc03', and the corpus's is now 'doc04'"
    elif change == "appended":  # to a finished run: it would have stayed unread
        (corpus / "zzz.txt").write_text("Paciente con neumonía grave.")
        where = "000003.jsonl: it holds 1 document, and the corpus now has 'zzz' next"
    else:  # the corpus now ends with the kept parts: the last one must not outlive it
        for name in ("doc08", "doc09", "doc10", "doc11", "empty"):
            (corpus / f"{name}.txt").unlink()
        where = "000002.jsonl: the corpus now ends before this part"
    with pytest.raises(PipelineError, match="the corpus has changed since this run began") as e:
        run(tmp_path, tiny_ensemble)
    assert where in str(e.value)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_an_unchanged_corpus_resumes_from_its_parts(tmp_path, tiny_ensemble):
    make_corpus(tmp_path / "corpus")
    first = run(tmp_path, tiny_ensemble).as_dict()
    before = (tmp_path / "out" / "predictions.tsv").read_bytes()
    interrupted(tmp_path / "out", last_parts=2)
    # a run killed while writing a part or an output leaves its temporary files behind
    stale = [tmp_path / "out" / "parts" / ".000005.jsonl.tmp4242",
             tmp_path / "out" / ".predictions.tsv.tmp4242"]
    for path in stale:
        path.write_text("half a part")
    seen = []
    again = run(tmp_path, tiny_ensemble, on_chunk=lambda s, n: seen.append(n)).as_dict()
    assert not any(path.exists() for path in stale)
    first.pop("seconds"), again.pop("seconds")
    assert again == first and (tmp_path / "out" / "predictions.tsv").read_bytes() == before
    assert sum(seen) == 13  # kept parts count in the progress too


def test_subsets_keep_the_translations_of_a_case_together(tmp_path):
    """`tune --subset 0/2` then `ablate --subset 1/2`: the shares went by document id, so
    that case12_en could tune the thresholds that case12_ro then evaluated."""
    from pipeline.cli.tune import gold_documents

    gold = tmp_path / "gold"
    gold.mkdir()
    for case in range(12):
        for lang in ("en", "ro", "es"):
            (gold / f"case{case:02d}_{lang}.txt").write_text("fiebre alta")
            (gold / f"case{case:02d}_{lang}.ann").write_text("T1\tSYMPTOM 0 6\tfiebre\n")
    shares = [{d.id for d in gold_documents(gold, f"{i}/2", ["SYMPTOM"])} for i in range(2)]
    assert shares[0].isdisjoint(shares[1]) and len(shares[0] | shares[1]) == 36
    cases = [{doc_id.rsplit("_", 1)[0] for doc_id in share} for share in shares]
    assert cases[0].isdisjoint(cases[1]) and all(cases)


def test_tuning_sweep_equals_the_metrics_and_ablation_runs(tmp_path, tiny_ensemble, tiny_llm_dir):
    from pipeline.ablate import ablate, markdown
    from stage2_rerank import load_scorer

    make_corpus(tmp_path / "corpus", n=6, broken=False)
    ens = Ensemble.load(tiny_ensemble)
    docs = list(open_corpus(tmp_path / "corpus", classes=("DISEASE",)))
    scorer = load_scorer("hf", tiny_llm_dir)
    sets = collect(docs, ens, scorer, t1_grid=(0.3, 0.5, 0.7))
    gold = [s for d in docs for s in d.spans]
    probs = char_probabilities(docs, ens)
    for t1 in (0.3, 0.5, 0.7):
        cands = [s for ss in propose(docs, probs, Thresholds.uniform(t1)) for s in ss]
        want = evaluate(gold, cands).pooled.as_dict(digits=None)
        got = sets["DISEASE"][t1].figures(np.ones(len(cands), dtype=bool))
        assert got["char_f1"] == pytest.approx(want["char_f1"]["f1"])
        assert got["strict_f1"] == pytest.approx(want["strict"]["f1"])
    result = tune_class(sets["DISEASE"], with_llm=True)
    assert result["reranked"]["char_f1"] >= result["stage1_only"]["char_f1"] - 1e-9
    th = Thresholds.model_validate({"classes": {"DISEASE": {
        k: result["reranked"][k] for k in ("stage1", "stage2", "route")}},
        "figures": {"DISEASE": result}})
    report = ablate(docs, ens, scorer, th)
    systems = {"ensemble@0.8", "ensemble@tuned", "reranked@tuned"}
    if result["reranked"]["route"]:
        systems.add("reranked@tuned, asked dropped")
    assert {c["system"] for c in report["costs"]} == systems
    assert "| reranked@tuned | DISEASE |" in markdown(report)
    # routed: the row without the judge keeps exactly the candidates at or above the route
    cands = [s for ss in propose(docs, probs, Thresholds.uniform(0.3)) for s in ss]
    route = float(np.median([s.stage1_score for s in cands]))
    above = [s for s in cands if s.stage1_score >= route]
    assert 0 < len(above) < len(cands)
    th = Thresholds.model_validate({"classes": {"DISEASE": {"stage1": 0.3, "stage2": 0.5,
                                                            "route": route}}})
    report = ablate(docs, ens, scorer, th)
    row = next(r for r in report["rows"] if r["system"] == "reranked@tuned, asked dropped"
               and r["class"] == "DISEASE" and r["language"] == "all")
    want = evaluate(gold, above).pooled.as_dict(digits=None)
    assert row["char_f1"] == pytest.approx(want["char_f1"]["f1"], abs=1e-4)  # 4 digits
    assert row["strict_tp"] == want["strict"]["tp"]


def test_a_class_without_gold_spans_or_hits_is_left_untuned_not_set_to_its_lowest_threshold():
    from pipeline.documents import Span
    from pipeline.tune import match, thresholds_from

    def sets_of(gold, cands):
        return {t1: match(gold, [c for c in cands if c.stage1_score >= t1])
                for t1 in (0.3, 0.5, 0.7)}

    def cands(label):  # (stage-1, stage-2) scores: the first is right, the second is not
        return [Span("d", label, 0, 5, 0.35, 0.9), Span("d", label, 9, 12, 0.9, 0.1)]

    gold = [Span("d", "DISEASE", 0, 5)]
    results = {"DISEASE": tune_class(sets_of(gold, cands("DISEASE"))),
               "SYMPTOM": tune_class(sets_of([], cands("SYMPTOM"))),
               "PROCEDURE": tune_class(sets_of([Span("d", "PROCEDURE", 20, 30)],
                                               cands("PROCEDURE")))}
    # every threshold scores 0 on SYMPTOM and PROCEDURE: the lowest would have won,
    # keeping everything
    assert results["SYMPTOM"] == {"untuned": "no gold span of the class in the tuning documents"}
    assert results["PROCEDURE"] == {"untuned": "char_f1 is 0 at every threshold: no candidate "
                                               "finds any of its 1 gold span"}
    assert results["DISEASE"]["reranked"]["char_f1"] == 1.0
    th = thresholds_from(results, "char_f1", ensemble="e", llm="m")
    assert list(th.classes) == ["DISEASE"] and th.of("SYMPTOM") == th.of("PROCEDURE") == th.default
    assert th.figures["SYMPTOM"] == results["SYMPTOM"]
    assert any("no thresholds for SYMPTOM" in p for p in th.unfit(["DISEASE", "SYMPTOM"], "e", "m"))


def test_tuning_asks_a_judge_only_where_it_helps():
    """The judge is wrong on confident candidates and right on uncertain ones: applied to
    all it only hurts (the best pair alone is t2 = 0), asked only below a routing threshold
    it removes the uncertain false positives. And a judge that adds nothing is not asked."""
    from pipeline.documents import Span
    from pipeline.tune import T2_GRID, match, thresholds_from

    gold = [Span("d", "DISEASE", 10 * i, 10 * i + 5) for i in range(6)]
    confident = [Span("d", "DISEASE", 10 * i, 10 * i + 5, 0.9, 0.1) for i in range(4)]
    uncertain = [Span("d", "DISEASE", 40, 45, 0.4, 0.8), Span("d", "DISEASE", 50, 55, 0.4, 0.7),
                 Span("d", "DISEASE", 70, 75, 0.4, 0.2), Span("d", "DISEASE", 80, 85, 0.4, 0.3)]
    cands = confident + uncertain
    sets = {t1: match(gold, [c for c in cands if c.stage1_score >= t1]) for t1 in (0.3, 0.5)}

    result = tune_class(sets)
    rr = result["reranked"]
    assert result["stage1_only"]["char_f1"] == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert rr["char_f1"] == 1.0 and rr["stage1"] == 0.3 and 0.4 < rr["route"] <= 0.9
    assert 0.3 < rr["stage2"] <= 0.7 and rr["llm_calls"] == 4 < rr["llm_calls_without_routing"]
    kept = [c for c in cands if c.stage1_score >= rr["route"] or c.stage2_score >= rr["stage2"]]
    assert evaluate(gold, kept).pooled.as_dict()["char_f1"]["f1"] == 1.0
    # without routing, the best the judge could do is nothing (keep all at t1 0.3)
    no_route = max(sets[0.3].figures(sets[0.3].s2 >= t2)["char_f1"] for t2 in T2_GRID)
    assert no_route == pytest.approx(result["stage1_only"]["char_f1"])
    assert no_route < rr["char_f1"]

    # stage 1 alone separates the uncertain ones by their span score: a floor between them
    # beats both stage-1 thresholds, and a judge that knows nothing is not asked
    useless = confident + [c.with_scores(stage1=0.45 if k < 2 else 0.35, stage2=0.5)
                           for k, c in enumerate(uncertain)]
    sets = {t1: match(gold, [c for c in useless if c.stage1_score >= t1]) for t1 in (0.3, 0.5)}
    result = tune_class(sets)
    own, rr = result["stage1_only"], result["reranked"]
    assert own["char_f1"] == 1.0 and own["stage1"] == 0.3 and 0.35 < own["floor"] <= 0.45
    assert rr["llm_calls"] == 0 and rr["route"] == 0.0 and rr["floor"] == own["floor"]
    th = thresholds_from({"DISEASE": result}, "char_f1")
    assert th.of("DISEASE").floor == own["floor"] and th.of("DISEASE").stage1 == 0.3


def test_a_judge_of_the_uncertain_band_is_asked_only_below_it(tmp_path, tiny_ensemble,
                                                               tiny_llm_dir):
    """max_route: only the candidates below it are scored, and no route above it (nor
    asking about all) is chosen, though asking about the confident ones would score more."""
    from pipeline.documents import Span
    from pipeline.tune import match, thresholds_from
    from stage2_rerank import load_scorer

    gold = [Span("d", "DISEASE", 10 * i, 10 * i + 5) for i in range(4)]
    # two confident false positives the judge knows, two uncertain ones it knows too
    wrong = [Span("d", "DISEASE", 100, 105, 0.9, 0.1), Span("d", "DISEASE", 110, 115, 0.9, 0.1),
             Span("d", "DISEASE", 120, 125, 0.4, 0.1), Span("d", "DISEASE", 130, 135, 0.4, 0.1)]
    right = [s.with_scores(stage1=0.9 if i < 2 else 0.4, stage2=0.9) for i, s in enumerate(gold)]

    def sets_of(cands, grid=(0.3,)):
        return {t1: match(gold, [c for c in cands if c.stage1_score >= t1]) for t1 in grid}

    free = tune_class(sets_of(right + wrong))["reranked"]
    assert free["char_f1"] == 1.0 and (free["route"] is None or free["route"] > 0.9)
    # as collect leaves them with max_route 0.5: no stage-2 score at or above it
    band = [c if c.stage1_score < 0.5 else dataclasses.replace(c, stage2_score=None)
            for c in right + wrong]
    result = tune_class(sets_of(band), max_route=0.5)
    rr = result["reranked"]
    assert rr["route"] is not None and 0.4 < rr["route"] <= 0.5 and rr["llm_calls"] == 4
    assert rr["char_f1"] == pytest.approx(2 * (4 / 6) * 1 / (4 / 6 + 1))  # the 2 confident stay
    assert max(max(row) for row in result["grid"]["values"]) == pytest.approx(rr["char_f1"])
    # a bound that is no grid value is tried itself (no grid value lies in (0.4, 0.41])
    assert tune_class(sets_of(band), max_route=0.41)["reranked"]["route"] == 0.41
    # every candidate below the bound: asked about all, written as the bound (not the lowest
    # route that asks about all, which would keep unasked what the judge learnt on)
    low = [c for c in band if c.stage1_score < 0.5]
    rr = tune_class(sets_of(low), max_route=0.75)["reranked"]
    assert rr["route"] == 0.75 and rr["llm_calls"] == 4 and rr["char_f1"] == pytest.approx(2 / 3)
    # above the bound nothing is asked: the heat map's row there is stage 1 alone
    result = tune_class(sets_of(band, (0.3, 0.6)), max_route=0.5)
    alone = sets_of(band, (0.6,))[0.6].figures(np.ones(4, dtype=bool))["char_f1"]
    assert result["grid"]["values"][1] == [round(alone, 4)] * len(result["grid"]["t2"])
    th = thresholds_from({"DISEASE": result, "SYMPTOM": {"untuned": "none"}}, "char_f1",
                         max_route=0.5)
    assert th.of("SYMPTOM").route == 0.5  # untuned: the default asks below the bound too

    # collect scores only the candidates below the bound
    make_corpus(tmp_path / "corpus", n=4, broken=False)
    ens = Ensemble.load(tiny_ensemble)
    docs = list(open_corpus(tmp_path / "corpus", classes=("DISEASE",)))
    s1 = collect(docs, ens, None, t1_grid=(0.3,))["DISEASE"][0.3].s1
    bound = float(np.median(s1))
    scorer = load_scorer("hf", tiny_llm_dir)
    cs = collect(docs, ens, scorer, t1_grid=(0.3,), max_route=bound)["DISEASE"][0.3]
    assert 0 < scorer.calls == int((cs.s1 < bound).sum()) < len(cs.s1)
    assert np.array_equal(np.isnan(cs.s2), cs.s1 >= bound)


def test_a_judge_that_wins_on_one_document_of_ten_is_not_confidently_better():
    """Paired bootstrap over the tuning documents: the per-document sums give the pooled
    figures back; a judge whose gain comes from one document of ten beats the ensemble in
    about 1 - 0.9**10 = 65% of resamples, and --min-confidence 0.9 keeps the ensemble."""
    from pipeline.documents import Span
    from pipeline.tune import bootstrap_confidence, match, thresholds_from

    docs = [f"d{i}" for i in range(10)]
    gold = [Span(d, "DISEASE", 0, 5) for d in docs]
    right = [Span(d, "DISEASE", 0, 5, 0.9, 0.9) for d in docs]
    # one false positive stage 1 cannot tell from the rest, which the judge rejects, and a
    # partial hit elsewhere, for the char metric
    cands = right + [Span("d0", "DISEASE", 20, 25, 0.9, 0.1), Span("d3", "DISEASE", 2, 9, 0.9, 0.9)]
    sets = {0.3: match(gold, cands)}
    cs = sets[0.3]
    for objective in ("char_f1", "strict_f1"):
        for kept in (np.ones(len(cands), dtype=bool), cs.s2 >= 0.5, cs.s1 > np.arange(12) / 12):
            hit, n_pred, recall_hit, n_gold = cs.doc_stats(kept, objective, docs).sum(axis=1)
            p, r = hit / n_pred, recall_hit / n_gold
            assert 2 * p * r / (p + r) == pytest.approx(cs.figures(kept)[objective])
    everything = (cs, np.ones(len(cands), dtype=bool))
    assert bootstrap_confidence(everything, everything, "char_f1") == 0.0  # never strictly
    judged = (cs, cs.s2 >= 0.5)  # drops the false positive of d0
    assert 0.55 < bootstrap_confidence(everything, judged, "strict_f1") < 0.75
    assert bootstrap_confidence(judged, everything, "strict_f1") == 0.0
    # tuning documents without a span of the class are resampled too (they weigh nothing)
    wider = match(gold, cands, docs + ["e1", "e2"])
    assert set(wider.doc_ids) == {*docs, "e1", "e2"}
    stats = wider.doc_stats(np.ones(len(cands), dtype=bool), "char_f1", ["e1", "e2", *docs])
    assert not stats[:, :2].any() and stats[:, 2:].all()
    assert 0.55 < bootstrap_confidence((wider, wider.s2 >= 0), (wider, wider.s2 >= 0.5),
                                       "strict_f1") < 0.75

    used = tune_class(sets, objective="strict_f1")
    assert used["reranked"]["llm_calls"] == 12 and 0.55 < used["reranked"]["confidence"] < 0.75
    assert used["reranked"]["strict_f1"] > used["stage1_only"]["strict_f1"]
    kept = tune_class(sets, objective="strict_f1", min_confidence=0.9)
    own = kept["stage1_only"]
    assert kept["reranked"]["llm_calls"] == 0 and kept["reranked"]["route"] == 0.0
    assert kept["reranked"]["strict_f1"] == own["strict_f1"] < used["reranked"]["strict_f1"]
    assert kept["reranked"]["confidence"] == used["reranked"]["confidence"]
    th = thresholds_from({"DISEASE": kept}, "strict_f1").of("DISEASE")
    assert (th.stage1, th.floor, th.stage2, th.route) == (own["stage1"], own["floor"], 0.0, 0.0)
    # sets at two stage-1 thresholds whose candidates lie in other documents: one universe
    extra = Span("e1", "DISEASE", 0, 4, 0.35, 0.2)
    two = {t1: match(gold, [c for c in [*cands, extra] if c.stage1_score >= t1], docs + ["e1"])
           for t1 in (0.3, 0.5)}
    assert two[0.3].doc_ids == two[0.5].doc_ids == tuple(sorted(docs + ["e1"]))
    assert 0.55 < tune_class(two, objective="strict_f1")["reranked"]["confidence"] < 0.75


def test_a_floor_drops_the_spans_whose_score_is_below_it():
    from pipeline.documents import Document

    doc = Document("d", "fiebre alta y tos seca", [])
    probs = np.zeros(len(doc.text))
    probs[0:6], probs[14:17] = 0.9, 0.5
    found = propose([doc], [{"SYMPTOM": probs}], Thresholds.uniform(0.4))[0]
    assert [(s.start, s.end) for s in found] == [(0, 6), (14, 17)]
    th = Thresholds.model_validate({"classes": {"SYMPTOM": {"stage1": 0.4, "floor": 0.6}}})
    assert [(s.start, s.end, s.stage1_score) for s in propose([doc], [{"SYMPTOM": probs}], th)[0]
            ] == [(0, 6, pytest.approx(0.9))]


def test_a_class_is_predicted_only_on_its_own_text(tmp_path, tiny_ensemble):
    from pipeline.documents import Document

    ens = Ensemble.load(tiny_ensemble)
    docs = [Document("c1", SENTENCES[0], lang="en", entity_class="DISEASE"),
            Document("c1", SENTENCES[0], lang="en", entity_class="SYMPTOM"),
            Document("c2", SENTENCES[0])]
    probs = char_probabilities(docs, ens)
    assert [sorted(p) for p in probs] == [["DISEASE"], [], ["DISEASE"]]
    spans = propose(docs, probs, Thresholds.uniform(0.5))
    assert spans[1] == [] and [docs[0].text[s.start:s.end] for s in spans[0]] == [GOLD[0]]


def test_recognizer_gives_what_pipeline_run_writes(tmp_path, tiny_ensemble):
    from pipeline import Document, Recognizer

    make_corpus(tmp_path / "corpus", n=6, broken=False)
    run(tmp_path, tiny_ensemble)
    written = {r["id"]: [(s["label"], s["start"], s["end"]) for s in r["spans"]] for r in
               map(json.loads, (tmp_path / "out" / "predictions.jsonl").read_text().splitlines())}

    rec = Recognizer.load(tiny_ensemble, stage1_threshold=0.5, batch_size=4)
    docs = list(open_corpus(tmp_path / "corpus", classes=("DISEASE",)))
    found = rec(docs)
    assert {d.id: [(s.label, s.start, s.end) for s in spans] for d, spans in zip(docs, found)
            } == {d.id: written.get(d.id, []) for d in docs}

    # plain strings: named by position; one text gives one list; whitespace gives nothing
    one = rec(SENTENCES[0])
    assert [(s.doc_id, SENTENCES[0][s.start:s.end]) for s in one] == [("0", GOLD[0])]
    assert one[0].stage1_score > 0.5 and one[0].stage2_score is None
    assert rec([SENTENCES[1], " \n", ""]) == [rec(SENTENCES[1]), [], []]
    # an own-class document of another class is not predicted
    assert rec(Document("x", SENTENCES[0], entity_class="SYMPTOM")) == []
    with pytest.raises(TypeError, match="text 1 is a bytes"):
        rec(["fine", b"not text"])
    # file names where loaded objects belong: pointed to load()
    for kw in ({"ensemble": str(tiny_ensemble)}, {"ensemble": None},
               {"ensemble": rec.ensemble, "scorer": "models/llm"},
               {"ensemble": rec.ensemble, "thresholds": tmp_path / "thresholds.json"}):
        with pytest.raises(TypeError, match=f"{next(reversed(kw))} is a .*Recognizer.load"):
            Recognizer(**kw)


def test_recognizer_thresholds_trade_precision_for_recall_from_cache(tmp_path, tiny_ensemble,
                                                                       tiny_llm_dir):
    from pipeline import Recognizer

    rec = Recognizer.load(tiny_ensemble, tiny_llm_dir, backend="hf", cache_dir=tmp_path / "c",
                          stage1_threshold=0.5, stage2_threshold=0.0)
    texts = [SENTENCES[0], SENTENCES[1], SENTENCES[0] + " " + SENTENCES[1]]
    first = rec.recognise(texts)
    assert all([s.key for s in kept] == [s.key for s in candidates] for candidates, kept in first)
    scores = sorted(s.stage2_score for _, kept in first for s in kept)
    assert len(scores) >= 3 and all(0.0 <= p <= 1.0 for p in scores)

    real, calls = rec.ensemble, rec.scorer.calls

    class CachedOnly:  # the same ensemble, but running it fails
        identity, classes = real.identity, real.classes

        def char_probs(self, *args):
            raise AssertionError("the ensemble ran again")

    rec.ensemble = CachedOnly()
    cut = scores[len(scores) // 2]
    rec.thresholds = Thresholds.uniform(0.5, cut)
    kept = [s for spans in rec(texts) for s in spans]
    assert sorted(s.stage2_score for s in kept) == [p for p in scores if p >= cut]
    assert rec.scorer.calls == calls  # every score came from the cache


def test_thresholds_warn_when_tuned_for_another_ensemble_or_lacking_a_class(tiny_ensemble,
                                                                            caplog):
    from pipeline import Recognizer
    from pipeline.tune import thresholds_from

    results = {"DISEASE": {"stage1_only": {"stage1": 0.4, "char_f1": 0.5}}}
    ens = Ensemble.load(tiny_ensemble)
    tuned = thresholds_from(results, "char_f1", ensemble=ens.identity, llm=None)
    again = Thresholds.model_validate_json(tuned.model_dump_json())  # as a file gives it
    assert again.unfit(ens.classes, ens.identity, None) == []
    other = thresholds_from(results, "char_f1", ensemble="another", llm="smollm2@1")
    problems = other.unfit(["DISEASE", "SYMPTOM"], ens.identity, None)
    assert problems == ["no thresholds for SYMPTOM: the default (stage 1 0.6, stage 2 0.5) applies",
                        f"tuned for ensemble another, used with {ens.identity}",
                        "tuned with LLM smollm2@1, used with none"]
    assert Thresholds.uniform(0.5).unfit(["DISEASE"], "x", "y") == []  # nothing was tuned
    # a judge of the band below 0.5, asked above it
    routed = Thresholds.model_validate({"classes": {"DISEASE": {"route": 0.5},
                                                    "SYMPTOM": {"route": 0.7}}})
    assert routed.unfit(["DISEASE", "SYMPTOM"], "x", "judge", band=0.5) == [
        "the judge learnt on candidates of stage-1 score below 0.5 only, and these thresholds "
        "ask it about SYMPTOM up to 0.7"]
    assert routed.unfit(["DISEASE", "SYMPTOM"], "x", None, band=0.5) == []  # no judge asked
    assert "PROCEDURE at any score" in routed.unfit(["PROCEDURE"], "x", "judge", band=0.5)[0]
    with caplog.at_level("WARNING"):
        Recognizer.load(tiny_ensemble, thresholds=other)
    assert f"tuned for ensemble another, used with {ens.identity}" in caplog.text
