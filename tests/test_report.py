"""The error-analysis page: its data agree with the metrics, its text is escaped and its
highlights sit exactly on text[start:end]; in a real browser (marker ``browser``) its
filters work."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.documents import Document, Span
from pipeline.metrics import evaluate
from pipeline.report import build_report, counts_of, judge_spans, render
from tests.cli_inprocess import run_cli

NASTY = ("Paciente con <script>alert(1)</script> & \"fiebre\" 'alta'\r\n"
         "😷 disnea; " + unicodedata.normalize("NFD", "cefalea intensa") + " y tos.")


def nasty_document() -> tuple[Document, list[Span]]:
    def span(word, label, shift=0, **scores):
        start = NASTY.index(word) + shift
        return Span("n", label, start, start + len(word) - shift, **scores)

    gold = [span("fiebre", "SYMPTOM"), span("disnea", "SYMPTOM"),
            span(unicodedata.normalize("NFD", "cefalea intensa"), "SYMPTOM"),
            span("<script>", "DISEASE"), span("tos", "SYMPTOM")]
    pred = [Span("n", "SYMPTOM", NASTY.index("fiebre"), NASTY.index("fiebre") + 6, 0.9, 0.8),
            span("😷 disnea", "SYMPTOM", stage1_score=0.7),  # boundary: the emoji too
            span(unicodedata.normalize("NFD", "cefalea"), "SYMPTOM"),  # boundary, shorter
            span("<script>", "PROCEDURE"),  # wrong class
            span("alta", "DISEASE")]  # spurious
    return Document("n", NASTY, lang="es", spans=gold), pred


def dropped_of_nasty() -> list[Span]:
    """What a judge turned down: "tos" (a gold span: wrongly) and "Paciente" (rightly)."""
    return [Span("n", "SYMPTOM", NASTY.index("tos"), NASTY.index("tos") + 3, 0.5, 0.2),
            Span("n", "SYMPTOM", 0, 8, 0.4, 0.1)]


class Segments(HTMLParser):
    """The highlighted pieces of ``render``'s HTML: (start, end, text shown)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.pieces, self.tags, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "span" and "data-s" in a:
            self._open = [int(a["data-s"]), int(a["data-e"]), ""]

    def handle_endtag(self, tag):
        if tag == "span" and self._open:
            self.pieces.append(tuple(self._open))
            self._open = None

    def handle_data(self, data):
        if self._open:
            self._open[2] += data


def test_text_is_escaped_and_every_highlight_is_text_start_end():
    doc, pred = nasty_document()
    page = render(doc, pred, doc.spans)
    assert "<script" not in page and "&lt;script&gt;" in page
    shown = html.unescape(re.sub(r"<[^>]+>", "", page.split("</style>", 1)[1]))
    assert shown == NASTY  # the whole text, CRLF and all, and nothing else
    parser = Segments()
    parser.feed(page)
    assert "script" not in parser.tags
    pieces = {(s, e): text for s, e, text in parser.pieces}
    for span in doc.spans + pred:  # the pieces inside a span, joined, are its text
        inside = "".join(t for (s, e), t in sorted(pieces.items())
                         if span.start <= s and e <= span.end)
        assert inside == NASTY[span.start:span.end], span


def test_each_prediction_and_gold_span_gets_its_type():
    doc, pred = nasty_document()
    types = {(j.kind, NASTY[j.span.start:j.span.end], j.span.label): j.type
             for j in judge_spans(doc.spans, pred)}
    assert types[("pred", "fiebre", "SYMPTOM")] == "exact"
    assert types[("pred", "😷 disnea", "SYMPTOM")] == "boundary"
    assert types[("pred", "<script>", "PROCEDURE")] == "wrong class"
    assert types[("pred", "alta", "DISEASE")] == "spurious"
    assert types[("gold", "fiebre", "SYMPTOM")] == "found"
    assert types[("gold", "disnea", "SYMPTOM")] == "partly found"
    assert types[("gold", "<script>", "DISEASE")] == "missed"
    assert types[("gold", "tos", "SYMPTOM")] == "missed"
    dropped = {NASTY[j.span.start:j.span.end]: j.type
               for j in judge_spans(doc.spans, pred, dropped_of_nasty()) if j.kind == "dropped"}
    assert dropped == {"tos": "dropped but right", "Paciente": "dropped"}


