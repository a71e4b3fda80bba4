from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest

from pipeline.documents import Document, Span
from pipeline.training import document_group, fold_of, train_ensemble
from stage1_ensemble import decode_spans
from stage1_ensemble.config import InferenceConfig, TrainConfig
from stage1_ensemble.ensemble import Ensemble
from stage1_ensemble.windows import tokenize_windows
from tests.tiny_models import LONG_AND_SHORT, SENTENCES, runner_probs, tiny_xlmr

GOLD = {0: ["diabetes mellitus"], 1: ["neumonía"]}


def two_docs() -> list[Document]:
    docs = []
    for i, text in enumerate(SENTENCES):
        spans = [Span(f"d{i}", "DISEASE", text.index(m), text.index(m) + len(m))
                 for m in GOLD[i]]
        docs.append(Document(f"d{i}", text, lang="es", spans=spans))
    return docs


@pytest.fixture(scope="module")
def overfit_ensemble(tiny_ensemble):
    return tiny_ensemble


def spans_of(ensemble: Ensemble) -> list[list[str]]:
    probs = ensemble.char_probs(SENTENCES, ["DISEASE"])
    return [[t[s:e] for s, e, _ in decode_spans(t, p["DISEASE"], 0.5)]
            for t, p in zip(SENTENCES, probs)]


def test_tiny_model_overfits_and_survives_reload(overfit_ensemble):
    config = InferenceConfig(device="cpu")
    first = spans_of(Ensemble.load(overfit_ensemble, config))
    assert first == [GOLD[0], GOLD[1]]
    again = Ensemble.load(overfit_ensemble, config)
    assert spans_of(again) == first
    a = Ensemble.load(overfit_ensemble, config).char_probs(SENTENCES, ["DISEASE"])
    b = again.char_probs(SENTENCES, ["DISEASE"])
    assert np.array_equal(a[0]["DISEASE"], b[0]["DISEASE"])


def test_training_resumes_by_keeping_finished_members(overfit_ensemble, tmp_path):
    from pipeline.errors import PipelineError

    seen = []
    member = json.loads((overfit_ensemble / "ensemble.json").read_text())["members"][0]
    encoder = member["encoder"]
    recipe = TrainConfig(**{**member["config"], "logging_steps": 7})  # logging changes nothing
    train_ensemble(two_docs(), out=overfit_ensemble, encoders=[encoder], classes=["DISEASE"],
                   config=recipe, on_member=lambda name, what: seen.append(what))
    manifest = json.loads((overfit_ensemble / "ensemble.json").read_text())
    assert seen == ["kept"] and len(manifest["members"]) == 1
    # a member of another recipe or fold split is not kept as if it were of this one
    for config, folds, change in [(TrainConfig(), 1, "max_steps 120, now 2000"),
                                  (recipe, 3, "--folds 1, now 3")]:  # d0, d1: two folds
        with pytest.raises(PipelineError, match=rf"trained with other settings \(.*{change}"):
            train_ensemble(two_docs(), out=overfit_ensemble, encoders=[encoder],
                           classes=["DISEASE"], config=config, n_folds=folds)
    assert json.loads((overfit_ensemble / "ensemble.json").read_text()) == manifest


def test_an_ensemble_whose_training_has_not_finished_is_refused(tmp_path):
    from tests.tiny_models import tiny_bert_encoder

    encoder = tiny_bert_encoder(tmp_path / "encoder")
    config = TrainConfig(max_steps=1, warmup_steps=0, batch_size=2, max_length=64, stride=8)
    out = tmp_path / "ens"

    class Killed(Exception):
        pass

    def killed_at_the_second(name, what):
        if what == "training" and name.endswith("f1"):
            raise Killed  # as if the process died while training it
    with pytest.raises(Killed):
        train_ensemble(one_document_a_fold(), out=out, encoders=[str(encoder)],
                       classes=["DISEASE"], n_folds=2, config=config,
                       on_member=killed_at_the_second)
    manifest = json.loads((out / "ensemble.json").read_text())
    assert len(manifest["members"]) == 1 and len(manifest["planned"]) == 2
    with pytest.raises(ValueError, match=r"training has not finished: 1 of 2 members missing "
                                         r"\(disease-encoder-f1\); run the same"):
        Ensemble.load(out)
    train_ensemble(one_document_a_fold(), out=out, encoders=[str(encoder)], classes=["DISEASE"],
                   n_folds=2, config=config)
    assert len(Ensemble.load(out).manifest.members) == 2
    # the plan is no part of the identity: caches and thresholds of older manifests hold
    finished = Ensemble.load(out).manifest
    assert finished.identity() == finished.model_copy(update={"planned": []}).identity()


