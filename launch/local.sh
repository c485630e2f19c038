#!/usr/bin/env bash
# Several processes of restorejax on this machine, joined by jax.distributed: the multi-host code path
# without a cluster (CPU), or one process per GPU on a node.
#
#   launch/local.sh NUM_PROCESSES --config=configs/default.py:tiny --workdir=runs/local2
#
# Each process sees the devices that JAX gives it (one CPU device unless XLA_FLAGS says otherwise; set
# RESTOREJAX_ONE_GPU_PER_PROCESS=1 to pin process i to GPU i). SIGTERM/SIGINT are forwarded to every
# process, so a preemption reaches all of them. Exit status: the first non-zero one, else 0.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES [restorejax.main flags...]" >&2
  exit 2
fi
n=$1; shift
python=${PYTHON:-python}
port=${RESTOREJAX_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < n; i++)); do
  if [[ "${RESTOREJAX_ONE_GPU_PER_PROCESS:-0}" == 1 ]]; then export CUDA_VISIBLE_DEVICES=$i; fi
  "$python" -m restorejax.main --coordinator_address="127.0.0.1:$port" --num_processes="$n" \
    --process_id="$i" "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then
    code=$?
    # a process interrupted by the trap is waited for again
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || code=$?; done
    [[ $status -eq 0 ]] && status=$code
  fi
done
exit $status
