#!/usr/bin/env bash
# Measure moesim schedules on a GPU cluster: one torchrun per node (srun), NCCL, one rank per GPU.
# The worker is the same one `moesim validate` runs on a single machine (moesim.validation.run_plan):
# every rank builds the same ExecutionPlan for each --schedule, executes it with one CUDA stream per plan
# stream, and rank 0 writes the measured timelines to $OUT (read them with
# moesim.validation.run_plan.load_measured). Adapt the #SBATCH lines to your cluster.
#
#   sbatch validation/slurm_example.sh              # defaults below
#   MODEL=gpt2-l-moe NODES_HW=p4de.24xlarge sbatch --nodes=4 validation/slurm_example.sh
#
#SBATCH --job-name=moesim-validate
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun launcher per node; it spawns the GPU ranks
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=00:30:00
#SBATCH --output=moesim-validate-%j.log

set -euo pipefail

MODEL=${MODEL:-gpt2-s-moe}            # a preset name or a path to a model YAML
NODES_HW=${NODES_HW:-p3dn.24xlarge}   # the hardware preset the plans are made for (must match the nodes)
GPUS_PER_NODE=${GPUS_PER_NODE:-8}     # ranks per node = GPUs per node of that preset
WARMUP=${WARMUP:-2}                   # warm-up iterations (the first one also initialises NCCL communicators)
ITERATIONS=${ITERATIONS:-10}
OUT=${OUT:-measured-${SLURM_JOB_ID}.json}

# The first node of the allocation hosts the c10d rendezvous.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}

# NCCL settings worth recording with the measurement; uncomment what your fabric needs.
# export NCCL_DEBUG=WARN
# export NCCL_SOCKET_IFNAME=eth0        # the interface ranks use to find each other
# export FI_PROVIDER=efa                # AWS EFA (p3dn / p4de / p5) through the aws-ofi-nccl plugin
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# --nodes tells moesim how many nodes the plan covers: nnodes x GPUS_PER_NODE ranks must equal the
# plan's GPU count, or every rank stops with one line saying so (exit 2).
srun --kill-on-bad-exit=1 python -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD_NODE:$RDZV_PORT" \
    -m moesim.validation.run_plan \
    --model "$MODEL" \
    --hardware "$NODES_HW" \
    --nodes "$SLURM_NNODES" \
    --schedule sequential \
    --schedule tutel \
    --schedule lancet \
    --warmup "$WARMUP" \
    --iterations "$ITERATIONS" \
    --out "$OUT"

echo "measured timelines: $OUT"
