"""One run configuration: a file (TOML or JSON) gives any part of the tree, options
override it, --print-config shows it, and run.json records it so a change is named by its
path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.settings import RunConfig, load_run_config, record_changes
from tests.cli_inprocess import run_cli
from tests.test_pipeline import make_corpus


def test_defaults_are_the_tree_and_unknown_keys_fail_at_every_level(tmp_path):
    cfg = RunConfig()
    assert cfg.thresholds.stage1 == 0.6 and cfg.output.formats == ["tsv", "jsonl"]
    assert cfg.ensemble.inference.batch_size == 32 and cfg.llm.model is None
    for tree, where in (({"tresholds": {}}, "tresholds"),
                        ({"llm": {"temperature": 0}}, "llm.temperature"),
                        ({"llm": {"server": {"retry": 2}}}, "llm.server.retry"),
                        ({"ensemble": {"inference": {"bach_size": 2}}},
                         "ensemble.inference.bach_size"),
                        ({"output": {"formats": ["xml"]}}, "output.formats.0")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(tree))
        with pytest.raises(PipelineError, match=rf"{path} with the command line's options\): "
                                                rf"{where}:"):
            load_run_config(path)


def test_a_toml_file_with_options_over_it(tmp_path, tiny_ensemble):
    corpus = make_corpus(tmp_path / "corpus", n=4, broken=False)
    (tmp_path / "run.toml").write_text(f"""
[ensemble]
path = "{tiny_ensemble}"
cache_dir = "{tmp_path / 'cache'}"

[ensemble.inference]
batch_size = 4

[thresholds]
stage1 = 0.45

[output]
formats = ["tsv"]
chunk_size = 2
""")
    common = ("run", "--input", corpus, "--config", tmp_path / "run.toml")
    code, out, err = run_cli(*common, "--output", tmp_path / "o", "--stage1-threshold", "0.5",
                             "--print-config")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["ensemble"]["path"] == str(tiny_ensemble)
    assert shown["ensemble"]["inference"]["batch_size"] == 4  # from the file
    assert shown["ensemble"]["inference"]["max_length"] == 512  # the default
    assert shown["thresholds"]["stage1"] == 0.5  # the option over the file
    assert shown["output"] == {"formats": ["tsv"], "chunk_size": 2, "shard": "0/1"}
    assert not (tmp_path / "o").exists()  # printing runs nothing

    code, out, err = run_cli(*common, "--output", tmp_path / "o")
    assert code == 0, err
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["config"]["thresholds"]["stage1"] == 0.45
    assert record["resolved"]["thresholds"]["default"]["stage1"] == 0.45
    assert len(list((tmp_path / "o" / "parts").glob("*.jsonl"))) == 3  # 5 documents, 2 a part
    # a changed setting is named by its path; one that changes nothing written is taken
    code, _, err = run_cli(*common, "--output", tmp_path / "o", "--stage1-threshold", "0.7")
    assert code == 2
    assert "holds a run with other settings (config.thresholds.stage1, " \
           "resolved.thresholds.default.stage1)" in err
    code, _, err = run_cli(*common, "--output", tmp_path / "o", "--format", "tsv,brat",
                           "--cache-dir", tmp_path / "cache2")
    assert code == 0, err
    assert (tmp_path / "o" / "brat").is_dir()


def test_record_changes_name_paths_and_pass_how_only_settings():
    old = {"config": RunConfig().model_dump(mode="json"), "resolved": {"llm": "a"}}
    new = json.loads(json.dumps(old))
    new["config"]["llm"]["template"] = "rerank_v2"
    new["config"]["llm"]["server"]["timeout"] = 5.0
    new["config"]["ensemble"]["inference"]["batch_size"] = 8
    new["config"]["ensemble"]["inference"]["max_length"] = 256
    new["resolved"]["llm"] = "b"
    assert record_changes(old, new) == ["config.ensemble.inference.max_length",
                                        "config.llm.template", "resolved.llm"]


def test_a_run_without_floors_records_its_thresholds_as_before_floors_existed():
    """A run begun before thresholds had a floor resumes: no floor is not recorded; a
    floor that drops spans is, and is a change."""
    from types import SimpleNamespace

    from pipeline.settings import run_record
    from pipeline.thresholds import Thresholds

    ens = SimpleNamespace(identity="e", output_settings={})
    before = {"default": {"stage1": 0.6, "stage2": 0.5, "route": None},
              "classes": {"DISEASE": {"stage1": 0.4, "stage2": 0.5, "route": 0.9}}}
    old = {"config": RunConfig().model_dump(mode="json"),
           "resolved": {"ensemble": "e", "inference": {}, "llm": None,
                        "thresholds": {**before, "objective": None, "figures": None,
                                       "tuned_for": None}, "input": "/in"}}
    new = run_record(RunConfig(), ensemble=ens, scorer=None, input=Path("/in"),
                     thresholds=Thresholds.model_validate(before))
    assert record_changes(old, new) == []
    floored = json.loads(json.dumps(before))
    floored["classes"]["DISEASE"]["floor"] = 0.3
    new = run_record(RunConfig(), ensemble=ens, scorer=None, input=Path("/in"),
                     thresholds=Thresholds.model_validate(floored))
    assert record_changes(old, new) == ["resolved.thresholds.classes.DISEASE.floor"]


def test_relative_paths_in_a_file_are_the_files_own(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "run.json").write_text(json.dumps(
        {"ensemble": {"path": "../ens", "cache_dir": "/abs/cache"},
         "llm": {"model": "models/judge", "template": "rerank_v1"},
         "thresholds": {"file": "th.json"}}))
    cfg = load_run_config(tmp_path / "conf" / "run.json")
    assert cfg.ensemble.path == tmp_path / "conf" / ".." / "ens"
    assert str(cfg.ensemble.cache_dir) == "/abs/cache"
    assert cfg.llm.model == tmp_path / "conf" / "models" / "judge"
    assert cfg.llm.template == "rerank_v1"  # a template's name is no path
    assert cfg.thresholds.file == tmp_path / "conf" / "th.json"
