"""Fault injection: a fault of the service or the machine stops a run without recording it
as any document's failure, and the same command, run again, ends byte-identical to a run
that never saw the fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ErrorKind, PipelineError, is_document_fault, kind_of
from tests.cli_inprocess import run_cli
from tests.fake_llm_server import FakeServer
from tests.test_pipeline import make_corpus

OUTPUTS = ("predictions.tsv", "predictions.jsonl", "summary.json")


def same_outputs(a: Path, b: Path) -> None:
    """The finished outputs of two runs are equal (the summaries but for their timings)."""
    for name in OUTPUTS:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "summary.json":
            x, y = (json.loads(v) for v in (x, y))
            x.pop("seconds"), y.pop("seconds")
        assert x == y, name


def test_the_kinds_of_errors():
    import sqlite3

    from stage2_rerank.backends.openai_server import ServerError

    assert kind_of(ServerError("down")) is ErrorKind.TRANSIENT
    assert kind_of(TimeoutError()) is ErrorKind.TRANSIENT
    assert kind_of(ConnectionRefusedError()) is ErrorKind.TRANSIENT
    assert kind_of(ValueError("bad")) is ErrorKind.INPUT
    assert kind_of(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")) is ErrorKind.INPUT
    assert kind_of(FileNotFoundError(2, "No such file", "x")) is ErrorKind.INPUT
    assert kind_of(OSError(28, "No space left on device")) is ErrorKind.REFUSAL
    assert kind_of(sqlite3.OperationalError("disk I/O error")) is ErrorKind.REFUSAL
    assert kind_of(KeyboardInterrupt()) is ErrorKind.INTERRUPTED
    assert kind_of(KeyError("x")) is ErrorKind.BUG
    # what a corpus run may record as a document's failure
    assert is_document_fault(ValueError("bad")) and is_document_fault(RuntimeError("model"))
    assert not is_document_fault(ServerError("down"))
    assert not is_document_fault(OSError(28, "No space left on device"))
    assert not is_document_fault(KeyError("x"))
    # a device out of memory is the machine refusing, never a document's failure
    import torch

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert kind_of(oom) is ErrorKind.REFUSAL and not is_document_fault(oom)
    assert not is_document_fault(RuntimeError("DefaultCPUAllocator: can't allocate memory: "
                                              "you tried to allocate 10 bytes. Out of memory"))


def test_an_llm_outage_stops_the_run_and_the_rerun_finishes_it_identically(
        tmp_path, tiny_ensemble, tiny_llm_dir):
    make_corpus(tmp_path / "corpus", n=12)
    config = tmp_path / "llm.json"
    config.write_text(json.dumps({"server": {"retries": 2, "backoff": 0.01, "timeout": 20,
                                             "batch_size": 2, "concurrency": 1}}))

    def run(server: FakeServer, out: str):
        return run_cli("run", "--ensemble", tiny_ensemble, "--input", tmp_path / "corpus",
                       "--output", tmp_path / out, "--cache-dir", tmp_path / f"cache_{out}",
                       "--llm", tiny_llm_dir, "--llm-url", server.url, "--llm-config", config,
                       "--stage1-threshold", "0.3", "--stage2-threshold", "0.4",
                       "--chunk-size", "2")

    healthy, flaky = FakeServer(), FakeServer(down_after=3)
    try:
        code, out, err = run(healthy, "clean")
        assert code == 0, err
        summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
        assert summary["llm_calls"] > 6 and summary["failed"] == 1  # broken.txt, unreadable
        code, out, err = run(flaky, "faulty")  # the server goes down after 3 requests
        assert code == 1, err
        assert "no LLM server answered" in err and "the same command continues" in err
        assert "Traceback" not in err and out == ""
        parts = sorted((tmp_path / "faulty" / "parts").glob("*.jsonl"))
        assert 0 < len(parts) < len(list((tmp_path / "clean" / "parts").glob("*.jsonl")))
        records = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
        assert all(r["status"] != "failed" for r in records)  # nobody's fault: none recorded
        assert not (tmp_path / "faulty" / "summary.json").exists()
        flaky.down_after = None  # the server is back
        code, out, err = run(flaky, "faulty")
        assert code == 0, err
        same_outputs(tmp_path / "clean", tmp_path / "faulty")
    finally:
        healthy.close()
        flaky.close()


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of a writer under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*tmp*"))


def test_a_write_that_fails_part_way_leaves_the_old_output_and_no_temporary_file(tmp_path):
    from pipeline.documents import Document, Span
    from pipeline.writers import write_brat, write_jsonl, write_tsv

    good = Document("a", "fiebre alta", spans=[Span("a", "SYMPTOM", 0, 6)])
    bad = Document("b", "tos", spans=[Span("b", "SYMPTOM", 2, 2)])  # empty: cannot be written

    class Unreadable(Exception):
        pass

    def docs_then(error):
        yield good
        raise error

    for write, name in ((write_tsv, "o.tsv"), (write_jsonl, "o.jsonl"), (write_brat, "brat")):
        write([good], tmp_path / name)
        before = {p: p.read_bytes() for p in sorted((tmp_path / name).rglob("*"))
                  if p.is_file()} if name == "brat" else (tmp_path / name).read_bytes()
        with pytest.raises((ValueError, Unreadable)):
            write([good, bad] if write is write_tsv else docs_then(Unreadable()),
                  tmp_path / name)
        after = {p: p.read_bytes() for p in sorted((tmp_path / name).rglob("*"))
                 if p.is_file()} if name == "brat" else (tmp_path / name).read_bytes()
        assert after == before, name
    assert leftovers(tmp_path) == []
    with pytest.raises(PipelineError, match="is a folder; give the name of a file"):
        write_tsv([good], tmp_path / "brat")
    assert leftovers(tmp_path) == []


def test_outputs_that_cannot_be_written_are_refused_before_the_work(
        tmp_path, tiny_ensemble):
    corpus = make_corpus(tmp_path / "corpus", n=4, broken=False)
    (corpus / "doc03.ann").write_text("T1\tDISEASE 0 400\tx\n")  # the last document is bad
    code, _, err = run_cli("convert", "--input", corpus, "--output", tmp_path / "o.tsv")
    assert code == 2 and "doc03.ann:1" in err
    code, _, err = run_cli("convert", "--input", corpus, "--output", tmp_path / "brat",
                           "--format", "brat")
    assert code == 2 and "doc03.ann:1" in err
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.tsv").exists()
    assert not (tmp_path / "brat").exists()  # no partial folder
    (tmp_path / "folder").mkdir()
    code, _, err = run_cli("convert", "--input", corpus, "--output", tmp_path / "folder",
                           "--lenient")
    assert code == 2 and f"{tmp_path / 'folder'} is a folder; give the name of a file" in err
    common = ("--ensemble", tiny_ensemble, "--gold", corpus, "--cache-dir", tmp_path / "cache")
    code, _, err = run_cli("tune", *common, "--out", tmp_path / "folder")
    assert code == 2 and "is a folder; give the name of a file" in err
    assert "tuning on" not in err  # refused before any work
    (tmp_path / "file").write_text("")
    (tmp_path / "th.json").write_text("{}")
    code, _, err = run_cli("ablate", *common, "--out", tmp_path / "file", "--thresholds",
                           tmp_path / "th.json")
    assert code == 2 and "is a file; give the name of a folder" in err
    code, _, err = run_cli("run", "--ensemble", tiny_ensemble, "--input", corpus,
                           "--output", tmp_path / "file")
    assert code == 2 and "is a file; give the name of a folder" in err
    (tmp_path / "no-ensemble").mkdir()  # a run refused inside its lock leaves no folder
    code, _, err = run_cli("run", "--ensemble", tmp_path / "no-ensemble", "--input", corpus,
                           "--output", tmp_path / "new")
    assert code == 2 and "no ensemble manifest" in err and not (tmp_path / "new").exists()


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys (Linux)")
def test_tune_into_a_read_only_folder_is_refused_before_tuning(tmp_path, tiny_ensemble):
    corpus = make_corpus(tmp_path / "corpus", n=4, broken=False)
    code, _, err = run_cli("tune", "--ensemble", tiny_ensemble, "--gold", corpus,
                           "--cache-dir", tmp_path / "cache", "--out", "/sys/thresholds.json")
    if code == 0:
        pytest.skip("/sys is writable here")
    assert code == 1 and "tuning on" not in err and "error: " in err and "/sys" in err


def interrupt_at_random(cmd: list[str], progress, total: int, seed: int, tries: int = 3,
                        env: dict | None = None) -> list[int]:
    """Start ``cmd`` again and again, each time sending SIGINT once ``progress()`` (a count
    of the work done so far) has passed a random point short of ``total``. Each interrupted
    process must exit 130 and say so. Returns the progress seen at each interruption."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    rng, seen = random.Random(seed), []
    for _ in range(tries):
        done = progress()
        if done >= total - 1:
            break
        target = done + rng.randint(1, max(1, (total - 1 - done) // 2))
        # SIGINT back to its default in the child: a shell's background job (`make test &`)
        # starts with it ignored, and Python then never raises KeyboardInterrupt
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, cmd)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and progress() < target:
            time.sleep(0.005)
        if proc.poll() is not None:  # it finished first
            break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted; rerun the same command" in err and "Traceback" not in err, err
        seen.append(progress())
    return seen


def finish(cmd: list[str]) -> None:
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pipeline", *map(str, cmd)],
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.slow
def test_ctrl_c_in_run_then_the_rerun_ends_identically(tmp_path, tiny_ensemble):
    make_corpus(tmp_path / "corpus", n=80)
    cmd = ["run", "--ensemble", tiny_ensemble, "--input", tmp_path / "corpus",
           "--stage1-threshold", "0.5", "--chunk-size", "2", "--format", "tsv,jsonl"]
    finish(cmd + ["--output", tmp_path / "clean", "--cache-dir", tmp_path / "cache_clean"])
    total = len(list((tmp_path / "clean" / "parts").glob("*.jsonl")))
    parts = tmp_path / "cut" / "parts"
    cut = cmd + ["--output", tmp_path / "cut", "--cache-dir", tmp_path / "cache"]
    seen = interrupt_at_random(cut, lambda: len(list(parts.glob("*.jsonl")))
                               if parts.exists() else 0, total, seed=5)
    assert seen and seen == sorted(seen)
    assert leftovers(tmp_path / "cut") == []
    finish(cut)
    same_outputs(tmp_path / "clean", tmp_path / "cut")


@pytest.mark.slow
def test_ctrl_c_in_tune_then_the_rerun_ends_identically(tmp_path, tiny_ensemble, tiny_llm_dir):
    """Interrupted while the LLM scores (its scores are stored 512 prompts at a time, as
    they come), the rerun's thresholds equal an uninterrupted tuning's."""
    import sqlite3

    make_corpus(tmp_path / "corpus", n=60, broken=False)
    cmd = ["tune", "--ensemble", tiny_ensemble, "--gold", tmp_path / "corpus",
           "--llm", tiny_llm_dir, "--llm-backend", "hf", "--t1-grid", "0.3,0.5"]
    finish(cmd + ["--out", tmp_path / "clean.json", "--cache-dir", tmp_path / "cache_clean"])
    db = tmp_path / "cache_clean" / "scores.sqlite"
    with sqlite3.connect(db) as con:
        total = con.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    cache = tmp_path / "cache" / "scores.sqlite"

    def scored() -> int:
        try:
            with sqlite3.connect(cache, timeout=0.1) as con:
                return con.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        except sqlite3.Error:
            return 0

    cut = cmd + ["--out", tmp_path / "cut.json", "--cache-dir", tmp_path / "cache"]
    interrupt_at_random(cut, scored, total, seed=7, tries=2)
    assert not (tmp_path / "cut.json").exists() or scored() == total
    finish(cut)
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("clean.json", "cut.json"))
    assert a == b