def test_encoders_of_one_folder_name_each_train_their_own_members(tmp_path):
    """v1/minilm and v2/minilm once gave one member name: the second was "kept" as the
    first and never trained; resuming with another encoder of that name did the same."""
    import shutil

    from pipeline.errors import PipelineError
    from tests.tiny_models import tiny_bert_encoder

    first = tiny_bert_encoder(tmp_path / "v1" / "minilm")
    second = tmp_path / "v2" / "minilm"
    shutil.copytree(first, second)
    config = TrainConfig(max_steps=1, warmup_steps=0, batch_size=2, max_length=64, stride=8)
    trained = []
    manifest = train_ensemble(two_docs(), out=tmp_path / "ens", encoders=[str(first), str(second)],
                              classes=["DISEASE"], config=config,
                              on_member=lambda name, what: trained.append((name, what)))
    names = [m.name for m in manifest.members]
    assert len(set(names)) == 2 and all(what == "training" for _, what in trained)
    assert [m.encoder for m in manifest.members] == [str(first), str(second)]
    assert all(n.startswith("disease-minilm-") and n.endswith("-f0") for n in names)
    with pytest.raises(PipelineError, match="is given twice"):
        train_ensemble(two_docs(), out=tmp_path / "twice", encoders=[str(first), str(first)],
                       classes=["DISEASE"], config=config)
    train_ensemble(two_docs(), out=tmp_path / "one", encoders=[str(first)],
                   classes=["DISEASE"], config=config)
    with pytest.raises(PipelineError, match=rf"other settings \(encoder {first}, now {second}"):
        train_ensemble(two_docs(), out=tmp_path / "one", encoders=[str(second)],
                       classes=["DISEASE"], config=config)


def test_a_damaged_member_record_is_named_not_a_validation_traceback(tmp_path):
    """member.json marks a member done; one left empty (a crash while an older version
    wrote it, which it did in place) stops training in one line that names the file and
    says what to do."""
    from pipeline.errors import PipelineError
    from tests.tiny_models import tiny_bert_encoder

    encoder = tiny_bert_encoder(tmp_path / "encoder")
    config = TrainConfig(max_steps=1, warmup_steps=0, batch_size=2, max_length=64, stride=8)
    out = tmp_path / "ens"
    train_ensemble(two_docs(), out=out, encoders=[str(encoder)], classes=["DISEASE"],
                   config=config)
    record = next(out.glob("*/member.json"))
    assert not list(out.glob("*/.member.json.tmp*"))  # written whole, then moved in place
    record.write_text("")
    with pytest.raises(PipelineError) as e:
        train_ensemble(two_docs(), out=out, encoders=[str(encoder)], classes=["DISEASE"],
                       config=config)
    assert str(e.value).startswith(f"{record}: not a valid member record: ")
    assert str(e.value).endswith(f"; delete {record.parent} to train this member again")
    assert "\n" not in str(e.value)