def embedded(page: str) -> dict:
    (raw,) = re.findall(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    return json.loads(raw)


def test_the_page_data_agree_with_the_metrics(shared_data):
    """Counts per class recomputed from the page's embedded data equal evaluate's, on real
    gold with predictions made from it by shifting, dropping and relabelling spans."""
    import random

    from pipeline.readers import open_corpus

    docs = list(open_corpus(shared_data / "cardioccc_dev"))[:40]
    rng, pred = random.Random(1), []
    for d in docs:
        for s in d.spans:
            roll = rng.random()
            if roll < 0.5:
                pred.append(s)
            elif roll < 0.7:
                pred.append(Span(s.doc_id, s.label, s.start, min(len(d.text), s.end + 3)))
            elif roll < 0.8:
                pred.append(Span(s.doc_id, "PROCEDURE" if s.label != "PROCEDURE" else "DISEASE",
                                 s.start, s.end))
        pred.append(Span(d.id, "DISEASE", 0, 4))
        pred.append(Span(d.id, "DISEASE", 0, 4))  # a duplicate: counted once, as the metrics do
    page = build_report(docs, pred)
    counts = counts_of(embedded(page))
    gold = [s for d in docs for s in d.spans]
    for label, c in counts.items():
        r = evaluate([s for s in gold if s.label == label], [s for s in pred if s.label == label])
        assert (c["tp"], c["fp"], c["fn"]) == (r.pooled.tp, r.pooled.fp, r.pooled.fn), label
        assert (c["n_gold"], c["n_pred"]) == (r.pooled.n_gold, r.pooled.n_pred), label
    assert embedded(page)["summary"] == evaluate(
        gold, pred, lang_of={d.id: d.lang for d in docs}).as_dict()


def test_report_command_on_a_run_with_its_ablation_and_thresholds(tmp_path, tiny_ensemble,
                                                                  tiny_llm_dir):
    from tests.test_pipeline import make_corpus

    corpus = make_corpus(tmp_path / "corpus", n=6, broken=False)
    common = ("--ensemble", tiny_ensemble, "--cache-dir", tmp_path / "cache", "--llm",
              tiny_llm_dir, "--llm-backend", "hf")
    assert run_cli("tune", *common, "--gold", corpus, "--out", tmp_path / "t.json",
                   "--t1-grid", "0.3,0.6")[0] == 0
    assert run_cli("ablate", *common, "--gold", corpus, "--thresholds", tmp_path / "t.json",
                   "--out", tmp_path / "abl")[0] == 0
    assert run_cli("run", *common, "--input", corpus, "--output", tmp_path / "run",
                   "--thresholds", tmp_path / "t.json")[0] == 0
    code, out, err = run_cli("report", "--gold", corpus, "--pred", tmp_path / "run",
                             "--ablation", tmp_path / "abl", "--thresholds", tmp_path / "t.json",
                             "--out", tmp_path / "report.html")
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    data = embedded(page)
    assert len(data["documents"]) == 7  # and the empty one
    assert any(s["s1"] is not None for d in data["documents"] for s in d["spans"])
    assert page.count("data:image/png;base64,") == 2  # curves and heat map, inline
    assert "http" not in page.replace("https://", "").split("<script", 1)[0]  # nothing to fetch


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump(browser: str, page: Path, address: str = "") -> tuple[str, str]:
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri() + address],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, out.stderr


@pytest.mark.browser
def test_in_a_real_browser_the_filters_change_what_is_shown(tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium (apt-get install chromium)")
    doc, pred = nasty_document()
    other = Document("plain", "Dolor torácico sin fiebre.", lang="en",
                     spans=[Span("plain", "SYMPTOM", 0, 14)])
    pred.append(Span("plain", "SYMPTOM", 0, 14))
    page = tmp_path / "report.html"
    page.write_text(build_report([doc, other], pred, dropped=dropped_of_nasty()),
                    encoding="utf-8")

    def shown(address: str = "") -> list[str]:
        dom, log = dump(browser, page, address)
        assert "Uncaught" not in log and "alert(1)" not in log, log[-2000:]
        return re.findall(r'<div class="doc" data-id="([^"]+)"', dom)

    assert shown() == ["n", "plain"]
    assert shown("#type=missed") == ["n"]  # only n has a missed gold span
    assert shown("#lang=en") == ["plain"]
    assert shown("#q=tor%C3%A1cico") == ["plain"]
    assert shown("#judge=kept-wrong") == []  # no prediction here has a stage-2 score but 0.8
    assert shown("#judge=dropped-right") == ["n"]  # "tos"
    dom, _ = dump(browser, page)
    assert "&lt;script&gt;" in dom and "alert(1)&lt;/script&gt;" in dom  # text, run as nothing
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
