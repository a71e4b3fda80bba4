"""``pipeline run --engine ray``: the same outputs as a local run, byte for byte, on a Ray
of this machine, on a cluster that loses a node, and after the driver is killed.

Marker ``ray`` (``make test`` runs it where the ``ray`` extra is installed); every test has
a hard limit, so that a hang fails instead of blocking CI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_inprocess import run_cli
from tests.test_pipeline import make_corpus

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
ray = pytest.importorskip("ray", reason="the ray extra is not installed")

OUTPUTS = ("predictions.tsv", "predictions.jsonl")


@pytest.fixture(scope="module")
def local_ray():
    """One Ray of this machine for the in-process tests (started once: about 10 s here)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20,
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def outputs(folder: Path) -> dict[str, bytes]:
    """The files a run writes for its users: predictions, brat files, part files."""
    files = {name: (folder / name).read_bytes() for name in OUTPUTS}
    for sub in ("brat", "parts"):
        files.update({f"{sub}/{p.name}": p.read_bytes()
                      for p in sorted((folder / sub).glob("*")) if p.is_file()})
    return files


def corpus(tmp_path: Path, n: int = 12) -> Path:
    folder = make_corpus(tmp_path / "corpus", n=n)  # an empty and an unreadable document too
    (folder / "odd.txt").write_text("<b>diabetes</b> 😀 e\u0301 neumonía\r\n", encoding="utf-8")
    return folder


def pipeline_run(*args) -> tuple[int, str, str]:
    return run_cli("run", "--chunk-size", 3, "--format", "tsv,jsonl,brat", *args)


def test_same_bytes_as_a_local_run_without_an_llm(local_ray, tiny_ensemble, tmp_path):
    src = corpus(tmp_path)
    common = ("--input", src, "--ensemble", tiny_ensemble, "--stage1-threshold", 0.5)
    code, _, err = pipeline_run(*common, "--output", tmp_path / "local",
                                "--cache-dir", tmp_path / "c1")
    assert code == 0, err
    code, out, err = pipeline_run(*common, "--output", tmp_path / "ray", "--engine", "ray",
                                  "--cache-dir", tmp_path / "c2")  # computed anew, not cached
    assert code == 0, err
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["engine"] == "ray" and local["engine"] == "local"
    assert summary["cluster"]["CPU"] == 2 and summary["pools"]["stage1_actors"] >= 1
    for key in ("written", "empty", "failed", "failures", "candidates", "kept_spans"):
        assert summary[key] == local[key], key
    assert summary["failed"] == 1 and summary["written"] > 0 and "15 documents" not in out
    # a local run may continue a Ray run's folder (the engine only says how a run goes)
    code, _, err = pipeline_run(*common, "--output", tmp_path / "ray")
    assert code == 0, err and outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def test_same_bytes_as_a_local_run_with_an_llm(local_ray, tiny_ensemble, tiny_llm_dir,
                                                tmp_path):
    src = corpus(tmp_path)
    common = ("--input", src, "--ensemble", tiny_ensemble, "--llm", tiny_llm_dir,
              "--llm-backend", "hf", "--stage1-threshold", 0.5, "--stage2-threshold", 0.4)
    code, _, err = pipeline_run(*common, "--output", tmp_path / "local",
                                "--cache-dir", tmp_path / "c1")
    assert code == 0, err
    code, _, err = pipeline_run(*common, "--output", tmp_path / "ray", "--engine", "ray",
                                "--cache-dir", tmp_path / "c2", "--llm-actors", 1)
    assert code == 0, err
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["llm_calls"] > 0 and summary["pools"]["llm_actors"] == 1
    assert summary["seconds"]["stage2"] > 0