def test_validation_scores_the_default_threshold_and_finds_the_best(overfit_ensemble):
    from pipeline.training import VALIDATION_GRID, validate_member

    member = json.loads((overfit_ensemble / "ensemble.json").read_text())["members"][0]
    scores = validate_member(overfit_ensemble / member["path"], two_docs(), "DISEASE")
    assert scores["threshold"] == 0.5 and scores["documents"] == 2
    assert scores["char_f1"] == scores["strict_f1"] == 1.0  # the model overfits both texts
    assert scores["best_threshold"] in VALIDATION_GRID
    assert scores["best_char_f1"] >= scores["char_f1"]


def one_document_a_fold() -> list[Document]:
    """The two documents, named so that each of two folds holds one: each member then has
    a held-out document and one to train on."""
    ids = {fold_of(f"case{i}", 2): f"case{i}" for i in range(20)}
    return [Document(ids[f], text, spans=[Span(ids[f], "DISEASE", s.start, s.end)
                                          for s in doc.spans])
            for f, (text, doc) in enumerate(zip(SENTENCES, two_docs()))]


def test_resumed_training_scores_the_threshold_grid_of_older_members(tmp_path):
    from tests.tiny_models import tiny_bert_encoder

    docs = one_document_a_fold()
    encoder = tiny_bert_encoder(tmp_path / "encoder")
    config = TrainConfig(max_steps=1, warmup_steps=0, batch_size=2, max_length=64, stride=8)
    out = tmp_path / "ens"
    train_ensemble(docs, out=out, encoders=[str(encoder)], classes=["DISEASE"], n_folds=2,
                   config=config)
    member_file = next(out.glob("*-f0/member.json"))
    member = json.loads(member_file.read_text())
    assert member["validation"]["documents"] == 1 and "best_threshold" in member["validation"]
    for key in ("best_threshold", "best_char_f1"):  # as an older version wrote it
        del member["validation"][key]
    member_file.write_text(json.dumps(member))
    seen = []
    train_ensemble(docs, out=out, encoders=[str(encoder)], classes=["DISEASE"], n_folds=2,
                   config=config, on_member=lambda name, what: seen.append(what))
    assert seen == ["kept", "kept"]
    assert "best_threshold" in json.loads(member_file.read_text())["validation"]
    manifest = json.loads((out / "ensemble.json").read_text())
    assert all("best_threshold" in m["validation"] for m in manifest["members"])


