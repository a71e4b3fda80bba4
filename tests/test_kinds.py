"""Members of other kinds: the seam (old manifests keep their identity), and the gazetteer
kind added to a trained ensemble without training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from stage1_ensemble.ensemble import Ensemble, Manifest
from stage1_ensemble.gazetteer import Gazetteer
from tests.cli_inprocess import run_cli

OLD_MANIFEST = {"classes": ["DISEASE"], "data_hash": "abc", "planned": ["disease-x-f0"],
                "members": [{"name": "disease-x-f0", "entity_class": "DISEASE", "fold": 0,
                             "n_folds": 2, "encoder": "enc/x", "path": "disease-x-f0/model",
                             "tokenizer": "enc/x", "weight": 1.0, "config": {"max_steps": 10},
                             "validation": {"f1": 0.5}, "train_documents": 3}]}


def test_a_manifest_from_before_kinds_loads_as_binary_with_its_identity():
    """The identity (the caches' key) of a manifest written before members had kinds,
    as that version computed it: kinds must not make every cache miss."""
    manifest = Manifest.model_validate(OLD_MANIFEST)
    assert manifest.members[0].kind == "binary"
    assert manifest.identity() == "19dd4763473a7792"
    other = manifest.model_copy(deep=True)
    other.members[0].kind = "gazetteer"
    assert other.identity() != manifest.identity()


def test_gazetteer_terms_score_their_precision_on_gold():
    gaz = Gazetteer()
    for term in ("fiebre", "tos", "dolor torácico"):
        gaz.add("SYMPTOM", term)
    texts = [("fiebre y tos", [(0, 6), (9, 12)]),
             ("sin fiebre, tos seca", [(12, 15)]),  # "fiebre" here is negated: not annotated
             ("Dolor torácico", [(0, 14)])]
    counts = gaz.measure("SYMPTOM", texts)
    assert counts == {"fiebre": (1, 2), "tos": (2, 2), "dolor torácico": (1, 1)}
    assert gaz.predict("fiebre, tos", "SYMPTOM") == [(0, 6, 0.5), (8, 11, 1.0)]


def test_a_gazetteer_member_joins_a_trained_ensemble(tmp_path, tiny_ensemble):
    from tests.test_pipeline import GOLD, make_corpus
    from tests.tiny_models import SENTENCES

    ens_dir = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
    before = Ensemble.load(ens_dir)
    corpus = make_corpus(tmp_path / "corpus", n=6, broken=False)
    code, out, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind", "gazetteer",
                             "--class", "DISEASE", "--from-corpus", corpus, "--weight", "0.5")
    assert code == 0, err
    assert "added disease-gazetteer (gazetteer, DISEASE, weight 0.5)" in out
    after = Ensemble.load(ens_dir)
    assert after.identity != before.identity  # the caches' keys change with the members
    gaz = json.loads((ens_dir / "disease-gazetteer" / "gazetteer.json").read_text())
    assert set(gaz["classes"]["DISEASE"]) == {m.lower() for m in GOLD}
    # the mean weighs the binary member 1 and the gazetteer 0.5
    binary = before.char_probs(SENTENCES, ["DISEASE"])
    mixed = after.char_probs(SENTENCES, ["DISEASE"])
    for text, b, m in zip(SENTENCES, binary, mixed):
        dictionary = np.zeros(len(text), np.float32)
        for term, score in gaz["classes"]["DISEASE"].items():
            at = text.lower().find(term)
            if at >= 0:
                dictionary[at:at + len(term)] = score
        np.testing.assert_allclose(m["DISEASE"], (b["DISEASE"] + 0.5 * dictionary) / 1.5,
                                   atol=1e-6)
    code, out, _ = run_cli("ensemble", "show", "--ensemble", ens_dir, "--json")
    rows = json.loads(out)
    assert [r["kind"] for r in rows] == ["binary", "gazetteer"]
    # each note annotates its first sentence's disease only; the other sentence, repeated
    # 0, 1 or 2 times, holds the other term unannotated: 6 of 12 matches are annotated
    assert rows[1]["validation"] == {"terms": 2, "measured_on": str(corpus), "matches": 12,
                                     "precision": 0.5}
    # refused: a second of the same name, a class the ensemble lacks, the last member
    code, _, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind", "gazetteer",
                           "--class", "DISEASE", "--from-corpus", corpus)
    assert code == 2 and "a member 'disease-gazetteer' is there already" in err
    code, _, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind", "gazetteer",
                           "--class", "SYMPTOM", "--from-corpus", corpus)
    assert code == 2 and "the ensemble has no class SYMPTOM" in err
    code, out, err = run_cli("ensemble", "remove", "--ensemble", ens_dir, "--member",
                             "disease-gazetteer")
    assert code == 0 and not (ens_dir / "disease-gazetteer").exists()
    assert Ensemble.load(ens_dir).identity == before.identity
    name = before.manifest.members[0].name
    code, _, err = run_cli("ensemble", "remove", "--ensemble", ens_dir, "--member", name)
    assert code == 2 and "is the last member of DISEASE" in err


def test_a_term_file_gazetteer_and_its_errors(tmp_path, tiny_ensemble):
    ens_dir = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
    terms = tmp_path / "terms.txt"
    terms.write_text("neumonía\n\ndiabetes mellitus\n", encoding="utf-8")
    code, out, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind", "gazetteer",
                             "--class", "DISEASE", "--terms", terms, "--name", "dict")
    assert code == 0, err
    probs = Ensemble.load(ens_dir).char_probs(["Tiene neumonía."], ["DISEASE"])[0]["DISEASE"]
    assert probs[6:14].min() >= 0.5  # the dictionary alone gives half of the mean there
    terms.write_bytes(b"neumon\xeda\n")
    code, _, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind", "gazetteer",
                           "--class", "DISEASE", "--terms", terms, "--name", "dict2")
    assert code == 2 and f"{terms}: not UTF-8" in err
    code, _, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind",
                           "token-classifier", "--class", "DISEASE", "--terms", terms)
    assert code == 2 and "needs --model and --labels" in err
    (ens_dir / "dict" / "gazetteer.json").write_text("{}")
    with pytest.raises(ValueError, match="member 'dict'.*not a gazetteer"):
        Ensemble.load(ens_dir)


def test_training_again_keeps_the_members_added(tmp_path, tiny_ensemble):
    from pipeline.training import train_ensemble
    from stage1_ensemble.config import TrainConfig
    from tests.test_stage1_models import two_docs

    ens_dir = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
    terms = tmp_path / "terms.txt"
    terms.write_text("neumonía\n", encoding="utf-8")
    assert run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind", "gazetteer", "--class",
                   "DISEASE", "--terms", terms)[0] == 0
    with_gazetteer = Ensemble.load(ens_dir).identity
    member = json.loads((ens_dir / "ensemble.json").read_text())["members"][0]
    train_ensemble(two_docs(), out=ens_dir, encoders=[member["encoder"]], classes=["DISEASE"],
                   config=TrainConfig(**member["config"]))  # every member kept: a resume
    again = Ensemble.load(ens_dir)
    assert [m.kind for m in again.manifest.members] == ["binary", "gazetteer"]
    assert again.identity == with_gazetteer


def bio_model(folder, tokenizer_from):
    """A random BERT token classifier with BIO labels of two classes (as the published
    MultiClinNER models have), sharing the tiny ensemble's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    labels = ["O", "B-DISEASE", "I-DISEASE", "B-SYMPTOM", "I-SYMPTOM"]
    torch.manual_seed(3)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    BertForTokenClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_token_classifier_member_sums_its_class_labels(tmp_path, tiny_ensemble):
    """Three members from one BIO model: O, the DISEASE labels and the SYMPTOM labels.
    Their probabilities add up to 1 at every token, so their character probabilities add up
    to 1 wherever a token lies; and each is a probability."""
    from stage1_ensemble.ensemble import Ensemble
    from tests.tiny_models import SENTENCES

    ens_dir = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
    member = json.loads((ens_dir / "ensemble.json").read_text())["members"][0]
    model = bio_model(tmp_path / "bio", ens_dir / member["path"])
    for labels, name in (("B-DISEASE,I-DISEASE=DISEASE", "d"), ("O=DISEASE", "o"),
                         ("B-SYMPTOM,I-SYMPTOM=DISEASE", "s")):
        code, out, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind",
                                 "token-classifier", "--model", model, "--labels", labels,
                                 "--name", name)
        assert code == 0, err
    ens = Ensemble.load(ens_dir)
    assert [m.kind for m in ens.manifest.members][1:] == ["token-classifier"] * 3
    parts = {}
    for name in ("d", "o", "s"):
        alone = ens.restricted([m for m in ens.manifest.members if m.name == name])
        parts[name] = alone.char_probs(SENTENCES, ["DISEASE"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    for k, text in enumerate(SENTENCES):
        total = sum(parts[n][k]["DISEASE"] for n in parts)
        covered = np.zeros(len(text), bool)  # characters under a token (a gap between
        for a, b in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]:
            covered[a:b] = True  # tokens takes its neighbours' smaller value: not a sum)
        covered &= np.array([not c.isspace() for c in text])
        assert covered.sum() > len(text) // 2
        np.testing.assert_allclose(total[covered], 1.0, atol=1e-5)
        assert all(0.0 <= parts[n][k]["DISEASE"].min() and parts[n][k]["DISEASE"].max() <= 1.0
                   for n in parts)
    code, _, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind",
                           "token-classifier", "--model", model, "--labels", "B-DIS=DISEASE")
    assert code == 2 and "labels B-DIS are not the model's" in err
    code, _, err = run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind",
                           "token-classifier", "--model", model, "--labels", "B-DISEASE")
    assert code == 2 and "as B-DISEASE,I-DISEASE=DISEASE" in err


