#!/usr/bin/env bash
# One cai run over a Slurm job array: task i of N runs `--shard i/N` into one run directory on a
# shared filesystem, and an export job, started only once every task has succeeded, merges them.
#
#   bash examples/slurm-array.sh my.yaml runs/big 8     # submit 8 shards and the export after them
#
# Record ids hash their inputs, so shards never write the same record, and a task that fails or is
# preempted resumes its shard when it runs again (`#SBATCH --requeue`, or resubmit the same array):
# a requeued task keeps its job id, which is how its lock knows it for itself on another node.
# Cross-shard near-duplicate queries are dropped by the export.
#
#SBATCH --job-name=cai-shard
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=cai-%A_%a.log
set -euo pipefail

CAI=${CAI:-cai}  # the command, e.g. "srun cai" or "python -m cai.cli"
CONFIG=${1:?usage: slurm-array.sh CONFIG RUN_DIR [SHARDS]}
OUT=${2:?usage: slurm-array.sh CONFIG RUN_DIR [SHARDS]}
SHARDS=${3:-4}

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    # inside the array: this task's share of the queries (the array must be 0..N-1)
    exec $CAI run "$CONFIG" --out "$OUT" --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT"
fi

# on the login node: the array, then the export once all of it has succeeded
array=$(sbatch --parsable --array="0-$((SHARDS - 1))" "$0" "$CONFIG" "$OUT")
array=${array%%;*}
export_job=$(sbatch --parsable --job-name=cai-export --dependency="afterok:$array" --kill-on-invalid-dep=yes \
    --cpus-per-task=4 --mem=16G --time=2:00:00 --output="cai-export-%j.log" --wrap "$CAI export '$OUT'")
echo "submitted shards as job $array (0-$((SHARDS - 1))) and the export as job $export_job"
echo "progress: $CAI status $OUT"
