from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from stage1_ensemble import decode_spans
from stage1_ensemble.project import Projection, project, weighted_mean
from tests.reference_decode import python_decode, python_project


def probs_for(text: str, positive: list[str], high: float = 0.9, low: float = 0.1) -> np.ndarray:
    p = np.full(len(text), low, dtype=np.float32)
    for word in positive:
        i = text.index(word)
        p[i : i + len(word)] = high
    return p


def test_planted_peak_gives_exact_span_and_mean_score():
    text = "Paciente con disnea grave."
    p = probs_for(text, ["disnea"])
    p[13] = 0.7
    (span,) = decode_spans(text, p, 0.5)
    assert text[span[0] : span[1]] == "disnea"
    assert span[2] == pytest.approx((0.7 + 5 * 0.9) / 6, abs=1e-6)


def test_partial_word_expands_to_whole_word_and_trims_spaces():
    text = "Dolor  torácico."
    p = np.zeros(len(text), dtype=np.float32)
    p[2:4] = 0.8  # inside "Dolor"
    p[5:10] = 0.8  # the two spaces and "tor"
    spans = decode_spans(text, p, 0.5)
    # "lo" grows to "Dolor"; "  tor" grows to "  torácico" and loses its spaces; the
    # two spans do not touch (the spaces between them are not in either)
    assert [text[s:e] for s, e, _ in spans] == ["Dolor", "torácico"]
    p[4] = 0.8  # now one run from "lo" to "tor"
    assert [text[s:e] for s, e, _ in decode_spans(text, p, 0.5)] == ["Dolor  torácico"]


def test_spaces_join_only_when_both_sides_positive():
    text = "dolor torácico"
    windows = [(np.array([[0, 5], [6, 14]]), np.array([0.9, 0.9]))]
    assert [text[s:e] for s, e, _ in decode_spans(text, project(text, windows), 0.5)] == [text]
    windows = [(np.array([[0, 5], [6, 14]]), np.array([0.9, 0.2]))]
    assert [text[s:e] for s, e, _ in decode_spans(text, project(text, windows), 0.5)] == ["dolor"]


def test_subword_pieces_of_one_word():
    text = "hipertensión arterial"
    # pieces "hiper" "tensión": only the second is positive; the span is the whole word
    windows = [(np.array([[0, 5], [5, 12], [13, 21]]), np.array([0.2, 0.9, 0.1]))]
    spans = decode_spans(text, project(text, windows), 0.5)
    assert [text[s:e] for s, e, _ in spans] == ["hipertensión"]


def test_crlf_and_diacritics_of_several_languages():
    text = "Pacientul are durere\r\nţesut şi švédština ärr"
    for word in ["durere", "ţesut", "švédština", "ärr"]:
        p = probs_for(text, [word[1:]])  # all but the first letter: expansion adds it
        spans = decode_spans(text, p, 0.5)
        assert [text[s:e] for s, e, _ in spans] == [word]
    p = probs_for(text, ["durere\r\nţesut"])
    assert [text[s:e] for s, e, _ in decode_spans(text, p, 0.5)] == ["durere\r\nţesut"]


def test_decomposed_diacritics_stay_with_their_letters():
    # NFD, as some systems write files: "š" is "s" + U+030C, "ý" is "y" + U+0301
    text = unicodedata.normalize("NFD", "pacient má rozšířený srdeční sval")
    assert len(text) == 40
    for word in ["rozšířený", "srdeční"]:
        word = unicodedata.normalize("NFD", word)
        i = text.index(word)
        for lo, hi in [(0, 2), (3, 5), (4, 6), (len(word) - 2, len(word) - 1)]:
            p = np.zeros(len(text), dtype=np.float32)
            p[i + lo : i + hi] = 0.9  # a run that starts or ends at an accent, or inside
            assert [text[s:e] for s, e, _ in decode_spans(text, p, 0.5)] == [word]
    # XLM-R's offsets leave a word's final accent to no token: it stays with its word
    text = unicodedata.normalize("NFD", "rozšířený sval")
    assert text[11:13] == "y\u0301"
    windows = [(np.array([[0, 11], [11, 12], [13, 18]]), np.array([0.9, 0.9, 0.1]))]
    spans = decode_spans(text, project(text, windows), 0.5)
    assert [text[s:e] for s, e, _ in spans] == [text[:13]]


