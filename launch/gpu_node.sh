#!/usr/bin/env bash
# One GPU node, all its GPUs, one process (JAX's recommended layout: one process drives every local GPU).
#
#   launch/gpu_node.sh --config=configs/default.py --workdir=runs/gpu
#   RESTOREJAX_PROCESS_PER_GPU=1 launch/gpu_node.sh ...   # one process per GPU instead (via launch/local.sh)
#   launch/gpu_node.sh --config=... --workdir=... --dry_run  # print the set-up and the mesh, train nothing
#
# Needs the CUDA build of jax: pip install -e ".[cuda]". The XLA flag below is the usual one for
# data-parallel training on NVIDIA GPUs (overlap collectives with compute); XLA keeps the last value of a
# flag, so anything already in XLA_FLAGS comes after ours and wins. Exit status: the run's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true${XLA_FLAGS:+ $XLA_FLAGS}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
if [[ "${RESTOREJAX_PROCESS_PER_GPU:-0}" == 1 ]]; then
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -ra visible <<< "$CUDA_VISIBLE_DEVICES"; n=${#visible[@]}
  else
    n=$(nvidia-smi --list-gpus | wc -l)
  fi
  if ((n < 1)); then echo "launch/gpu_node.sh: no GPU found (nvidia-smi --list-gpus)" >&2; exit 1; fi
  RESTOREJAX_CLUSTER=gpu_node exec "$here/local.sh" "$n" "$@"
fi
RESTOREJAX_CLUSTER=none exec "${PYTHON:-python}" -m restorejax.main "$@"
