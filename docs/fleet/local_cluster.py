"""A fleet campaign on a local Ray cluster (docs/fleet.md's local campaign was made with this).

A head and two worker "nodes" on this machine, each worker with a ``qtsim:<slot>`` resource
standing for a GPU node, plus a slot on the head that asks for an L4 (refused: no GPU). Runs
``qtsim fleet calibrate`` (tiny plan; cpu-a's worker is killed after 5 points as a drill),
``qtsim fleet validate --from`` and ``qtsim fleet simulate``, then shuts the cluster down.

    python docs/fleet/local_cluster.py OUT_DIR
"""

import subprocess
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

out = Path(sys.argv[1] if len(sys.argv) > 1 else "fleet-demo")
small = {"object_store_memory": 80 * 2**20}
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "resources": {"qtsim:cpu-c": 1}, "include_dashboard": False, **small})
for slot in ("cpu-a", "cpu-b"):
    cluster.add_node(num_cpus=1, resources={f"qtsim:{slot}": 1}, **small)
cluster.wait_for_nodes()
validation = Path(__file__).parents[2] / "data" / "validation"
plan = out / "holdout.toml"
out.mkdir(parents=True, exist_ok=True)
plan.write_text("[validation]\nnew_tokens = 8\nprompt_tokens = 16\nreps = 2\n[grid]\n"
                f"models = ['{validation / 'tiny-llama-a.json'}']\n"
                "precisions = ['fp16', 'int8', 'nf4']\nbatches = [2]\n")
commands = [
    ["fleet", "calibrate", "--address", cluster.address, "--nodes", "cpu-a,cpu-b,cpu-c=l4",
     "--gpu", "cpu", "--plan", "tiny", "--cpu-threads", "1", "--crash-after", "cpu-a=5",
     "--out", str(out / "cal")],
    ["fleet", "validate", "--address", cluster.address, "--from", str(out / "cal"),
     "--plan", str(plan), "--out", str(out / "val")],
    ["fleet", "simulate", "--address", cluster.address, "--gpu", "l4,h100-sxm",
     "--family", "mistral-7b", "--sizes", "0.5e9:80e9:200", "--batch", "1:512:24",
     "--draws", "50", "--chunk-models", "50", "--out", str(out / "sweep.h5")],
]
try:
    for c in commands:
        print("$ qtsim " + " ".join(c).replace(cluster.address, "$RAY_ADDRESS"), flush=True)
        subprocess.run([sys.executable, "-m", "qtsim", *c], check=True)
finally:
    ray.shutdown()
    cluster.shutdown()