def test_touching_spans_merge_and_separate_spans_do_not():
    text = "tos-fiebre y cefalea"
    p = probs_for(text, ["tos", "fiebre", "cefalea"])
    assert [text[s:e] for s, e, _ in decode_spans(text, p, 0.5)] == ["tos", "fiebre", "cefalea"]
    p[3] = 0.9  # the hyphen too: one run
    assert [text[s:e] for s, e, _ in decode_spans(text, p, 0.5)][0] == "tos-fiebre"
    # expansion makes two runs overlap: they merge
    p = np.zeros(len(text), dtype=np.float32)
    p[0:2] = 0.9
    p[2:3] = 0.1
    p[3:6] = 0.9  # "-fi": expands to "fiebre", touching "tos" at the hyphen
    assert [text[s:e] for s, e, _ in decode_spans(text, p, 0.5)] == ["tos-fiebre"]


def test_character_covered_by_two_windows_takes_the_mean():
    text = "abc def"
    windows = [(np.array([[0, 3], [4, 7]]), np.array([0.2, 0.6])),
               (np.array([[4, 7]]), np.array([1.0]))]
    probs = project(text, windows)
    assert probs[4:7] == pytest.approx([0.8] * 3)
    assert probs[3] == pytest.approx(0.2)  # the space: min of its neighbours


def test_special_tokens_zero_width_and_whitespace_tokens_carry_nothing():
    text = "a b"
    windows = [(np.array([[0, 0], [0, 1], [1, 2], [2, 3], [0, 0]]),
                np.array([1.0, 0.3, 1.0, 0.4, 1.0]))]
    probs = project(text, windows)
    assert probs.tolist() == pytest.approx([0.3, 0.3, 0.4])


def test_leading_space_in_token_offsets_is_not_the_words():
    text = "con disnea"
    windows = [(np.array([[0, 3], [3, 10]]), np.array([0.1, 0.9]))]  # " disnea" with its space
    probs = project(text, windows)
    assert probs[3] == pytest.approx(0.1)
    assert [text[s:e] for s, e, _ in decode_spans(text, probs, 0.5)] == ["disnea"]


def test_thresholds_are_monotone():
    rng = np.random.default_rng(0)
    text = "El paciente presenta dolor abdominal, fiebre y náuseas desde ayer por la noche."
    p = rng.random(len(text)).astype(np.float32)
    previous = None
    for t in np.linspace(0.05, 0.95, 19):
        chars = {i for s, e, _ in decode_spans(text, p, float(t)) for i in range(s, e)}
        if previous is not None:
            assert chars <= previous
        previous = chars


def test_empty_and_whitespace_texts_and_bad_shapes():
    assert decode_spans("", np.zeros(0), 0.5) == []
    assert decode_spans("   \n ", np.ones(5), 0.5) == []
    with pytest.raises(ValueError, match="shape"):
        decode_spans("abc", np.zeros(2), 0.5)
    assert project("", []).shape == (0,)


def test_uncovered_edges_and_weighted_mean():
    # characters no token covers take the smaller of their covered neighbours, 0 at an edge
    windows = [(np.array([[1, 2], [4, 5]]), np.array([0.5, 0.9]))]
    assert project("x1yy2z", windows).tolist() == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.9, 0.0])
    # a character under two windows gets their mean
    windows.append((np.array([[4, 6]]), np.array([0.3])))
    assert project("x1yy2z", windows).tolist() == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.6, 0.3])
    mean = weighted_mean([np.array([0.0, 1.0]), np.array([1.0, 1.0])], [1.0, 3.0])
    assert mean.tolist() == pytest.approx([0.75, 1.0])