def test_weigh_learns_how_much_a_noisy_member_counts(tmp_path, tiny_ensemble):
    """A trained member that finds the gold spans and a dictionary that also marks "fiebre
    alta" and "dolor torácico" (no diseases here): with equal weights no threshold keeps
    one out without the other; the weights found give the dictionary little say, and the
    char F1 they reach is what decoding the weighted mean gives."""
    from pipeline.documents import Span
    from pipeline.metrics import evaluate
    from pipeline.weigh import simplex
    from stage1_ensemble.decode import decode_batch
    from tests.test_pipeline import make_corpus

    ens_dir = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
    terms = tmp_path / "terms.txt"
    terms.write_text("fiebre alta\ndolor torácico\ndiabetes mellitus\n", encoding="utf-8")
    assert run_cli("ensemble", "add", "--ensemble", ens_dir, "--kind", "gazetteer",
                   "--class", "DISEASE", "--terms", terms, "--name", "noisy")[0] == 0
    corpus = make_corpus(tmp_path / "corpus", n=6, broken=False)
    before = Ensemble.load(ens_dir).identity
    code, out, err = run_cli("ensemble", "weigh", "--ensemble", ens_dir, "--gold", corpus)
    assert code == 0, err
    ens = Ensemble.load(ens_dir)
    assert ens.identity != before  # new weights: new cache keys
    weights = {m.name: m.weight for m in ens.manifest.members}
    trained = ens.manifest.members[0].name
    assert weights[trained] > weights["noisy"]
    found = ens.manifest.weighing["classes"]["DISEASE"]
    assert found["objective"] > found["before"]
    # the member trained on other notes: these are held out, every member sees them all
    assert ens.manifest.weighing["held_out"] and "trained_on_these_documents" not in found
    assert "DISEASE: " in out and f"-> {found['objective']:.4f}" in out
    # the figure recorded is the weighted ensemble's own, decoded at the threshold found
    from pipeline.readers import open_corpus

    docs = list(open_corpus(corpus, classes=("DISEASE",)))
    probs = ens.char_probs([d.text for d in docs], ["DISEASE"])
    spans = decode_batch([d.text for d in docs], [p["DISEASE"] for p in probs],
                         found["threshold"])
    pred = [Span(d.id, "DISEASE", s, e) for d, ss in zip(docs, spans) for s, e, _ in ss]
    gold = [s for d in docs for s in d.spans]
    assert round(evaluate(gold, pred).pooled.char()["f1"], 4) == found["objective"]
    assert len(simplex(3, 0.1)) == 36 and all(abs(sum(p) - 1) < 1e-9 for p in simplex(3, 0.1))