@pytest.mark.vllm
def test_llm_actors_hold_in_process_vllm_engines(local_ray, tiny_ensemble, tmp_path):
    """The vllm backend in the LLM actors (each its own engine; on CPUs here): the bytes of
    a local run with the same engine."""
    pytest.importorskip("vllm")
    from tests.tiny_llm import tiny_llama

    llm = tiny_llama(tmp_path / "llm")  # head_dim 32: what vLLM's CPU attention takes
    config = tmp_path / "llm.json"
    config.write_text('{"dtype": "float32", "max_model_len": 2048}')
    common = ["--input", corpus(tmp_path, n=6), "--ensemble", tiny_ensemble, "--llm", llm,
              "--llm-backend", "vllm", "--llm-config", config, "--stage1-threshold", 0.5,
              "--stage2-threshold", 0.4, "--chunk-size", 3, "--format", "tsv,jsonl,brat"]
    env = dict(os.environ, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    local = subprocess.run([sys.executable, "-m", "pipeline", "run", *map(str, common),
                            "--output", str(tmp_path / "local")], env=env,
                           capture_output=True, text=True, timeout=400)
    assert local.returncode == 0, local.stderr[-3000:]
    code, _, err = run_cli("run", *common, "--output", tmp_path / "ray", "--engine", "ray")
    assert code == 0, err
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["llm_calls"] > 0


def test_the_llm_service_down_stops_the_run_and_fails_no_document(
        local_ray, tiny_ensemble, tiny_llm_dir, tmp_path):
    from tests.fake_llm_server import FakeServer

    src = corpus(tmp_path)
    config = tmp_path / "llm.json"
    config.write_text(json.dumps({"server": {"retries": 1, "backoff": 0.01, "timeout": 20,
                                             "batch_size": 2, "concurrency": 1}}))
    common = ("--input", src, "--ensemble", tiny_ensemble, "--llm", tiny_llm_dir,
              "--llm-config", config, "--stage1-threshold", 0.3, "--stage2-threshold", 0.4,
              "--chunk-size", 2, "--output", tmp_path / "ray", "--engine", "ray")
    server = FakeServer(down_after=3)  # answers 3 requests, then 503 until told otherwise
    try:
        code, out, err = run_cli("run", *common, "--llm-url", server.url)
        assert code == 1, err
        assert "no LLM server answered" in err and "the same command continues" in err
        assert "Traceback" not in err
        parts = sorted((tmp_path / "ray" / "parts").glob("*.jsonl"))
        records = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
        assert all(r["status"] != "failed" for r in records)  # nobody's fault: none recorded
        assert not (tmp_path / "ray" / "summary.json").exists()
        server.down_after = None  # the service is back: the same command finishes the run
        code, out, err = run_cli("run", *common, "--llm-url", server.url)
        assert code == 0, err
        code, out, err = run_cli("run", *common[:-4], "--output", tmp_path / "local",
                                 "--llm-url", server.url)
        assert code == 0, err
    finally:
        server.close()
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def test_a_document_refused_by_the_llm_fails_alone_as_in_a_local_run(
        local_ray, tiny_ensemble, tiny_llm_dir, tmp_path):
    from tests.fake_llm_server import FakeServer
    from tests.tiny_models import SENTENCES

    src = corpus(tmp_path)
    (src / "long.txt").write_text(" ".join([SENTENCES[0]] * 60), encoding="utf-8")
    common = ("--input", src, "--ensemble", tiny_ensemble, "--llm", tiny_llm_dir,
              "--stage1-threshold", 0.5, "--stage2-threshold", 0.4)
    server = FakeServer(refuse_longer_than=900)  # its prompts are longer: HTTP 400
    try:
        for out, more in (("local", ()), ("ray", ("--engine", "ray"))):
            code, _, err = pipeline_run(*common, "--llm-url", server.url, "--output",
                                        tmp_path / out, "--cache-dir", tmp_path / f"c_{out}",
                                        *more)
            assert code == 0, err
    finally:
        server.close()
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    failures = {out: json.loads((tmp_path / out / "summary.json").read_text())["failures"]
                for out in ("local", "ray")}
    assert failures["ray"] == failures["local"]
    assert sorted(f["id"] for f in failures["ray"]) == ["broken", "long"]
    assert "HTTP 400" in [f for f in failures["ray"] if f["id"] == "long"][0]["reason"]


def test_a_run_that_makes_no_progress_stops_and_says_why(local_ray, tiny_ensemble, tmp_path):
    """No part within ray.stall_seconds (here less than an actor takes to start): the run
    stops with exit 1, naming what the pools asked of the cluster, instead of hanging."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"ray": {"stall_seconds": 0.5}}))
    code, _, err = pipeline_run("--input", corpus(tmp_path), "--ensemble", tiny_ensemble,
                                "--output", tmp_path / "ray", "--engine", "ray",
                                "--config", config)
    assert code == 1, err
    assert "no chunk finished in 0.5 s" in err and "stage1_actors" in err
    assert "same command continues" in err and "Traceback" not in err


def test_an_address_where_no_cluster_listens_fails_at_once(tiny_ensemble, tmp_path):
    """Ray itself would retry for minutes; the run says what is wrong in seconds."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "--input",
                           str(corpus(tmp_path)), "--ensemble", str(tiny_ensemble), "--output",
                           str(tmp_path / "out"), "--engine", "ray", "--ray-address",
                           f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]


