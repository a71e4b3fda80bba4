"""Error analysis you can look at: each prediction sorted against gold, the documents with
their spans highlighted, and one self-contained HTML page (``pipeline report``).

``render(doc, spans, gold)`` gives the highlighted HTML of one text (in a notebook:
``IPython.display.HTML(render(...))``). Text is escaped here, in Python, and offsets are
Python's (characters), so a highlighted piece is exactly ``text[start:end]`` whatever
the text holds: markup, an emoji, a decomposed accent.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.documents import Document, Span
from pipeline.metrics import evaluate

# What a prediction is, against the gold spans of its document
EXACT, BOUNDARY, WRONG_CLASS, SPURIOUS = "exact", "boundary", "wrong class", "spurious"
# What a gold span is, against the predictions
FOUND, PARTLY, MISSED = "found", "partly found", "missed"
# A candidate the judge turned down: a gold span's class and offsets, or not
DROPPED_RIGHT, DROPPED = "dropped but right", "dropped"
PREDICTION_TYPES = (EXACT, BOUNDARY, WRONG_CLASS, SPURIOUS)
GOLD_TYPES = (FOUND, PARTLY, MISSED)
DROPPED_TYPES = (DROPPED_RIGHT, DROPPED)
COLOURS = {"DISEASE": "#e4572e", "SYMPTOM": "#17a398", "PROCEDURE": "#5b5fc7"}


@dataclass(frozen=True)
class Judged:
    """A span with what it is: ``kind`` "pred", "gold" or "dropped" (a candidate the
    judge turned down), ``type`` one of the types above."""

    span: Span
    kind: str
    type: str


def overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def judge_spans(gold: Sequence[Span], pred: Sequence[Span],
                dropped: Sequence[Span] = ()) -> list[Judged]:
    """Each prediction (de-duplicated, as the metrics count them), each gold span and each
    candidate the judge dropped, of one document, with its type. A prediction is exact
    (its class and offsets are a gold span's), a boundary error (it overlaps a gold span
    of its class), of the wrong class (it overlaps gold of another class only) or spurious
    (it overlaps no gold)."""
    pred = list({s.key: s for s in pred}.values())
    exact = {s.key for s in gold}
    out = []
    for p in pred:
        if p.key in exact:
            kind = EXACT
        elif any(g.label == p.label and overlaps(g, p) for g in gold):
            kind = BOUNDARY
        elif any(overlaps(g, p) for g in gold):
            kind = WRONG_CLASS
        else:
            kind = SPURIOUS
        out.append(Judged(p, "pred", kind))
    found = {s.key for s in pred}
    for g in gold:
        if g.key in found:
            kind = FOUND
        elif any(p.label == g.label and overlaps(g, p) for p in pred):
            kind = PARTLY
        else:
            kind = MISSED
        out.append(Judged(g, "gold", kind))
    for d in {s.key: s for s in dropped}.values():
        out.append(Judged(d, "dropped", DROPPED_RIGHT if d.key in exact else DROPPED))
    return out


def render(doc: Document | str, spans: Iterable[Span] = (), gold: Iterable[Span] = (),
           *, judged: Sequence[Judged] | None = None, style: bool = True,
           titles: bool = True) -> str:
    """The text with its spans highlighted, as an HTML fragment (with its own styles).
    Predictions are shaded in their class's colour, gold spans underlined; where gold is
    given, each is marked with what it is (exact, boundary, ... ; missed), and its scores
    and type show on hover."""
    if isinstance(doc, str):
        doc = Document("text", doc)
    text = doc.text
    if judged is None:
        spans, gold = list(spans), list(gold)
        judged = judge_spans(gold, spans) if gold else [Judged(s, "pred", "") for s in spans]
    cuts = sorted({0, len(text), *(j.span.start for j in judged), *(j.span.end for j in judged)})
    parts = [STYLE] if style else []
    for a, b in zip(cuts, cuts[1:]):
        piece = html.escape(text[a:b])
        covering = [j for j in judged if j.span.start <= a and b <= j.span.end]
        if not covering:
            parts.append(piece)
            continue
        # p-/g-CLASS: shaded / underlined in the class's colour (STYLE); t-TYPE: framed
        marks = {f"{j.kind[0]}-{css_name(j.span.label)}" for j in covering}
        marks |= {f"t-{css_name(j.type)}" for j in covering if j.type}
        tip = "; ".join(describe(j, text) for j in covering)  # the page makes it on hover
        title = f' title="{html.escape(tip)}"' if titles else ""
        parts.append(f'<span class="m {" ".join(sorted(marks))}" data-s="{a}" data-e="{b}"'
                     f'{title}>{piece}</span>')
    return f'<div class="doc-text">{"".join(parts)}</div>'


def describe(j: Judged, text: str) -> str:
    s = j.span
    scores = "".join(f", {name} {v:.3f}" for name, v in (("stage 1", s.stage1_score),
                                                         ("stage 2", s.stage2_score))
                     if v is not None)
    what = f" {j.type}" if j.type else ""
    return f"{j.kind} {s.label} {s.start}-{s.end}{what}{scores}: {text[s.start:s.end]!r}"


def css_name(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


STYLE = ("<style>.doc-text{white-space:pre-wrap;font-family:sans-serif;line-height:1.9}"
         ".doc-text .m{border-radius:2px}.doc-text .t-boundary,.doc-text .t-wrong-class{"
         "outline:1px dashed #b58900}.doc-text .t-spurious{outline:1px dotted #d33682}"
         ".doc-text .t-missed{outline:1px solid #d33682}"
         ".doc-text [class*=' p-']{background:#9993}"
         ".doc-text [class*=' g-']{border-bottom:2px solid #999}"
         ".doc-text [class*=' d-']{text-decoration:line-through #999}"
         + "".join(f".doc-text .p-{c}{{background:{colour}33}}"
                   f".doc-text .g-{c}{{border-bottom:2px solid {colour}}}"
                   f".doc-text .d-{c}{{text-decoration:line-through {colour}}}"
                   for c, colour in COLOURS.items()) + "</style>")


def page_data(docs: Sequence[Document], pred: Iterable[Span],
              dropped: Iterable[Span] = ()) -> dict:
    """What the page shows, as plain data: per document its text's HTML, its spans with
    their types and scores; the counts per class and type; the most frequent errors."""
    pred_by: dict[str, list[Span]] = defaultdict(list)
    for s in pred:
        pred_by[s.doc_id].append(s)
    dropped_by: dict[str, list[Span]] = defaultdict(list)
    for s in dropped:
        dropped_by[s.doc_id].append(s)
    out_docs, frequent = [], defaultdict(Counter)
    for doc in docs:
        own, turned_down = pred_by.get(doc.id, []), dropped_by.get(doc.id, [])
        if doc.entity_class:  # a text of one class: predictions of its class only count
            own = [s for s in own if s.label == doc.entity_class]
            turned_down = [s for s in turned_down if s.label == doc.entity_class]
        judged = judge_spans(doc.spans, own, turned_down)
        spans = [{"kind": j.kind, "type": j.type, "label": j.span.label,
                  "start": j.span.start, "end": j.span.end, "s1": j.span.stage1_score,
                  "s2": j.span.stage2_score} for j in judged]
        for j in judged:
            if j.type not in (EXACT, FOUND, DROPPED):
                frequent[j.type][(j.span.label, doc.text[j.span.start:j.span.end])] += 1
        out_docs.append({"id": doc.id, "lang": doc.lang, "class": doc.entity_class,
                         "text": doc.text,
                         "html": render(doc, judged=judged, style=False, titles=False),
                         "spans": spans})
    return {"documents": out_docs,
            "frequent": {t: [{"label": lab, "text": txt, "count": n}
                             for (lab, txt), n in c.most_common(20)]
                         for t, c in frequent.items()}}


def counts_of(data: dict) -> dict:
    """Per class: tp, fp, fn, n_gold, n_pred and each type's count, from the page's data
    alone (the test recomputes the metrics from them)."""
    out: dict = defaultdict(Counter)
    for doc in data["documents"]:
        for s in doc["spans"]:
            c = out[s["label"]]
            c[s["type"]] += 1
            if s["kind"] != "dropped":  # not a prediction: the metrics never see it
                c["n_pred" if s["kind"] == "pred" else "n_gold"] += 1
    for c in out.values():
        c["tp"] = c[EXACT]
        c["fp"] = c["n_pred"] - c[EXACT]
        c["fn"] = c["n_gold"] - c[FOUND]
    return {k: dict(v) for k, v in sorted(out.items())}


def png_data(figure_writer, *args) -> str:
    """A matplotlib figure that ``figure_writer(*args, path)`` writes, as a data: URL."""
    buffer = io.BytesIO()
    figure_writer(*args, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def dropped_candidates(run: Path) -> list[Span]:
    """The candidates the judge turned down in the run of output folder ``run`` (its part
    files record them; a run without an LLM, or an older one, has none)."""
    from pipeline.run import iter_records

    return [Span(r["id"], d["label"], d["start"], d["end"], d.get("stage1_score"),
                 d.get("stage2_score"))
            for r in iter_records([Path(run)]) for d in r.get("dropped", ())]


def build_report(docs: Sequence[Document], pred: Sequence[Span], *,
                 dropped: Sequence[Span] = (),
                 ablation: dict | None = None, thresholds: dict | None = None,
                 heatmap: Path | None = None, title: str = "Error analysis",
                 lang_of: dict | None = None, page_size: int = 25) -> str:
    """The whole page: summary figures, curves, heat map, documents, filters. Documents
    are drawn ``page_size`` at a time, from data embedded in the page, so that a page of
    thousands of documents opens as fast as one of a few."""
    from pipeline.ablate import plot

    gold = [s for d in docs for s in d.spans]
    figures = evaluate(gold, pred, lang_of=lang_of or {d.id: d.lang for d in docs}).as_dict()
    data = page_data(docs, pred, dropped)
    data["summary"] = figures
    data["counts"] = counts_of(data)
    data["thresholds"] = thresholds
    images = []
    if ablation and ablation.get("curves"):
        images.append(("Precision-recall curves (char)", png_data(plot, ablation)))
    if heatmap is not None and Path(heatmap).is_file():
        images.append(("Objective over (t1, t2), per class",
                       "data:image/png;base64," +
                       base64.b64encode(Path(heatmap).read_bytes()).decode()))
    return PAGE.format(
        title=html.escape(title), summary=summary_html(figures, data["counts"]),
        ablation=ablation_html(ablation) if ablation else "",
        thresholds=thresholds_html(thresholds) if thresholds else "",
        images="".join(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{src}'>"
                       for t, src in images),
        frequent=frequent_html(data["frequent"]),
        # inside <script>: "</" must not close it; the JSON stays valid with "<" escaped
        data=json.dumps(data, ensure_ascii=False).replace("<", "\\u003c"),
        style=STYLE, page_size=int(page_size))


def table(head: Sequence[str], rows: Iterable[Sequence]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def summary_html(figures: dict, counts: dict) -> str:
    rows = [("pooled", figures)] + [(f"{s['slice']}={s['value']}", s)
                                    for s in figures.get("slices", [])]
    scores = table(("slice", "strict P", "strict R", "strict F1", "tp", "fp", "fn", "char P",
                    "char R", "char F1", "gold", "pred"),
                   [(name, *(f"{r['strict'][k]:.4f}" for k in ("precision", "recall", "f1")),
                     *(r["strict"][k] for k in ("tp", "fp", "fn")),
                     *(f"{r['char_f1'][k]:.4f}" for k in ("precision", "recall", "f1")),
                     r["char_f1"]["n_gold"], r["char_f1"]["n_pred"]) for name, r in rows])
    shown = (*PREDICTION_TYPES, *GOLD_TYPES) + \
        (DROPPED_TYPES if any(c.get(t) for c in counts.values() for t in DROPPED_TYPES) else ())
    types = table(("class", *shown), [(cls, *(c.get(t, 0) for t in shown))
                                      for cls, c in counts.items()])
    return scores + "<h2>Predictions and gold spans by type</h2>" + types


def ablation_html(report: dict) -> str:
    """The rows pooled over languages; all of them (per language too) folded below."""
    def rows_table(rows):
        return table(("system", "class", "lang", "strict F1", "char P", "char R", "char F1",
                      "gold", "pred"),
                     [(r["system"], r["class"], r["language"], f"{r['strict_f1']:.4f}",
                       f"{r['char_precision']:.4f}", f"{r['char_recall']:.4f}",
                       f"{r['char_f1']:.4f}", r["char_n_gold"], r["char_n_pred"])
                      for r in rows])

    rows = report.get("rows", [])
    return ("<h2>Ablation</h2>" + rows_table([r for r in rows if r["language"] == "all"])
            + f"<details><summary>every row, per language too ({len(rows)})</summary>"
            + rows_table(rows) + "</details>")


def thresholds_html(th: dict) -> str:
    classes = th.get("classes") or {}
    figures = th.get("figures") or {}
    rows = []
    for cls, t in sorted(classes.items()):
        reached = (figures.get(cls) or {}).get("reranked") or \
            (figures.get(cls) or {}).get("stage1_only") or {}
        objective = th.get("objective") or "char_f1"
        rows.append((cls, t.get("stage1"), t.get("floor", 0.0), t.get("stage2"), t.get("route"),
                     f"{reached[objective]:.4f}" if objective in reached else ""))
    return "<h2>Tuned thresholds</h2>" + table(
        ("class", "stage 1", "floor", "stage 2", "route", th.get("objective") or "objective"),
        rows)


def frequent_html(frequent: dict) -> str:
    parts = []
    for t in (*PREDICTION_TYPES, *GOLD_TYPES, DROPPED_RIGHT):
        if frequent.get(t):
            parts.append(f"<div><h3>{html.escape(t)}</h3>" + table(
                ("class", "text", "times"),
                [(f["label"], f["text"], f["count"]) for f in frequent[t]]) + "</div>")
    return f'<div class="row">{"".join(parts)}</div>'



PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:2px 6px;
font-size:13px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}.doc{{border-top:1px solid #ddd;padding:.6em 0}}
.doc h4{{margin:.2em 0;font-size:13px;color:#555}}#controls *{{margin-right:.6em}}
.legend span{{padding:0 .4em;margin-right:.5em}}.row{{display:flex;flex-wrap:wrap;gap:1.5em}}
.row h3{{margin:.3em 0;font-size:14px}}
</style>{style}</head><body>
<h1>{title}</h1>
<h2>Figures</h2>{summary}{ablation}{thresholds}{images}
<h2>Most frequent errors</h2>{frequent}
<h2>Documents</h2>
<p class="legend">Shaded: predicted (<span style="background:#e4572e33">DISEASE</span>
<span style="background:#17a39833">SYMPTOM</span><span style="background:#5b5fc733">PROCEDURE
</span>); underlined: gold. Dashed frame: boundary error or wrong class; dotted: spurious;
solid: missed; struck through: a candidate the judge dropped. Hover a mention for its
scores.</p>
<div id="controls">
<label>class <select id="f-class"><option value="">all</option></select></label>
<label>language <select id="f-lang"><option value="">all</option></select></label>
<label>type <select id="f-type"><option value="">all</option></select></label>
<label>judge <select id="f-judge"><option value="">any</option>
<option value="kept-wrong">kept by the judge but wrong</option>
<option value="dropped-right">dropped by the judge but right</option></select></label>
<label>search <input id="f-search" placeholder="document id or text"></label>
<button id="prev">previous</button><span id="where"></span><button id="next">next</button>
</div>
<div id="docs"></div>
<script type="application/json" id="data">{data}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const PAGE_SIZE = {page_size};
let page = 0, shown = [];
const $ = (id) => document.getElementById(id);
function fill(select, values) {{
  for (const v of values) {{
    const o = document.createElement("option"); o.value = v; o.textContent = v;
    select.appendChild(o);
  }}
}}
const uniq = (xs) => [...new Set(xs.filter((x) => x))].sort();
fill($("f-class"), uniq(DATA.documents.flatMap((d) => d.spans.map((s) => s.label))));
fill($("f-lang"), uniq(DATA.documents.map((d) => d.lang)));
fill($("f-type"), uniq(DATA.documents.flatMap((d) => d.spans.map((s) => s.type))));
function matches(d) {{
  const cls = $("f-class").value, lang = $("f-lang").value, type = $("f-type").value;
  const judge = $("f-judge").value, q = $("f-search").value.toLowerCase();
  if (lang && d.lang !== lang) return false;
  if (q && !d.id.toLowerCase().includes(q) && !d.text.toLowerCase().includes(q)) return false;
  const spans = d.spans.filter((s) => !cls || s.label === cls);
  if (cls && !spans.length) return false;
  if (type && !spans.some((s) => s.type === type)) return false;
  if (judge === "kept-wrong" && !spans.some((s) => s.kind === "pred" && s.s2 !== null &&
                                            s.type !== "exact")) return false;
  if (judge === "dropped-right" && !spans.some((s) => s.type === "dropped but right"))
    return false;
  return true;
}}
function draw() {{
  const box = $("docs");
  box.replaceChildren();
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  page = Math.min(page, pages - 1);
  for (const d of shown.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)) {{
    const div = document.createElement("div"); div.className = "doc"; div.dataset.id = d.id;
    const h = document.createElement("h4");
    h.textContent = d.id + (d.lang ? " (" + d.lang + ")" : "") + (d.class ? " " + d.class : "");
    div.appendChild(h);
    const body = document.createElement("div");
    body.innerHTML = d.html;  // built and escaped by pipeline.report.render
    div.appendChild(body);
    box.appendChild(div);
  }}
  $("where").textContent = " " + shown.length + " documents, page " + (page + 1) + " of " +
                           pages + " ";
}}
// the filters live in the address too (report.html#type=missed&class=SYMPTOM): a view
// can be bookmarked or sent
const FILTERS = [["class", "f-class"], ["lang", "f-lang"], ["type", "f-type"],
                 ["judge", "f-judge"], ["q", "f-search"]];
function fromAddress() {{
  const p = new URLSearchParams(location.hash.slice(1));
  for (const [key, id] of FILTERS) $(id).value = p.get(key) || "";
}}
function toAddress() {{
  const p = new URLSearchParams();
  for (const [key, id] of FILTERS) if ($(id).value) p.set(key, $(id).value);
  history.replaceState(null, "", "#" + p.toString());
}}
// what a mention is, shown on hover (kept out of the HTML: it would double the page)
const BY_ID = new Map(DATA.documents.map((d) => [d.id, d]));
$("docs").addEventListener("mouseover", (event) => {{
  const m = event.target.closest(".m");
  if (!m || m.title) return;
  const d = BY_ID.get(m.closest(".doc").dataset.id);
  const s = +m.dataset.s, e = +m.dataset.e;
  const chars = [...d.text];  // characters, as the offsets count them
  m.title = d.spans.filter((x) => x.start <= s && e <= x.end).map((x) =>
    x.kind + " " + x.label + " " + x.start + "-" + x.end + (x.type ? " " + x.type : "") +
    (x.s1 !== null ? ", stage 1 " + x.s1.toFixed(3) : "") +
    (x.s2 !== null ? ", stage 2 " + x.s2.toFixed(3) : "") + ": " +
    JSON.stringify(chars.slice(x.start, x.end).join(""))).join("; ");
}});
function update() {{ toAddress(); shown = DATA.documents.filter(matches); page = 0; draw(); }}
for (const [, id] of FILTERS) $(id).addEventListener(id === "f-search" ? "input" : "change", update);
$("prev").addEventListener("click", () => {{ page = Math.max(0, page - 1); draw(); }});
$("next").addEventListener("click", () => {{ page += 1; draw(); }});
window.addEventListener("hashchange", () => {{ fromAddress(); update(); }});
fromAddress();
update();
document.body.dataset.readyMs = Math.round(performance.now());  // measured by the tests
</script></body></html>
"""