@pytest.mark.slow
def test_ctrl_c_in_train_then_the_rerun_ends_identically(tmp_path):
    """Members are kept when finished; one interrupted is trained again from the start,
    so the finished ensemble equals one trained without a stop."""
    import numpy as np

    from stage1_ensemble.config import TrainConfig
    from stage1_ensemble.ensemble import Ensemble
    from tests.tiny_models import SENTENCES, tiny_bert_encoder

    encoder = tiny_bert_encoder(tmp_path / "encoder")
    corpus = make_corpus(tmp_path / "corpus", n=8, broken=False)
    config = tmp_path / "train.json"
    config.write_text(TrainConfig(learning_rate=3e-3, warmup_steps=0, max_steps=60,
                                  batch_size=2, max_length=64, stride=8).model_dump_json())
    cmd = ["train", "--corpus", corpus, "--encoder", encoder, "--classes", "DISEASE",
           "--folds", "4", "--config", config]
    finish(cmd + ["--out", tmp_path / "clean"])

    def members() -> int:
        return len(list((tmp_path / "cut").glob("*/member.json")))

    interrupt_at_random(cmd + ["--out", tmp_path / "cut"], members, 4, seed=11, tries=2)
    finish(cmd + ["--out", tmp_path / "cut"])
    clean, cut = (Ensemble.load(tmp_path / n) for n in ("clean", "cut"))
    assert [m.validation for m in clean.manifest.members] == \
        [m.validation for m in cut.manifest.members]
    a, b = (e.char_probs(SENTENCES, ["DISEASE"]) for e in (clean, cut))
    assert all(np.array_equal(x["DISEASE"], y["DISEASE"]) for x, y in zip(a, b))


