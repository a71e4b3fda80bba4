from __future__ import annotations

import random

import pytest

from pipeline.documents import Span
from pipeline.metrics import best_overlaps, evaluate
from pipeline.readers import open_corpus
from tests.reference_metrics import quadratic_scores


def S(doc, label, start, end):
    return Span(doc, label, start, end)


def test_split_span_scores_two_thirds_per_half():
    gold = [S("d", "DISEASE", 0, 6)]
    pred = [S("d", "DISEASE", 0, 3), S("d", "DISEASE", 3, 6)]
    r = evaluate(gold, pred).as_dict()
    assert r["char_f1"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["char_f1"]["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["strict"]["tp"] == 0 and r["strict"]["fp"] == 2 and r["strict"]["fn"] == 1


def test_duplicate_gold_rows_count_twice_duplicate_predictions_once():
    gold = [S("d", "DISEASE", 0, 4), S("d", "DISEASE", 0, 4)]
    pred = [S("d", "DISEASE", 0, 4)] * 3
    r = evaluate(gold, pred).as_dict()
    assert r["strict"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "tp": 1, "fp": 0, "fn": 1}
    assert r["char_f1"]["n_gold"] == 2 and r["char_f1"]["n_pred"] == 1
    assert r["char_f1"]["recall"] == 1.0


def test_empty_predictions_score_zero_not_nan():
    r = evaluate([S("d", "DISEASE", 0, 4)], []).as_dict()
    assert r["strict"]["precision"] == 0.0 and r["strict"]["f1"] == 0.0
    assert r["char_f1"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n_gold": 1, "n_pred": 0}


def test_labels_are_case_sensitive():
    r = evaluate([S("d", "DISEASE", 0, 4)], [S("d", "disease", 0, 4)]).as_dict()
    assert r["strict"]["tp"] == 0 and r["char_f1"]["f1"] == 0.0


def test_entity_filter_and_slices():
    gold = [S("a", "DISEASE", 0, 4), S("b", "SYMPTOM", 0, 4)]
    pred = [S("a", "DISEASE", 0, 4)]
    r = evaluate(gold, pred, lang_of={"a": "es", "b": "en"}).as_dict()
    names = [(s["slice"], s["value"], s["strict"]["tp"]) for s in r["slices"]]
    assert names == [("class", "DISEASE", 1), ("class", "SYMPTOM", 0),
                     ("language", "en", 0), ("language", "es", 1)]
    only = evaluate(gold, pred, entity="DISEASE").as_dict()
    assert only["strict"]["f1"] == 1.0 and "slices" not in only


def test_sweep_equals_pairwise_on_random_intervals():
    rng = random.Random(0)
    for _ in range(200):
        gold = [(s, s + rng.randint(1, 8)) for s in (rng.randint(0, 40) for _ in range(rng.randint(0, 8)))]
        pred = [(s, s + rng.randint(1, 8)) for s in (rng.randint(0, 40) for _ in range(rng.randint(0, 8)))]
        bg, bp = best_overlaps(gold, pred)

        def dice(a, b):
            inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
            return 2 * inter / (a[1] - a[0] + b[1] - b[0])

        assert bg == pytest.approx([max([dice(g, p) for p in pred] + [0.0]) for g in gold])
        assert bp == pytest.approx([max([dice(g, p) for g in gold] + [0.0]) for p in pred])


def perturb(spans: list[Span], seed: int) -> list[Span]:
    """Shifted boundaries, dropped spans, spurious spans, duplicates and wrong labels."""
    rng = random.Random(seed)
    out = []
    for s in spans:
        roll = rng.random()
        if roll < 0.1:
            continue
        if roll < 0.25:
            s = Span(s.doc_id, s.label, max(0, s.start + rng.randint(-3, 3)),
                     s.end + rng.randint(1, 4))
        elif roll < 0.3:
            s = Span(s.doc_id, rng.choice(["DISEASE", "SYMPTOM", "PROCEDURE"]), s.start, s.end)
        out.append(s)
        if roll > 0.95:
            out.append(s)
            out.append(Span(s.doc_id, s.label, s.end + 2, s.end + rng.randint(3, 30)))
    return out


@pytest.mark.parametrize("corpus", ["spaccc_train", "cardioccc_dev"])
def test_agrees_with_quadratic_scorer_on_real_data(shared_data, corpus):
    docs = list(open_corpus(shared_data / corpus))[:60]
    gold = [s for d in docs for s in d.spans]
    pred = perturb(gold, seed=1)
    for label in (None, "DISEASE", "SYMPTOM", "PROCEDURE"):
        g = [s.key for s in gold if label in (None, s.label)]
        p = [s.key for s in pred if label in (None, s.label)]
        want = quadratic_scores(g, p)
        got = evaluate(gold, pred, entity=label).as_dict()
        for part in ("strict", "char_f1"):
            for key, value in want[part].items():
                assert got[part][key] == pytest.approx(value, abs=1e-4), (label, part, key)
