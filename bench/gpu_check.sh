#!/usr/bin/env bash
# Fractional GPU sharing on a real GPU: one script, under 10 minutes on one GPU machine.
#
#   bench/gpu_check.sh /path/to/cifar10
#
# Three runs on real CIFAR-10, each with fedsim's own private Ray:
#   auto   8 clients, no --gpus-per-client: fedsim picks a share and prints it
#   share  4 clients at --gpus-per-client 0.25, the actors logging what Ray gave them
#   cpu    the same 4 clients at --gpus-per-client 0 (the baseline)
# while nvidia-smi samples utilisation, memory and the processes on the GPU. The
# summary (shares, clients at a time, seconds per round, accuracy; from the actors:
# how many trained at once, their GPU ids, whether they had CUDA) goes to
# bench/results/gpu_check.md; run folders and logs to bench/results/tmp/gpu-check/.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${1:?usage: bench/gpu_check.sh /path/to/cifar10}
OUT=$PWD/bench/results/tmp/gpu-check  # absolute: the actors write into it too
SUMMARY=bench/results/gpu_check.md
PY=${PYTHON:-.venv/bin/python}

command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi on this machine" >&2; exit 1; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: PyTorch sees no CUDA device" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT/actors"

echo "gpu_check: decoding the data into fedsim's cache (once per machine)"
timeout 240 "$PY" -c "import sys; from fedsim.learning.data import load_cifar; load_cifar(sys.argv[1])" "$DATA"

# nvidia-smi in the background, both stopped on exit (by their own process ids)
nvidia-smi --query-gpu=timestamp,name,utilization.gpu,memory.used,memory.total \
    --format=csv,nounits -l 1 >"$OUT/gpu.csv" &
GPU_SAMPLER=$!
(while sleep 2; do
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits
done) >"$OUT/gpu_processes.csv" &
PROCESS_SAMPLER=$!
trap 'kill "$GPU_SAMPLER" "$PROCESS_SAMPLER" 2>/dev/null || true' EXIT

run() {  # NAME, then simulate.py options
    local name=$1
    shift
    echo "gpu_check: run $name"
    timeout 150 "$PY" simulate.py --data "$DATA" --results-dir "$OUT" --name "$name" "$@" \
        2>&1 | tee "$OUT/$name.log"
}
run auto --clients 8 --rounds 2
FEDSIM_ACTOR_LOG="$OUT/actors" run share --clients 4 --rounds 3 --gpus-per-client 0.25
run cpu --clients 4 --rounds 3 --gpus-per-client 0

"$PY" - "$OUT" "$SUMMARY" <<'EOF'
"""Summarise the three runs, the actors' own records and the GPU samples."""
import csv
import json
import sys
from pathlib import Path

out, summary = Path(sys.argv[1]), Path(sys.argv[2])
lines = ["# GPU check (bench/gpu_check.sh)", ""]
gpu = list(csv.DictReader((out / "gpu.csv").open(), skipinitialspace=True))


def column(row: dict, prefix: str) -> float:
    """A sample's value by the column's name without its unit (nvidia-smi may say
    `memory.used [MiB]` or `memory.used`)."""
    return float(next(v for k, v in row.items() if k and k.startswith(prefix)))


if gpu:
    name = gpu[0]["name"]
    util = max(column(row, "utilization.gpu") for row in gpu)
    memory = max(column(row, "memory.used") for row in gpu)
    lines += [f"GPU: {name}; peak utilisation {util:.0f} %, peak memory {memory:.0f} MiB", ""]
lines += ["| run | GPU per client | clients at a time | s/round (after round 1) | accuracy |"]
lines += ["| --- | --- | --- | --- | --- |"]
for run in ("auto", "share", "cpu"):
    config = json.loads((out / run / "config.json").read_text())
    rounds = list(csv.DictReader((out / run / "rounds.csv").open()))
    later = [float(r["round_seconds"]) for r in rounds[2:]] or [float(rounds[-1]["round_seconds"])]
    cluster = config["cluster"]
    lines.append(
        f"| {run} | {cluster['client_resources']['num_gpus']:g} | "
        f"{cluster['concurrent_clients']} | {sum(later) / len(later):.2f} | "
        f"{float(rounds[-1]['central_accuracy']):.4f} |"
    )
calls = [
    json.loads(line)
    for log in (out / "actors").glob("*.jsonl")
    for line in log.read_text().splitlines()
]
train = [c for c in calls if c["kind"] == "train"]
at_once = max((sum(o["start"] <= c["start"] < o["end"] for o in train) for c in train), default=0)
lines += [
    "",
    f"From the actors of `share` ({len(train)} train calls, {len({c['pid'] for c in train})} "
    f"actors): at most {at_once} trained at once; GPU shares "
    f"{sorted({c['resources'].get('GPU', 0) for c in train})}, GPU ids "
    f"{sorted({tuple(c['gpu_ids']) for c in train})}, CUDA in every actor: "
    f"{all(c['cuda'] for c in train)}.",
]
held = {c["pid"]: c.get("cuda_reserved", 0) for c in train}
lines.append(
    "GPU memory torch's allocator held in each actor (MiB): "
    f"{sorted(round(value / 2**20) for value in held.values())}."
)
pids = {line.split(",")[0].strip() for line in (out / "gpu_processes.csv").read_text().splitlines()}
actor_pids = {str(c["pid"]) for c in train}
seen = len(actor_pids & pids)
lines.append(f"Actor processes nvidia-smi saw on the GPU: {seen} of {len(actor_pids)}.")
summary.write_text("\n".join(lines) + "\n")
print(summary.read_text())
EOF