FULL_DISK = """set -u
mount -t tmpfs -o size={limit} tmpfs {mnt} || exit 97
{python} -m pipeline {args} --output {mnt}/out 2> {log}.first; echo $? > {log}.rc1
find {mnt} -name '.*tmp*' > {log}.leftovers
mount -o remount,size={room} {mnt}
{python} -m pipeline {args} --output {mnt}/out 2> {log}.second; echo $? > {log}.rc2
cp -r {mnt}/out {copy}
"""


@pytest.mark.slow
def test_a_full_disk_at_each_writing_step_leaves_nothing_and_the_rerun_ends_identically(
        tmp_path, tiny_ensemble):
    """The output folder on a small tmpfs (in a mount namespace of its own), too small at
    several points of the run: the run stops with exit 1 naming the file it could not
    write, no temporary file is left, and once there is room the same command ends with
    the bytes of a run that had room throughout."""
    import shlex
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs")
    (tmp_path / "probe").mkdir()
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                            str(tmp_path / "probe")], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs in a namespace: {probe.stderr}")
    make_corpus(tmp_path / "corpus", n=40)
    args = ["run", "--ensemble", tiny_ensemble, "--input", tmp_path / "corpus",
            "--stage1-threshold", "0.5", "--chunk-size", "4", "--format", "tsv,jsonl,brat",
            "--cache-dir", tmp_path / "cache"]
    finish(args + ["--output", tmp_path / "clean"])
    quoted = " ".join(shlex.quote(str(a)) for a in args)
    (tmp_path / "mnt").mkdir()
    measured = subprocess.run(  # what the outputs take on a tmpfs
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64m tmpfs {tmp_path / 'mnt'} && "
         f"{shlex.quote(sys.executable)} -m pipeline {quoted} --output {tmp_path / 'mnt'}/out "
         f"> /dev/null 2>&1 && df -k --output=used {tmp_path / 'mnt'} | tail -1"],
        capture_output=True, text=True, timeout=600)
    assert measured.returncode == 0, measured.stderr
    needed = int(measured.stdout.split()[-1]) * 1024
    failed_at = set()
    for k, share in enumerate((0.1, 0.35, 0.6, 0.85)):
        mnt, log = tmp_path / f"mnt{k}", tmp_path / f"log{k}"
        mnt.mkdir()
        script = FULL_DISK.format(
            limit=max(4096, int(needed * share) // 4096 * 4096), room=needed * 4, mnt=mnt,
            python=shlex.quote(sys.executable), log=log, copy=tmp_path / f"out{k}", args=quoted)
        done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        first = Path(f"{log}.first").read_text()
        assert Path(f"{log}.rc1").read_text().strip() == "1", first[-2000:]
        assert "No space left on device" in first and "Traceback" not in first, first[-2000:]
        last = first.strip().splitlines()[-1]
        assert last.startswith("error: [Errno 28] No space left on device: ") and \
            str(mnt) in last, last  # it names the file it could not write
        failed_at.add(last.rsplit("/", 1)[-1])
        assert Path(f"{log}.leftovers").read_text() == ""
        assert Path(f"{log}.rc2").read_text().strip() == "0", Path(f"{log}.second").read_text()
        same_outputs(tmp_path / "clean", tmp_path / f"out{k}")
        for ann in (tmp_path / "clean" / "brat").glob("*.ann"):
            assert ann.read_bytes() == (tmp_path / f"out{k}" / "brat" / ann.name).read_bytes()
    assert len(failed_at) >= 2, failed_at  # the disk filled at different writing steps
