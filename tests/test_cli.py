from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def pipeline(*args: str) -> subprocess.CompletedProcess:
    """The command, in this process (``tests.cli_inprocess``), as a finished process."""
    from tests.cli_inprocess import run_cli

    code, out, err = run_cli(*args)
    return subprocess.CompletedProcess(["pipeline", *args], code, out, err)


def test_evaluate_json_has_the_official_keys(tmp_path):
    gold = tmp_path / "g.tsv"
    pred = tmp_path / "p.tsv"
    gold.write_text("filename\tlabel\tstart_span\tend_span\ttext\nd\tDISEASE\t0\t6\tx\n"
                    "d\tSYMPTOM\t8\t10\ty\n")
    pred.write_text("filename\tlabel\tstart_span\tend_span\ttext\nd\tDISEASE\t0\t3\tx\n"
                    "d\tDISEASE\t3\t6\tx\n")
    out = pipeline("evaluate", "--gold", str(gold), "--pred", str(pred), "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r["strict"]) == {"precision", "recall", "f1", "tp", "fp", "fn"}
    assert set(r["char_f1"]) == {"precision", "recall", "f1", "n_gold", "n_pred"}
    assert r["char_f1"]["precision"] == 0.6667
    assert [s["value"] for s in r["slices"]] == ["DISEASE", "SYMPTOM"]
    # the table, piped to a file, keeps every figure whole
    out = pipeline("evaluate", "--gold", str(gold), "--pred", str(pred))
    assert out.returncode == 0, out.stderr
    assert "class=DISEASE" in out.stdout and "0.6667" in out.stdout and "…" not in out.stdout
    assert "warning" not in out.stderr
    renamed = tmp_path / "renamed.tsv"  # ids that name no gold document: said, and scored
    renamed.write_text(pred.read_text().replace("\nd\t", "\nd.txt\t"))
    out = pipeline("evaluate", "--gold", str(gold), "--pred", str(renamed), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["strict"]["fp"] == 2
    assert "no document of" in out.stderr and "predicted like 'd.txt'" in out.stderr


def test_bad_input_is_one_line_without_traceback(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("fiebre")
    (tmp_path / "c" / "a.ann").write_text("T1\tSINTOMA 0 9\tfiebre\n")
    out = pipeline("convert", "--input", str(tmp_path / "c"), "--output", str(tmp_path / "o.tsv"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "a.ann:1: span 0-9 lies outside the text" in out.stderr
    out = pipeline("run", "--ensemble", str(tmp_path / "none"), "--input", str(tmp_path / "c"),
                   "--output", str(tmp_path / "out"))
    assert out.returncode == 2 and "'--ensemble': dir" in out.stderr and "does not exist" in out.stderr
    (tmp_path / "none").mkdir()  # a folder, but no ensemble
    out = pipeline("run", "--ensemble", str(tmp_path / "none"), "--input", str(tmp_path / "c"),
                   "--output", str(tmp_path / "out"))
    assert out.returncode == 2 and "no ensemble manifest" in out.stderr
    assert "Traceback" not in out.stderr
    # what needs no model is checked before any loads (the ensemble here is no ensemble),
    # and a refused run leaves no output folder behind
    th = tmp_path / "thresholds.json"
    th.write_text('{"default": {"stage1": 2}}')
    for options, problem in (
            (["--input", str(tmp_path / "absent")], "absent: does not exist"),
            (["--input", str(tmp_path / "o.tsv")], "needs the folder of its texts"),
            (["--input", str(tmp_path / "c"), "--thresholds", str(th)], "not a valid thresholds")):
        (tmp_path / "o.tsv").write_text("filename\tlabel\tstart_span\tend_span\ttext\n")
        out = pipeline("run", "--ensemble", str(tmp_path / "none"), "--output",
                       str(tmp_path / "refused"), *options)
        assert out.returncode == 2 and problem in out.stderr, out.stderr
        assert not (tmp_path / "refused").exists()
    th.write_text("{}")  # the defaults
    for command in ("tune", "ablate"):
        out = pipeline(command, "--ensemble", str(tmp_path / "none"), "--gold",
                       str(tmp_path / "absent"), "--out", str(tmp_path / "t"),
                       *(["--thresholds", str(th)] * (command == "ablate")))
        assert out.returncode == 2 and "absent: does not exist" in out.stderr, out.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_what_the_machine_refuses_is_one_line_without_traceback(tmp_path):
    """A folder that cannot be made or a full disk is no bug of ours: one line naming it."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("fiebre alta")
    (tmp_path / "c" / "a.ann").write_text("T1\tSINTOMA 0 6\tfiebre\n")
    out = pipeline("convert", "--input", str(tmp_path / "c"), "--output", "/dev/null/out",
                   "--format", "brat")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr  # a wrong name
    assert out.stderr.strip().splitlines() == ["error: /dev/null is a file; it cannot hold "
                                               "/dev/null/out"]
    with open("/dev/full", "w") as full:  # stdout a full device: a process of its own
        out = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "--gold",
                              str(tmp_path / "c"), "--pred", str(tmp_path / "c"), "--json"],
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: [Errno 28] No space left on device"


def test_a_cache_that_cannot_be_opened_is_one_line_naming_it(tmp_path, tiny_ensemble):
    """An ensemble in a read-only model store keeps its default cache folder unwritable;
    SQLite then says "unable to open database file", which named no file and came as a
    traceback. (A folder where the database file belongs stands in for that here.)"""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("fiebre")
    blocked = tmp_path / "cache" / "charprobs.sqlite"
    blocked.mkdir(parents=True)
    out = pipeline("run", "--ensemble", str(tiny_ensemble), "--input", str(tmp_path / "c"),
                   "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: {blocked}: unable to open database file (a cache that cannot be read may be "
        "deleted: it only saves work; --cache-dir puts the caches in another folder)")


def test_bad_config_files_are_one_line_naming_file_and_key(tmp_path, tiny_ensemble):
    bad = tmp_path / "inference.json"
    bad.write_text('{"batch_size": "many", "bach_size": 4}')
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("fiebre")
    out = pipeline("run", "--ensemble", str(tiny_ensemble), "--input", str(tmp_path / "c"),
                   "--output", str(tmp_path / "out"), "--inference-config", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert f"{bad}: not a valid InferenceConfig" in line
    assert "batch_size: Input should be a valid integer" in line and "bach_size: Extra" in line
    train_cfg = tmp_path / "train.json"
    train_cfg.write_text('{"learning_rate": 1e-5, "max_step": 10}')
    out = pipeline("train", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "e"),
                   "--encoder", "x", "--config", str(train_cfg))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{train_cfg}: not a valid TrainConfig: max_step: Extra inputs" in out.stderr
    for text, problem in (('{"default": {"stage1": 2}}', "default.stage1: Input should be less"),
                          ('{"default":', "file: Invalid JSON")):
        th = tmp_path / "thresholds.json"
        th.write_text(text)
        out = pipeline("run", "--ensemble", str(tiny_ensemble), "--input", str(tmp_path / "c"),
                       "--output", str(tmp_path / "out"), "--thresholds", str(th))
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert f"{th}: not a valid thresholds file: {problem}" in line
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text('{"classes": ["DISEASE"]}')
    out = pipeline("run", "--ensemble", str(tmp_path / "ens"), "--input", str(tmp_path / "c"),
                   "--output", str(tmp_path / "out"))
    assert out.returncode == 2 and "not a valid ensemble manifest: members: Field required" \
        in out.stderr.strip(), out.stderr
    good = tmp_path / "good.json"
    good.write_text('{"batch_size": 2, "device": "cpu"}')
    out = pipeline("run", "--ensemble", str(tiny_ensemble), "--input", str(tmp_path / "c"),
                   "--output", str(tmp_path / "out"), "--inference-config", str(good))
    assert out.returncode == 0, out.stderr


def test_bad_option_values_are_usage_errors_without_traceback(tmp_path, tiny_ensemble):
    out = pipeline("run", "--ensemble", str(tmp_path), "--input", str(tmp_path), "--output",
                   str(tmp_path / "o"), "--stage1-threshold", "1.5")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "--stage1-threshold" in out.stderr
    out = pipeline("evaluate", "--gold", str(tmp_path), "--pred", str(tmp_path), "--entity", "FOO")
    assert out.returncode == 2 and "--entity FOO: not a class" in out.stderr, out.stderr
    (tmp_path / "gold").mkdir()
    (tmp_path / "gold" / "a.txt").write_text("fiebre")
    for args, message in ((["--t1-grid", "0.3,x"], "--t1-grid must be numbers"),
                          (["--t1-grid", "0.3,1.5"], "give thresholds between 0 and 1"),
                          (["--subset", "1/2"], "no gold documents in --subset 1/2")):
        out = pipeline("tune", "--ensemble", str(tiny_ensemble), "--gold", str(tmp_path / "gold"),
                       "--out", str(tmp_path / "t.json"), *args)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    out = pipeline("run", "--ensemble", str(tiny_ensemble), "--input", str(tmp_path / "gold"),
                   "--output", str(tmp_path / "o"), "--llm", str(tmp_path), "--llm-backend", "hf",
                   "--llm-url", "http://127.0.0.1:9")
    assert out.returncode == 2 and "(--llm-url) are for the openai backend" in out.stderr, out.stderr
    for command in (["run", "--input", str(tmp_path / "gold"), "--output", str(tmp_path / "o")],
                    ["tune", "--gold", str(tmp_path / "gold"), "--out", str(tmp_path / "t.json")]):
        # no LLM to go with the URL: said before anything loads (this folder is no ensemble)
        out = pipeline(*command, "--ensemble", str(tmp_path), "--llm-url", "http://h:9")
        assert out.returncode == 2 and "were given but no LLM (--llm" in out.stderr, out.stderr
        # an LLM folder that does not exist: said before anything loads
        out = pipeline(*command, "--ensemble", str(tmp_path), "--llm",
                       str(tmp_path / "no-llm"))
        assert out.returncode == 2 and "'--llm'" in out.stderr and "does not exist" in out.stderr
    out = pipeline("evaluate", "--no-such-option")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr


def test_tune_and_ablate_with_an_llm_show_its_progress(tmp_path, tiny_ensemble, tiny_llm_dir):
    from pipeline.writers import write_brat
    from tests.test_stage1_models import two_docs

    write_brat(two_docs(), tmp_path / "gold")
    common = ["--ensemble", str(tiny_ensemble), "--gold", str(tmp_path / "gold"), "--llm",
              str(tiny_llm_dir), "--llm-backend", "hf", "--cache-dir", str(tmp_path / "cache")]
    out = pipeline("tune", *common, "--out", str(tmp_path / "t.json"), "--t1-grid", "0.5")
    assert out.returncode == 0, out.stderr
    assert "stage 2 (LLM)" in out.stderr and "prompts" in out.stderr
    assert "DISEASE: ensemble alone t1=0.5" in out.stdout
    out = pipeline("ablate", *common, "--thresholds", str(tmp_path / "t.json"), "--out",
                   str(tmp_path / "ablation"))
    assert out.returncode == 0, out.stderr
    assert "| reranked@tuned | DISEASE |" in out.stdout
    assert "tuned for" not in out.stderr and "tuned with" not in out.stderr  # their own thresholds
    assert set(json.loads((tmp_path / "t.json").read_text())["tuned_for"]) == {"ensemble", "llm"}
    assert json.loads((tmp_path / "ablation" / "ablation.json").read_text())["costs"]


def test_tune_asks_a_judge_of_the_uncertain_band_only_below_it(tmp_path, tiny_ensemble,
                                                                tiny_llm_dir):
    """A judge trained with max_stage1_score is tuned with routes up to it (it saw nothing
    above); --max-route sets the bound for any LLM."""
    import shutil

    from pipeline.thresholds import Thresholds
    from pipeline.writers import write_brat
    from prompts import load_template
    from stage2_rerank.scorer import judge_band
    from tests.cli_inprocess import run_cli
    from tests.test_stage1_models import two_docs

    judge = tmp_path / "judge"
    shutil.copytree(tiny_llm_dir, judge)
    assert judge_band(judge) is None  # no judge record
    (judge / "template.json").write_text(load_template("rerank_v1").model_dump_json())
    (judge / "judge.json").write_text(json.dumps({
        "prompt": {"template": "rerank_v1", "template_file": "template.json",
                   "max_context_tokens": 1024, "use_chat_template": True},
        "config": {"max_stage1_score": 0.75}}))
    assert judge_band(judge) == 0.75
    write_brat(two_docs(), tmp_path / "gold")
    common = ["--ensemble", tiny_ensemble, "--gold", tmp_path / "gold", "--llm-backend", "hf",
              "--cache-dir", tmp_path / "cache", "--t1-grid", "0.3,0.5"]
    for llm, extra, bound in ((judge, [], 0.75), (tiny_llm_dir, ["--max-route", "0.6"], 0.6),
                              (judge, ["--max-route", "0.9"], 0.9)):
        code, out, err = run_cli("tune", *common, "--llm", llm, "--out", tmp_path / "t.json",
                                 *extra)
        assert code == 0, err
        assert f"only about candidates of stage-1 score below {bound}" in err
        assert ("warning: --max-route 0.9 asks the judge about candidates above 0.75" in err) \
            == (bound == 0.9)
        th = Thresholds.load(tmp_path / "t.json")
        rr = th.figures["DISEASE"]["reranked"]
        assert rr["route"] is not None and rr["route"] <= bound and th.default.route == bound
    # --min-confidence 1: the LLM is used only where every resample says it helps
    code, out, err = run_cli("tune", *common, "--llm", tiny_llm_dir, "--out", tmp_path / "c.json",
                             "--min-confidence", "1")
    assert code == 0, err
    for cls, r in Thresholds.load(tmp_path / "c.json").figures.items():
        if "reranked" in r:
            rr = r["reranked"]
            assert rr["llm_calls"] == 0 or rr["confidence"] == 1.0, (cls, rr)
    # thresholds that ask the judge above what it learnt on: run says so, and runs
    wide = {"classes": {"DISEASE": {"stage1": 0.5, "stage2": 0.5, "route": 0.9}}}
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    code, out, err = run_cli("run", "--ensemble", tiny_ensemble, "--llm", judge, "--llm-backend",
                             "hf", "--input", tmp_path / "gold", "--output", tmp_path / "run",
                             "--thresholds", tmp_path / "wide.json")
    assert code == 0, err
    assert ("the judge learnt on candidates of stage-1 score below 0.75 only, and these "
            "thresholds ask it about DISEASE up to 0.9") in err


def test_ctrl_c_is_exit_130_not_success(tmp_path, monkeypatch):
    import pipeline.cli.evaluate as command

    gold = tmp_path / "g.tsv"
    gold.write_text("filename\tlabel\tstart_span\tend_span\ttext\nd\tDISEASE\t0\t6\tx\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "evaluate", interrupted)
    from tests.cli_inprocess import run_cli

    code, out, err = run_cli("evaluate", "--gold", gold, "--pred", gold)
    assert code == 130 and "interrupted" in err and out == ""


def test_a_broken_annotation_file_stops_no_run_and_lenient_evaluation_names_it(
        tmp_path, tiny_ensemble):
    """`run` needs no annotations: a non-UTF-8 .ann beside good documents once ended it
    with exit 2 after 4 documents; `evaluate --lenient` stopped on it too, and said nothing
    when it did skip something."""
    from tests.cli_inprocess import run_cli
    from tests.test_pipeline import make_corpus

    corpus = make_corpus(tmp_path / "corpus", n=6, broken=False)
    (corpus / "doc03.ann").write_bytes(b"T1\tDISEASE 0 4\tdiab\xe9tes\n")  # Latin-1
    code, out, err = run_cli("run", "--ensemble", tiny_ensemble, "--input", corpus,
                             "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["written"] == 6 and summary["failed"] == 0
    code, out, err = run_cli("evaluate", "--gold", corpus, "--pred", tmp_path / "out")
    assert code == 2 and f"{corpus / 'doc03.ann'}:1: not UTF-8" in err
    code, out, err = run_cli("evaluate", "--gold", corpus, "--pred", tmp_path / "out",
                             "--lenient", "--json")
    assert code == 0, err
    assert json.loads(out)["char_f1"]["n_gold"] == 5  # the five readable annotations
    assert "1 bad annotations skipped" in err and f"skipped: {corpus / 'doc03.ann'}" in err


def test_a_damaged_cache_says_it_may_be_deleted(tmp_path, tiny_ensemble):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("fiebre")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "charprobs.sqlite").write_bytes(b"not a database at all" * 100)
    out = pipeline("run", "--ensemble", str(tiny_ensemble), "--input", str(tmp_path / "c"),
                   "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "charprobs.sqlite" in last and "may be deleted: it only saves work" in last


def test_progress_is_a_line_every_few_seconds_where_stderr_is_no_terminal(
        tmp_path, tiny_ensemble, monkeypatch):
    import pipeline.cli.common as common
    from tests.test_pipeline import make_corpus

    monkeypatch.setattr(common, "PROGRESS_EVERY", 0.0)  # a line at every update
    make_corpus(tmp_path / "corpus", n=6)
    out = pipeline("run", "--ensemble", str(tiny_ensemble), "--input", str(tmp_path / "corpus"),
                   "--output", str(tmp_path / "out"), "--chunk-size", "2",
                   "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.startswith("pipeline run: ")]
    assert len(lines) >= 4 and "/8 docs" in lines[0]  # 6 notes, an empty and a broken one
    assert lines[-1].startswith("pipeline run: 8/8 docs")  # the failed one counted: full
    assert out.stdout.count("\n") == 1  # stdout: the result line only


def test_train_prints_no_trainer_metrics_on_stdout(tmp_path):
    from tests.test_pipeline import make_corpus
    from tests.tiny_models import tiny_bert_encoder

    encoder = tiny_bert_encoder(tmp_path / "encoder")
    corpus = make_corpus(tmp_path / "corpus", n=4, broken=False)
    out = pipeline("train", "--corpus", str(corpus), "--encoder", str(encoder), "--out",
                   str(tmp_path / "ens"), "--classes", "DISEASE", "--max-steps", "2")
    assert out.returncode == 0, out.stderr
    assert "train_runtime" not in out.stdout and "{" not in out.stdout, out.stdout
    assert "train_runtime" in out.stderr  # in the log instead


def test_a_bug_shows_its_traceback_and_asks_to_be_reported(tmp_path, monkeypatch):
    import pipeline.cli.evaluate as command

    gold = tmp_path / "g.tsv"
    gold.write_text("filename\tlabel\tstart_span\tend_span\ttext\nd\tDISEASE\t0\t6\tx\n")

    def broken(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(command, "evaluate", broken)
    out = pipeline("evaluate", "--gold", str(gold), "--pred", str(gold))
    assert out.returncode == 1 and "Traceback" in out.stderr and "KeyError" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("this is a bug in pipeline")