def test_a_local_run_imports_no_ray_and_ray_sends_no_usage_statistics(tiny_ensemble,
                                                                       tmp_path, monkeypatch):
    script = ("import sys\nfrom pipeline.cli import main\nsys.argv = ['pipeline', 'run', "
              f"'--input', {str(corpus(tmp_path))!r}, '--ensemble', {str(tiny_ensemble)!r}, "
              f"'--output', {str(tmp_path / 'out')!r}]\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code\n"
              "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
    from pipeline.ray_engine import import_ray

    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    import_ray()
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"  # unless a site says otherwise


def test_what_a_worker_raises_reaches_the_driver_with_its_kind(tmp_path):
    """Raised in a worker (or while it loads its model), an exception is carried back as
    data: rebuilt where it can be, else as an exception of the same kind."""
    import numpy as np

    from pipeline.errors import ErrorKind, kind_of
    from pipeline.ray_workers import Stage1Worker, error_payload, raise_payload
    from pipeline.settings import RunConfig
    from pipeline.thresholds import Thresholds
    from stage2_rerank.errors import ServiceError

    config = RunConfig(ensemble={"path": str(tmp_path / "nowhere")}).model_dump_json()
    worker = Stage1Worker(config, Thresholds.uniform(0.5, 0.5).model_dump_json(), 1)
    out = worker({"k": np.array([0]), "docs": np.array([b""], dtype=object),
                  "error": np.array([b""], dtype=object)})
    with pytest.raises(Exception) as raised:
        raise_payload(out["error"][0])
    assert kind_of(raised.value) is ErrorKind.INPUT and "nowhere" in str(raised.value)

    class Local(ServiceError):  # a class the driver could not import
        def __reduce__(self):
            return (Local, ())  # unpickling it fails: no arguments

    with pytest.raises(ServiceError, match="Local: the server is down"):
        raise_payload(error_payload(Local("the server is down"), "test"))
    oom = RuntimeError("CUDA out of memory")
    with pytest.raises(OSError) as raised:
        raise_payload(error_payload(type("Odd", (RuntimeError,), {})("CUDA out of memory"),
                                    "test"))
    assert kind_of(raised.value) is kind_of(oom) is ErrorKind.REFUSAL


def test_overlap_of_busy_times():
    from pipeline.ray_engine import overlap

    assert overlap([], [(0, 1)]) == 0
    assert overlap([(0, 2), (1, 3), (5, 6)], [(2.5, 5.5)]) == pytest.approx(1.0)
    assert overlap([(0, 1)], [(1, 2)]) == 0


def test_pools_fit_the_cluster():
    from pipeline.errors import PipelineError
    from pipeline.ray_engine import plan
    from pipeline.settings import RaySettings

    small = plan(RaySettings(), {"CPU": 2.0}, llm=True)  # readers keep room (ray#44687)
    assert small.stage1_actors == small.llm_actors == 1 and small.llm_gpus == 0
    assert small.stage1_cpus + small.llm_cpus <= 1.5
    gpus = plan(RaySettings(), {"CPU": 16.0, "GPU": 1.0}, llm=True)
    assert gpus.stage1_gpus == gpus.llm_gpus == 0.5
    big = plan(RaySettings(), {"CPU": 64.0, "GPU": 8.0}, llm=True)
    assert big.llm_actors == 4 and big.stage1_actors == 4 and big.stage1_gpus == 1.0
    assert plan(RaySettings(), {"CPU": 64.0}, llm=False).stage1_actors == 14
    with pytest.raises(PipelineError, match=r"ask for 4.05 CPUs .* the cluster has 2"):
        plan(RaySettings(stage1_cpus=2.0, llm_cpus=2.0), {"CPU": 2.0}, llm=True)
    # no actor larger than the largest node: it would wait for ever
    nodes = plan(RaySettings(), {"CPU": 8.0}, llm=False, largest={"CPU": 2.0})
    assert nodes.stage1_cpus <= 2.0 - 0.05
    with pytest.raises(PipelineError, match="largest node of the cluster has 2"):
        plan(RaySettings(stage1_cpus=3.0), {"CPU": 8.0}, llm=False, largest={"CPU": 2.0})
    with pytest.raises(PipelineError, match=r"ask for 2 GPUs \(2 stage-1 actor\(s\) × 1\) and "
                                            "the cluster has 1"):
        plan(RaySettings(stage1_gpus=1.0, stage1_actors=2), {"CPU": 8.0, "GPU": 1.0}, llm=False)
    # the two pools together, not each alone, must fit the GPUs
    with pytest.raises(PipelineError, match=r"ask for 1.5 GPUs"):
        plan(RaySettings(stage1_actors=2), {"CPU": 8.0, "GPU": 1.0}, llm=True)
    # an LLM on servers (the openai backend) needs no GPU in its actors
    remote = plan(RaySettings(), {"CPU": 8.0, "GPU": 1.0}, llm=True, llm_on_gpu=False)
    assert remote.llm_gpus == 0 and remote.stage1_gpus == 1.0
    with pytest.raises(PipelineError, match="has no CPUs"):
        plan(RaySettings(), {"GPU": 1.0}, llm=False)


# ---- real processes: a driver killed, a node lost ------------------------------------------

def wait_for(parts: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    """Until a part file is there (parts come back in any order under Ray)."""
    end = time.monotonic() + seconds
    while not (parts.is_dir() and any(parts.glob("*.jsonl"))):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before a part: "
                                 f"{proc.stderr.read()}")
        assert time.monotonic() < end, f"no part in {parts} after {seconds} s"
        time.sleep(0.2)


def test_driver_killed_then_rerun_gives_the_same_bytes(tiny_ensemble, tmp_path):
    """The driver SIGKILLed mid-run (with the Ray it started), the same command again."""
    src = corpus(tmp_path, n=30)
    common = ["--input", src, "--ensemble", tiny_ensemble, "--stage1-threshold", 0.5,
              "--chunk-size", 2, "--format", "tsv,jsonl,brat"]
    code, _, err = run_cli("run", *common, "--output", tmp_path / "local")
    assert code == 0, err
    cmd = [sys.executable, "-m", "pipeline", "run", *map(str, common),
           "--output", str(tmp_path / "ray"), "--engine", "ray"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        wait_for(tmp_path / "ray" / "parts", proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and what it started, at once
        proc.wait()
    written = len(list((tmp_path / "ray" / "parts").glob("*.jsonl")))
    assert 0 < written < len(list((tmp_path / "local" / "parts").glob("*.jsonl")))  # mid-run
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


CLUSTER_RUN = Path(__file__).with_name("ray_cluster_run.py")


def test_a_node_lost_mid_run(tiny_ensemble, tiny_llm_dir, tmp_path):
    """A three-node cluster on this machine; the node of one stage's actor is removed once
    the first part is written (a new node joins, as an autoscaler would bring one): the
    run completes and its outputs are the local run's."""
    src = corpus(tmp_path, n=30)
    code, _, err = run_cli("run", "--input", src, "--ensemble", tiny_ensemble, "--llm",
                           tiny_llm_dir, "--llm-backend", "hf", "--stage1-threshold", 0.5,
                           "--stage2-threshold", 0.4, "--chunk-size", 2,
                           "--format", "tsv,jsonl,brat", "--output", tmp_path / "local")
    assert code == 0, err
    done = subprocess.run([sys.executable, str(CLUSTER_RUN), str(src), str(tiny_ensemble),
                           str(tiny_llm_dir), str(tmp_path / "ray")], capture_output=True,
                          text=True, timeout=280, env={**os.environ,
                                                       "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ray.cluster.json").read_text())
    assert report["code"] == 0, report["stderr"]
    assert report["removed_after_parts"] < report["parts"]  # removed in the middle
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
