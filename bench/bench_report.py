"""The error-analysis page on a whole corpus: its size, the time to build it, and the time
until it is usable in headless Chromium, drawing documents a page at a time (as shipped)
vs all at once.

    python bench/bench_report.py [--gold ../shared/data/cardioccc_dev] [--runs 3] [--pred RUN]

With --pred, the predictions of a `pipeline run` folder (with its stage scores and the
candidates the judge dropped, as `pipeline report` reads them) or a TSV. Without it, the
predictions are the gold spans perturbed (half kept, a fifth with the end moved, a
tenth relabelled, one spurious span a document), so that every error type is there; the
page's cost depends on the number of documents and spans, not on where they came from.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.corpus import load_spans  # noqa: E402
from pipeline.documents import Span  # noqa: E402
from pipeline.readers import open_corpus  # noqa: E402
from pipeline.report import build_report, dropped_candidates  # noqa: E402


def perturbed(docs) -> list[Span]:
    rng, pred = random.Random(0), []
    for d in docs:
        for s in d.spans:
            roll = rng.random()
            if roll < 0.5:
                pred.append(s.with_scores(0.9, 0.8))
            elif roll < 0.7:
                pred.append(Span(s.doc_id, s.label, s.start, min(len(d.text), s.end + 4), 0.6))
            elif roll < 0.8:
                pred.append(Span(s.doc_id, "DISEASE" if s.label != "DISEASE" else "SYMPTOM",
                                 s.start, s.end, 0.5, 0.55))
        pred.append(Span(d.id, "SYMPTOM", 0, min(5, len(d.text)), 0.4))
    return pred


def ready_ms(browser: str, page: Path) -> int:
    """Milliseconds from navigation to the first page of documents drawn (the page
    records it when its script has run), in a fresh headless Chromium."""
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=60000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=300)
    found = re.search(r'data-ready-ms="(\d+)"', out.stdout)
    if not found:
        raise SystemExit(f"the page did not finish: {out.stderr[-1000:]}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gold", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/cardioccc_dev")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pred", type=Path, help="a `pipeline run` folder or a TSV (default: "
                                              "gold perturbed)")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    docs = list(open_corpus(args.gold))
    dropped = []
    if args.pred is None:
        pred = perturbed(docs)
    else:
        pred, _ = load_spans(args.pred)
        if (args.pred / "parts").is_dir():
            dropped = dropped_candidates(args.pred)
    gold_spans = sum(len(d.spans) for d in docs)
    print(f"{args.gold}: {len(docs)} documents, {sum(len(d.text) for d in docs):,} characters, "
          f"{gold_spans:,} gold and {len(pred):,} predicted spans"
          + (f", {len(dropped):,} candidates the judge dropped" if args.pred else ""))
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name, size in (("25 documents a page", 25), ("all documents at once", len(docs))):
            start = time.perf_counter()
            page = build_report(docs, pred, dropped=dropped, page_size=size)
            build = time.perf_counter() - start
            path = Path(tmp) / f"{size}.html"
            path.write_text(page, encoding="utf-8")
            times = [ready_ms(browser, path) for _ in range(args.runs)] if browser else []
            results[name] = statistics.median(times) if times else None
            print(f"{name}: {len(page.encode()) / 1e6:.1f} MB, built in {build:.1f} s, usable "
                  f"after {times} ms in headless Chromium" if browser else
                  f"{name}: {len(page.encode()) / 1e6:.1f} MB, built in {build:.1f} s "
                  "(no chromium: apt-get install chromium)")
        if browser:
            paged, whole = results.values()
            print(f"all at once / a page at a time: {whole / paged:.1f}x the time to usable")


if __name__ == "__main__":
    main()
