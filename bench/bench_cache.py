"""The character-probability cache: one .npy file per (class, text) vs one SQLite file with
zlib-compressed rows (stage1_ensemble.cache).

Real documents of ../shared/data, tokenized by the real XLM-R tokenizer; each class's
character probabilities projected from token probabilities made of its gold spans plus noise.
Both stores are written (as `pipeline run` writes: all classes of a batch of documents) and
read back; disk use (allocated blocks), files and times are printed side by side. Both must
give back identical arrays.
Run: python bench/bench_cache.py [corpus folder] [n documents]
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_decode import gold_noise_probs  # noqa: E402
from pipeline.documents import CLASSES  # noqa: E402
from pipeline.readers import open_corpus  # noqa: E402
from stage1_ensemble import project_batch  # noqa: E402
from stage1_ensemble.cache import CharProbCache  # noqa: E402
from stage1_ensemble.windows import tokenize_windows  # noqa: E402


class NpyFiles:
    """The previous layout: ``folder/class/ab/<sha256>.npy``, float16, written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, cls: str, text: str) -> Path:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.folder / cls / digest[:2] / f"{digest}.npy"

    def put_many(self, cls: str, items) -> None:
        for text, probs in items:
            path = self._path(cls, text)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, np.asarray(probs, dtype=np.float16))
            os.replace(tmp, path)

    def get_many(self, cls: str, texts) -> list[np.ndarray]:
        return [np.load(self._path(cls, t)).astype(np.float32) for t in texts]

    def close(self) -> None:
        pass


def disk_use(folder: Path) -> tuple[int, int]:
    """(bytes allocated on disk, number of files) under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files), len(files)


def main() -> None:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/cardioccc_dev"
    n_docs = int(sys.argv[2]) if len(sys.argv) > 2 else 258
    from transformers import XLMRobertaTokenizerFast

    from tests.tiny_models import xlmr_tokenizer_file

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))
    docs = list(open_corpus(corpus))[:n_docs]
    texts = [d.text for d in docs]
    win = tokenize_windows(tokenizer, texts, max_length=512, stride=32)
    rng = np.random.default_rng(0)
    probs = {cls: project_batch(texts, win.doc_index, win.offsets,
                                gold_noise_probs(docs, win, rng, label=cls))
             for cls in CLASSES}
    chars = sum(map(len, texts))
    print(f"{len(texts)} documents, {chars} characters, {len(CLASSES)} classes "
          f"(raw float16: {2 * chars * len(CLASSES) / 1e6:.1f} MB)")

    results = {}
    (ROOT / "runs").mkdir(exist_ok=True)  # git-ignored; the file system caches live on
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        for name, store in (("npy files", NpyFiles(Path(tmp) / "npy")),
                            ("sqlite", CharProbCache(Path(tmp) / "sqlite", "bench"))):
            t0 = time.perf_counter()
            for lo in range(0, len(texts), 16):  # as `pipeline run` writes: chunk by chunk
                for cls in CLASSES:
                    store.put_many(cls, list(zip(texts[lo : lo + 16], probs[cls][lo : lo + 16])))
            t1 = time.perf_counter()
            back = {cls: store.get_many(cls, texts) for cls in CLASSES}
            t2 = time.perf_counter()
            store.close()  # the end of a run (SQLite moves its journal into the database)
            folder = Path(tmp) / ("npy" if name == "npy files" else "sqlite")
            results[name] = (t1 - t0, t2 - t1, *disk_use(folder), back)
    old, new = results["npy files"], results["sqlite"]
    for cls in CLASSES:
        assert all(np.array_equal(a, b) for a, b in zip(old[4][cls], new[4][cls]))
    for name, (w, r, size, files, _) in results.items():
        print(f"{name:10s} write {w:6.3f} s  read {r:6.3f} s  disk {size / 1e6:6.2f} MB  "
              f"{files} files")
    print(f"sqlite vs npy files: disk {old[2] / new[2]:.1f}x smaller, files {old[3]} -> "
          f"{new[3]}, write {old[0] / new[0]:.2f}x, read {old[1] / new[1]:.2f}x as fast "
          "(identical arrays)")


if __name__ == "__main__":
    main()