def test_unusable_encoders_and_unannotated_classes_stop_training_before_it_starts(tmp_path):
    from safetensors.torch import load_file, save_file

    from pipeline.errors import PipelineError
    from tests.tiny_models import tiny_bert_encoder

    encoder = str(tiny_bert_encoder(tmp_path / "encoder"))
    config = TrainConfig(max_steps=1, warmup_steps=0, batch_size=2, max_length=64, stride=8)
    (tmp_path / "not_a_model").mkdir()
    for bad, reason in ((str(tmp_path / "missing"), "no such folder"),
                        (str(tmp_path / "not_a_model"), "no config in")):
        with pytest.raises(PipelineError, match=f"encoder {bad}: {reason}"):
            train_ensemble(two_docs(), out=tmp_path / "ens", encoders=[encoder, bad],
                           classes=["DISEASE"], config=config)
        assert not list((tmp_path / "ens").glob("*/member.json"))  # nothing trained first
    renamed = tiny_bert_encoder(tmp_path / "renamed")  # weights saved under other names
    weights = load_file(renamed / "model.safetensors")
    save_file({f"wrapper.{k}": v for k, v in weights.items()}, renamed / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(PipelineError, match=r"renamed: \d+ weights of the model are not in its "
                                            r"checkpoint .* they would be random"):
        train_ensemble(two_docs(), out=tmp_path / "ens", encoders=[encoder, str(renamed)],
                       classes=["DISEASE"], config=config)
    assert not list((tmp_path / "ens").glob("*/member.json"))
    with pytest.raises(PipelineError, match="no gold SYMPTOM spans in the training documents"):
        train_ensemble(two_docs(), out=tmp_path / "ens", encoders=[encoder],
                       classes=["DISEASE", "SYMPTOM"], config=config)
    assert not list((tmp_path / "ens").glob("*/member.json"))


def test_dropout_settings_reach_the_encoder_and_unknown_architectures_are_refused(tmp_path):
    from transformers import GPT2Config

    from stage1_ensemble.train import dropout_overrides, load_encoder
    from tests.tiny_models import tiny_bert_encoder

    encoder = tiny_bert_encoder(tmp_path / "encoder")
    kept, _ = load_encoder(encoder, TrainConfig())
    assert kept.config.attention_probs_dropout_prob == 0.1  # the checkpoint's own
    model, _ = load_encoder(encoder, TrainConfig(attention_dropout=0.0, hidden_dropout=0.05))
    assert model.config.attention_probs_dropout_prob == 0.0
    assert model.config.hidden_dropout_prob == 0.05
    assert model.bert.encoder.layer[0].output.dropout.p == 0.05
    assert dropout_overrides(GPT2Config(), TrainConfig()) == {}
    with pytest.raises(ValueError, match="gpt2 encoders have no dropout settings"):
        dropout_overrides(GPT2Config(), TrainConfig(attention_dropout=0.0))
    with pytest.raises(ValueError, match="attention_dropout"):
        TrainConfig(attention_dropout=1.5)


def test_a_fresh_head_depends_on_the_seed_not_on_what_ran_before(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    from stage1_ensemble.train import load_encoder
    from tests.tiny_models import wordpiece_tokenizer

    tokenizer = wordpiece_tokenizer(SENTENCES)  # an encoder without a classification head
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    first, _ = load_encoder(tmp_path, TrainConfig(seed=7))
    torch.rand(1000)  # the process draws random numbers between two members
    state = torch.random.get_rng_state()
    again, _ = load_encoder(tmp_path, TrainConfig(seed=7))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's state is kept
    other, _ = load_encoder(tmp_path, TrainConfig(seed=8))
    assert torch.equal(first.classifier.weight, again.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)


def test_training_on_other_data_into_the_same_folder_is_refused(overfit_ensemble):
    docs = two_docs()[:1]
    with pytest.raises(ValueError, match="trained on other data"):
        train_ensemble(docs, out=overfit_ensemble, encoders=["x"], classes=["DISEASE"])


def test_missing_member_is_a_clear_error(overfit_ensemble, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from pipeline.errors import PipelineError
    from pipeline.recognizer import load_ensemble

    broken = tmp_path / "broken"
    shutil.copytree(overfit_ensemble, broken)
    member = json.loads((broken / "ensemble.json").read_text())["members"][0]["path"]
    shutil.rmtree(broken / member)
    with pytest.raises(FileNotFoundError, match="has no model at"):
        Ensemble.load(broken)
    with pytest.raises(FileNotFoundError, match="no ensemble manifest"):
        Ensemble.load(tmp_path)
    # a member folder without its vocabulary or its weights: transformers would load an
    # empty tokenizer (every word [UNK]) or fail late; the ensemble refuses it at load
    for pattern, lacking in (("tokenizer*", "no tokenizer vocabulary"), ("*.safetensors", "no weights")):
        damaged = tmp_path / f"damaged_{lacking.split()[1]}"
        shutil.copytree(overfit_ensemble, damaged)
        for f in (damaged / member).glob(pattern):
            f.unlink()
        with pytest.raises(FileNotFoundError, match=f"member .*: {lacking} in"):
            Ensemble.load(damaged)
    headless = tmp_path / "headless"  # weights without the classification head
    shutil.copytree(overfit_ensemble, headless)
    weights = load_file(headless / member / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")},
              headless / member / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="2 weights of the model are not in its checkpoint "
                                         r"\(e.g. classifier.bias\); they would be random"):
        Ensemble.load(headless).load_models()
    with pytest.raises(PipelineError, match="they would be random"):
        load_ensemble(headless)  # what the commands and Recognizer load: at once
    three = tmp_path / "three_labels"  # a mismatching member: not a binary classifier
    shutil.copytree(overfit_ensemble, three)
    config = json.loads((three / member / "config.json").read_text())
    config["id2label"] = {"0": "O", "1": "B", "2": "I"}
    (three / member / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="binary token classifier, .* has 3 labels"):
        Ensemble.load(three)  # at load, not after the other members have run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(overfit_ensemble, unfinished)
    manifest = json.loads((unfinished / "ensemble.json").read_text())
    manifest["classes"] += ["SYMPTOM"]  # as a training stopped before SYMPTOM writes it
    (unfinished / "ensemble.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no member for SYMPTOM"):
        Ensemble.load(unfinished)
    manifest["classes"].remove("SYMPTOM")
    for weight in (0.0, -1.0, float("nan")):  # a weighted mean would be NaN or meaningless
        manifest["members"][0]["weight"] = weight
        (unfinished / "ensemble.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match=r"members\.0\.weight: Input should be (greater "
                                             r"than 0|a finite number)"):
            Ensemble.load(unfinished)


def test_loading_members_draws_no_progress_bars(overfit_ensemble, capfd):
    """One bar per member from transformers would interleave with the command's own."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    ens = Ensemble.load(overfit_ensemble, InferenceConfig(device="cpu"))
    capfd.readouterr()
    for m in ens.manifest.members:
        ens.runner(m)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # as it was


def test_folds_keep_translations_of_one_case_together():
    assert document_group("case12_en") == document_group("case12_ro") == "case12"
    assert document_group("casos_clinicos_cardiologia10") == "casos_clinicos_cardiologia10"
    assert {fold_of(f"case{i}_{lang}", 3) for lang in ("es", "en", "cz") for i in [7]} \
        == {fold_of("case7", 3)}


def test_folds_that_leave_nothing_to_train_on_are_refused_and_empty_ones_reported(caplog):
    from pipeline.errors import PipelineError
    from pipeline.training import check_folds

    def docs(*ids):
        return [Document(i, "fiebre", spans=[Span(i, "SYMPTOM", 0, 6)]) for i in ids]

    with pytest.raises(PipelineError, match=r"--folds 2: all 2 SYMPTOM documents \(1 document "
                                            r"group\) fall in fold \d, whose member would have "
                                            "nothing to train on"):
        check_folds(docs("case7_es", "case7_en"), ["SYMPTOM"], 2)
    groups = [f"case{i}" for i in range(40)]
    two = [next(g for g in groups if fold_of(g, 3) == k) for k in (0, 2)]  # fold 1 left empty
    with caplog.at_level("WARNING"):
        check_folds(docs(*two), ["SYMPTOM"], 3)
        check_folds(docs(*two), ["SYMPTOM"], 1)  # no folds: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "--folds 3: no SYMPTOM document falls in fold 1 (2 document groups); a member of such "
        "a fold trains on every document and has no held-out score"]


def test_xlmr_tokenizer_windows_on_long_multilingual_text(tmp_path):
    from transformers import AutoTokenizer

    folder = tiny_xlmr(tmp_path / "xlmr")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = " ".join(["Pacientul prezintă durere toracică; ţesut, švédština, ärr (grad II)."] * 60)
    win = tokenize_windows(tokenizer, [text, "", "   "], max_length=64, stride=8)
    docs = win.doc_index.tolist()
    assert docs.count(0) > 10 and docs.count(1) == 1 and docs.count(2) == 1
    for i in range(len(win)):
        ids, offsets = win.row(i)
        assert len(ids) <= 64
        assert offsets[0].tolist() == [0, 0] and offsets[-1].tolist() == [0, 0]  # <s>, </s>
    # consecutive windows of the long text share 8 tokens, and reach its end
    w0, w1 = win.row(0)[1], win.row(1)[1]
    assert w0[-9:-1].tolist() == w1[1:9].tolist()
    assert win.offsets[docs.count(0) - 1].max() == len(text)
    ensemble_dir = tmp_path / "ens"
    docs_ = [Document("x", text, spans=[Span("x", "SYMPTOM", 20, 36)])]
    train_ensemble(docs_, out=ensemble_dir, encoders=[str(folder)], classes=["SYMPTOM"],
                   config=TrainConfig(max_steps=1, warmup_steps=0, batch_size=2, max_length=64,
                                      stride=8))
    ens = Ensemble.load(ensemble_dir, InferenceConfig(device="cpu", max_length=64, stride=8))
    for bad, problem in (("fiebre \ud800", r"text 1 holds a lone surrogate \(U\+D800\)"),
                         (None, "text 1 is a NoneType, not a string")):
        with pytest.raises(ValueError, match=problem):
            tokenize_windows(tokenizer, [text, bad])
    nfd = unicodedata.normalize("NFD", "srdeční selhání")  # its last accent is in no token
    out = ens.char_probs([text, "", "   ", "\u200b\u200b", nfd], ["SYMPTOM"])
    assert [o["SYMPTOM"].shape for o in out] == [(len(text),), (0,), (3,), (2,), (len(nfd),)]
    assert all(np.isfinite(o["SYMPTOM"]).all() for o in out)
    assert out[2]["SYMPTOM"].tolist() == [0.0, 0.0, 0.0]


def test_rounded_batch_widths_give_the_same_probabilities(tmp_path):
    from stage1_ensemble.infer import padded_width
    from tests.tiny_models import tiny_bert_encoder

    assert [padded_width(n, 16, 60) for n in (1, 16, 17, 50)] == [16, 16, 32, 60]
    folder = tiny_bert_encoder(tmp_path / "m")
    base = dict(device="cpu", max_length=64, stride=8, batch_size=3)
    plain = runner_probs(folder, InferenceConfig(**base), LONG_AND_SHORT)
    rounded = runner_probs(folder, InferenceConfig(**base, width_multiple=16), LONG_AND_SHORT)
    assert np.allclose(plain, rounded, atol=1e-6)


@pytest.mark.slow
def test_compiled_encoder_gives_the_same_probabilities(tmp_path):
    from tests.tiny_models import tiny_bert_encoder

    folder = tiny_bert_encoder(tmp_path / "m")
    base = dict(device="cpu", max_length=64, stride=8, batch_size=3, width_multiple=16)
    eager = runner_probs(folder, InferenceConfig(**base), LONG_AND_SHORT)
    compiled = runner_probs(folder, InferenceConfig(**base, compile=True), LONG_AND_SHORT)
    assert np.allclose(eager, compiled, atol=1e-5)


def test_members_sharing_a_tokenizer_share_windows_and_projection(tmp_path, monkeypatch):
    """Two tokenizers among four members: texts are tokenized twice, not four times, and the
    per-segment weighted mean equals the weighted mean of each member's own projection."""
    from stage1_ensemble import infer, weighted_mean
    from stage1_ensemble.ensemble import MANIFEST, Manifest, Member
    from tests.tiny_models import tiny_bert_encoder, wordpiece_tokenizer

    wordpiece = wordpiece_tokenizer(SENTENCES)
    folders = {f"bert{i}": tiny_bert_encoder(tmp_path / f"bert{i}", seed=i, tokenizer=wordpiece)
               for i in range(3)}
    folders["xlmr"] = tiny_xlmr(tmp_path / "xlmr")
    plan = [("bert0", "DISEASE", 1.0), ("bert1", "DISEASE", 2.0), ("xlmr", "DISEASE", 0.5),
            ("bert2", "SYMPTOM", 1.0)]
    members = [Member(name=f"{cls}-{f}", entity_class=cls, fold=0, n_folds=1, encoder=f,
                      path=f, tokenizer=f, weight=w) for f, cls, w in plan]
    manifest = Manifest(classes=["DISEASE", "SYMPTOM"], members=members, data_hash="x")
    (tmp_path / MANIFEST).write_text(manifest.model_dump_json())
    assert all(folders[f] == tmp_path / f for f, _, _ in plan)

    ens = Ensemble.load(tmp_path, InferenceConfig(device="cpu", max_length=16, stride=4))
    calls = []
    real = infer.tokenize_windows
    monkeypatch.setattr(infer, "tokenize_windows",
                        lambda tok, texts, **kw: calls.append(1) or real(tok, texts, **kw))
    out = ens.char_probs(LONG_AND_SHORT)
    assert len(calls) == 2
    for cls in ("DISEASE", "SYMPTOM"):
        mine = ens.members_of(cls)
        alone = [ens.runner(m).char_probs(LONG_AND_SHORT) for m in mine]
        for i in range(len(LONG_AND_SHORT)):
            expected = weighted_mean([a[i] for a in alone], [m.weight for m in mine])
            assert out[i][cls].dtype == np.float32
            assert np.allclose(out[i][cls], expected, atol=1e-6)
    assert len(calls) == 2 + 4  # the per-member reference tokenized once a member


def test_char_prob_cache_round_trip_sharing_and_damage(tmp_path, caplog):
    import sqlite3

    from stage1_ensemble.cache import CharProbCache

    rng = np.random.default_rng(0)
    texts = ["fiebre alta", "", "Pacientă cu febră 😷", "x" * 5000]
    probs = [rng.random(len(t)).astype(np.float32) for t in texts]
    cache = CharProbCache(tmp_path, "ens-a")
    assert cache.get_many("DISEASE", texts) == [None] * 4
    stored = cache.put_many("DISEASE", list(zip(texts, probs)))
    for p, s in zip(probs, stored):  # float16 precision, and what a later get gives
        assert s.dtype == np.float32 and np.allclose(p, s, atol=5e-4)
    again = CharProbCache(tmp_path, "ens-a").get_many("DISEASE", texts)  # another process
    assert all(np.array_equal(s, a) for s, a in zip(stored, again))
    assert CharProbCache(tmp_path, "ens-b").get("DISEASE", texts[0]) is None  # other ensemble
    assert cache.get("SYMPTOM", texts[0]) is None and len(cache) == 4
    with pytest.raises(ValueError, match=r"\(3,\) probabilities for a text of 11 characters"):
        cache.put("DISEASE", texts[0], probs[0][:3])
    assert len(list(tmp_path.iterdir())) <= 3  # one database (and its WAL files)
    (tmp_path / "charprobs" / "DISEASE").mkdir(parents=True)  # the layout before
    with caplog.at_level("WARNING"):
        CharProbCache(tmp_path, "ens-a")
    assert "older layout" in caplog.text

    # a damaged row is a miss (the models run again), not an error
    db = sqlite3.connect(tmp_path / "charprobs.sqlite")
    db.execute("UPDATE probs SET data = x'00ff'")
    db.commit()
    db.close()
    assert cache.get_many("DISEASE", texts) == [None] * 4


def test_cached_char_probs_run_the_models_only_for_what_is_missing(overfit_ensemble, tmp_path):
    from stage1_ensemble.cache import CharProbCache
    from stage1_ensemble.ensemble import cached_char_probs

    ens = Ensemble.load(overfit_ensemble)
    cache = CharProbCache(tmp_path, ens.identity)
    calls = []
    real = ens.char_probs

    def counting(texts, classes):
        calls.append(list(texts))
        return real(texts, classes)

    ens.char_probs = counting
    first = cached_char_probs(ens, SENTENCES, ["DISEASE"], cache)
    both = cached_char_probs(ens, [SENTENCES[1], "otra frase nueva", SENTENCES[0]], ["DISEASE"],
                             cache)
    assert calls == [SENTENCES, ["otra frase nueva"]]
    assert np.array_equal(both[0]["DISEASE"], first[1]["DISEASE"])
    assert np.array_equal(both[2]["DISEASE"], first[0]["DISEASE"])


def _fill_cache(folder: str, worker: int) -> None:
    from stage1_ensemble.cache import CharProbCache

    cache = CharProbCache(folder, "ens")
    for batch in range(20):
        texts = [f"worker {worker} batch {batch} text {i}" for i in range(8)]
        cache.put_many("DISEASE", [(t, np.full(len(t), worker / 4, np.float32)) for t in texts])


def test_char_prob_cache_is_shared_by_processes_writing_at_once(tmp_path):
    import multiprocessing

    from stage1_ensemble.cache import CharProbCache

    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_fill_cache, args=(str(tmp_path), w)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0, 0]
    cache = CharProbCache(tmp_path, "ens")
    assert len(cache) == 3 * 20 * 8
    got = cache.get("DISEASE", "worker 2 batch 19 text 7")
    assert got is not None and np.all(got == np.float16(0.5))


def test_windows_beyond_a_models_positions_are_lowered_or_refused(tmp_path, caplog):
    """A max_length past the position table failed every long document at run time."""
    from pipeline.errors import PipelineError
    from stage1_ensemble.infer import MemberRunner, window_limit
    from stage1_ensemble.train import load_encoder
    from tests.tiny_models import tiny_bert_encoder

    folder = tiny_xlmr(tmp_path / "xlmr")  # 514 positions, the first 2 reserved
    text = " ".join(SENTENCES * 60)  # about 1,200 tokens
    with caplog.at_level("WARNING"):
        wide = MemberRunner.load(folder, InferenceConfig(device="cpu", max_length=1024))
    assert window_limit(wide.model) == 512 and wide.max_length == 512
    assert "max_length 1024 is more than the model's 512 positions" in caplog.text
    usual = MemberRunner.load(folder, InferenceConfig(device="cpu"))
    assert wide.tokenizer_key == usual.tokenizer_key  # the same windows: shared
    assert np.array_equal(wide.char_probs([text])[0], usual.char_probs([text])[0])
    with pytest.raises(ValueError, match="stride 600 is more than half of the 512 tokens"):
        MemberRunner.load(folder, InferenceConfig(device="cpu", max_length=2048, stride=600))

    encoder = tiny_bert_encoder(tmp_path / "bert")  # 512 positions
    with pytest.raises(ValueError, match="max_length 1024 tokens do not fit its 512 positions"):
        load_encoder(encoder, TrainConfig(max_length=1024))
    with pytest.raises(PipelineError, match="do not fit its 512 positions"):  # before training
        train_ensemble(two_docs(), out=tmp_path / "ens", encoders=[str(encoder)],
                       classes=["DISEASE"], config=TrainConfig(max_length=1024, max_steps=1))
    for config in (TrainConfig, InferenceConfig):
        with pytest.raises(ValueError, match="stride 300 must be at most half of max_length 512"):
            config(stride=300)


def test_cached_probabilities_are_keyed_by_the_settings_that_change_them(overfit_ensemble):
    def identity(**settings) -> str:
        return Ensemble.load(overfit_ensemble, InferenceConfig(device="cpu", **settings)
                             ).probs_identity

    base = identity()
    assert identity(compile=True, batch_size=3, width_multiple=8) == base  # speed only
    assert len({base, identity(max_length=256), identity(stride=16), identity(bf16=True)}) == 4
    assert Ensemble.load(overfit_ensemble).identity == Ensemble.load(
        overfit_ensemble, InferenceConfig(max_length=256)).identity  # the members themselves


def test_freeze_embeddings_keeps_the_word_table_out_of_training(tmp_path):
    from stage1_ensemble.train import load_encoder
    from tests.tiny_models import tiny_bert_encoder

    encoder = tiny_bert_encoder(tmp_path / "encoder")
    frozen, _ = load_encoder(encoder, TrainConfig(freeze_embeddings=True))
    assert not frozen.get_input_embeddings().weight.requires_grad
    assert all(p.requires_grad for n, p in frozen.named_parameters()
               if "word_embeddings" not in n)
    trained, _ = load_encoder(encoder, TrainConfig())
    assert all(p.requires_grad for p in trained.parameters())
