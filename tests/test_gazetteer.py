from __future__ import annotations

import unicodedata

from stage1_ensemble.gazetteer import Gazetteer


def fitted(*mentions: tuple[str, str]) -> Gazetteer:
    return Gazetteer().fit((cls, text, 0, len(text)) for cls, text in mentions)


def found(gaz: Gazetteer, text: str, cls: str) -> list[str]:
    spans = gaz.predict(text, cls)
    assert all(score == 1.0 for _, _, score in spans)
    return [text[s:e] for s, e, _ in spans]


def test_longest_match_first_case_insensitive_on_word_boundaries():
    gaz = fitted(("DISEASE", "insuficiencia cardiaca"), ("DISEASE", "Insuficiencia"),
                 ("SYMPTOM", " disnea "), ("SYMPTOM", "tos"))
    text = "INSUFICIENCIA CARDIACA con disnea; tos seca, sin toser. Insuficiencia renal."
    assert found(gaz, text, "DISEASE") == ["INSUFICIENCIA CARDIACA", "Insuficiencia"]
    # "tos" inside "toser" is no match; the mention was stripped of its spaces
    assert found(gaz, text, "SYMPTOM") == ["disnea", "tos"]
    assert found(gaz, text, "PROCEDURE") == []
    assert found(gaz, "", "DISEASE") == []
    # a longer term that would run past the last word does not hide a shorter one
    gaz = fitted(("SYMPTOM", "tos seca persistente"), ("SYMPTOM", "tos"))
    assert found(gaz, "fiebre y tos", "SYMPTOM") == ["tos"]
    assert found(gaz, "Tos seca persistente.", "SYMPTOM") == ["Tos seca persistente"]


def test_matches_keep_offsets_when_lowering_changes_a_letters_length():
    gaz = fitted(("DISEASE", "asma"))
    text = "İ asma"  # "İ".lower() is two characters
    assert found(gaz, text, "DISEASE") == ["asma"]


def test_decomposed_text_matches_whole_words_with_their_accents():
    nfd = unicodedata.normalize("NFD", "srdeční selhání")
    gaz = fitted(("DISEASE", nfd), ("SYMPTOM", unicodedata.normalize("NFD", "č")))
    text = unicodedata.normalize("NFD", "akutní srdeční selhání")
    assert found(gaz, text, "DISEASE") == [nfd]
    # a letter alone is no word of its own inside a decomposed word
    assert found(gaz, text, "SYMPTOM") == []


def test_composed_and_decomposed_forms_match_each_other():
    nfc = "neumonía"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    text = f"{nfd} y {nfc}"
    for term in (nfc, nfd):
        assert found(fitted(("DISEASE", term)), text, "DISEASE") == [nfd, nfc]
