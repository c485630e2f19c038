#!/usr/bin/env bash
# One GPU node, all its GPUs, one process (JAX's recommended layout: one process drives every local GPU).
#
#   launch/gpu_node.sh --config=configs/default.py --workdir=runs/gpu
#   RESTOREJAX_PROCESS_PER_GPU=1 launch/gpu_node.sh ...   # one process per GPU instead (via launch/local.sh)
#
# Needs the CUDA build of jax: pip install -e ".[cuda]". The XLA flags below are the usual ones for
# data-parallel training on NVIDIA GPUs (overlap collectives with compute); anything already in XLA_FLAGS
# comes first and wins.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
if [[ "${RESTOREJAX_PROCESS_PER_GPU:-0}" == 1 ]]; then
  n=$(nvidia-smi --list-gpus | wc -l)
  RESTOREJAX_ONE_GPU_PER_PROCESS=1 exec "$here/local.sh" "$n" "$@"
fi
exec "${PYTHON:-python}" -m restorejax.main "$@"