@pytest.mark.parametrize("chunk_chars", [1 << 19, 7])
def test_batch_projection_and_decoding_equal_one_text_at_a_time(chunk_chars, monkeypatch):
    from stage1_ensemble import chars, decode_batch, project_batch

    monkeypatch.setattr(chars, "CHUNK_CHARS", chunk_chars)  # 7: texts in several pieces

    rng = np.random.default_rng(1)
    texts = ["  dolor torácico ", "", "fiebre", "a b c\r\nd", "   "]
    windows = []
    for i, text in enumerate(texts):
        for _ in range(2):  # two overlapping windows per text
            cuts = sorted(set(rng.integers(0, len(text) + 1, size=4).tolist()))
            offs = np.array([[0, 0]] + [[a, b] for a, b in zip(cuts, cuts[1:])] + [[0, 0]])
            windows.append((i, offs, rng.random(len(offs))))
    batch = project_batch(texts, [d for d, _, _ in windows], [o for _, o, _ in windows],
                          [p for _, _, p in windows])
    single = [project(t, [(o, p) for d, o, p in windows if d == i]) for i, t in enumerate(texts)]
    for a, b in zip(batch, single):
        assert a == pytest.approx(b)
    # the same windows as padded arrays, in shuffled order, as inference may hand them over
    order = rng.permutation(len(windows))
    width = max(len(o) for _, o, _ in windows)
    offsets = np.zeros((len(windows), width, 2), dtype=np.int64)
    probs = np.zeros((len(windows), width), dtype=np.float32)
    for row, w in enumerate(order.tolist()):
        _, o, p = windows[w]
        offsets[row, : len(o)], probs[row, : len(p)] = o, p
    padded = project_batch(texts, [windows[w][0] for w in order.tolist()], offsets, probs)
    for a, b in zip(padded, single):
        assert a == pytest.approx(b, abs=1e-6)
    # members sharing these windows, averaged per segment, as averaged per character
    doc_index = [windows[w][0] for w in order.tolist()]
    projection = Projection(texts, doc_index, offsets)
    members = [probs, rng.random(probs.shape).astype(np.float32) * (offsets[..., 1] > 0)]
    each = [projection(p) for p in members]
    mean = projection.mean(members, [1.0, 3.0])
    for i in range(len(texts)):
        assert mean[i] == pytest.approx(weighted_mean([e[i] for e in each], [1.0, 3.0]),
                                        abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        projection(probs[:, :-1])
    with pytest.raises(ValueError, match="windows"):
        Projection(texts, doc_index, [o for _, o, _ in windows])(
            [p[:-1] for _, _, p in windows])
    for t in (0.3, 0.5, 0.7):
        assert decode_batch(texts, single, t) == [decode_spans(x, p, t)
                                                  for x, p in zip(texts, single)]
    assert decode_batch([], [], 0.5) == []


ALPHABET = ["a", "b", "Z", "7", "ţ", "š", "ä", "é", " ", " ", "\n", "\r\n", "\t", "-", ".",
            ",", "\u00a0", "\U0001d400", "\U0001f600", "\x00",  # 𝐀 is a letter, 😀 is not
            "\u030c", "\u0301", "\u0903", "\U0001d167"]  # combining marks (Mn, Mc; one astral)


@pytest.mark.parametrize("seed", range(40))
def test_arrays_agree_with_the_per_character_rules(seed):
    rng = np.random.default_rng(seed)
    text = "".join(rng.choice(ALPHABET, size=int(rng.integers(0, 60))).tolist())
    windows = []
    for _ in range(int(rng.integers(0, 4))):  # overlapping windows of random pieces
        cuts = sorted(set(rng.integers(0, len(text) + 1, size=int(rng.integers(1, 30))).tolist()))
        offs = np.array([[a, b] for a, b in zip(cuts, cuts[1:])] + [[0, 0]]).reshape(-1, 2)
        windows.append((offs, rng.random(len(offs))))
    expected = python_project(text, windows)
    got = project(text, windows)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    for threshold in (0.2, 0.5, 0.8):
        want = python_decode(text, expected, threshold)
        spans = decode_spans(text, np.asarray(expected, dtype=np.float32), threshold)
        assert [(s, e) for s, e, _ in spans] == [(s, e) for s, e, _ in want]
        assert [x for _, _, x in spans] == pytest.approx([x for _, _, x in want], abs=1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64])
def test_running_total_is_a_cumulative_sum(dtype):
    from stage1_ensemble.chars import running_total

    rng = np.random.default_rng(1)
    for values in (np.zeros(0, dtype=bool), rng.random(1000) < 0.3, rng.integers(-5, 5, 777),
                   rng.random(5000)):
        if dtype != np.float64 and values.dtype.kind == "f":
            continue
        got = running_total(values, dtype)
        assert got.dtype == dtype and got.shape == values.shape
        np.testing.assert_allclose(got, np.cumsum(values, dtype=dtype), rtol=1e-12)