def test_weighing_on_the_corpus_a_one_fold_member_trained_on_says_so(tmp_path, tiny_ensemble):
    from pipeline.writers import write_brat
    from tests.test_stage1_models import two_docs

    ens_dir = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
    write_brat(two_docs(), tmp_path / "train")
    code, out, err = run_cli("ensemble", "weigh", "--ensemble", ens_dir, "--gold",
                             tmp_path / "train")
    assert code == 0, err
    record = Ensemble.load(ens_dir).manifest.weighing
    trained = record["classes"]["DISEASE"]["trained_on_these_documents"]
    assert record["held_out"] is False and trained == [Ensemble.load(ens_dir).manifest.members[0].name]
    assert "trained on these documents" in out


def test_a_mixed_ensemble_is_the_weighted_mean_of_its_members(tmp_path, tiny_ensemble):
    """Binary + token classifier of another tokenizer + gazetteer, weights 1, 2 and 0.5:
    the class's probabilities equal the weighted mean of each member's own, by hand."""
    from stage1_ensemble.ensemble import Ensemble
    from tests.tiny_models import SENTENCES, wordpiece_tokenizer

    ens_dir = tmp_path / "ens"
    shutil.copytree(tiny_ensemble, ens_dir, ignore=shutil.ignore_patterns("cache"))
    other = tmp_path / "other-tokenizer"  # trained on other text: other windows
    wordpiece_tokenizer(["Tos seca y fiebre.", "Dolor abdominal agudo."] * 3).save_pretrained(other)
    model = bio_model(tmp_path / "bio", other)
    terms = tmp_path / "terms.txt"
    terms.write_text("neumonía\n", encoding="utf-8")
    for args in (("--kind", "token-classifier", "--model", model, "--labels",
                  "B-DISEASE,I-DISEASE=DISEASE", "--weight", "2", "--name", "bio"),
                 ("--kind", "gazetteer", "--class", "DISEASE", "--terms", terms,
                  "--weight", "0.5", "--name", "dict")):
        code, _, err = run_cli("ensemble", "add", "--ensemble", ens_dir, *args)
        assert code == 0, err
    ens = Ensemble.load(ens_dir)
    keys = {getattr(ens.runner(m), "tokenizer_key", None) for m in ens.manifest.members}
    assert len(keys) == 3  # two tokenizers, and the gazetteer's none
    mixed = ens.char_probs(SENTENCES, ["DISEASE"])
    alone = {m.name: ens.restricted([m]).char_probs(SENTENCES, ["DISEASE"])
             for m in ens.manifest.members}
    weights = {m.name: m.weight for m in ens.manifest.members}
    for k in range(len(SENTENCES)):
        by_hand = sum(weights[n] * alone[n][k]["DISEASE"] for n in alone) / sum(weights.values())
        np.testing.assert_allclose(mixed[k]["DISEASE"], by_hand, atol=1e-6)
