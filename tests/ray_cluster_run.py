"""A `pipeline run --engine ray` on a three-node cluster of this machine that loses a node.

Usage: python ray_cluster_run.py CORPUS ENSEMBLE LLM OUT (run by tests/test_ray.py). The
head node has 1 CPU, two workers have 2 each; the stage-1 actor and the LLM actor claim 1.5
CPUs each, so each lives on a worker of its own. The run is a `pipeline run --ray-address`
process, as a user would start it. Once its first part is written, the first worker (and
the actor on it) is removed and a new worker joins, as an autoscaler would bring one; Ray
restarts the lost actor there and reruns what it held. Writes OUT.cluster.json: the run's
exit code, parts written in all and before the removal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> int:
    from ray.cluster_utils import Cluster

    corpus, ensemble, llm, out = sys.argv[1:5]
    parts = Path(out) / "parts"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    config = Path(out).parent / "cluster.json"
    config.write_text(json.dumps({"ray": {"stage1_actors": 1, "stage1_cpus": 1.5,
                                          "llm_actors": 1, "llm_cpus": 1.5,
                                          "stall_seconds": 150}}))
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--input", corpus, "--ensemble", ensemble,
         "--llm", llm, "--llm-backend", "hf", "--stage1-threshold", "0.5",
         "--stage2-threshold", "0.4", "--chunk-size", "2", "--format", "tsv,jsonl,brat",
         "--output", out, "--engine", "ray", "--ray-address", cluster.address,
         "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        while not (parts.is_dir() and any(parts.glob("*.jsonl"))) and run.poll() is None:
            time.sleep(0.05)
        before = len(list(parts.glob("*.jsonl")))
        cluster.remove_node(worker, allow_graceful=False)
        cluster.add_node(num_cpus=2)
        _, err = run.communicate(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
        cluster.shutdown()
    report = {"code": run.returncode, "parts": len(list(parts.glob("*.jsonl"))),
              "removed_after_parts": before, "stderr": err[-3000:]}
    Path(f"{out}.cluster.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
