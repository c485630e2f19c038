#!/usr/bin/env bash
# Several processes of restorejax on this machine, joined by jax.distributed: the multi-host code path
# without a cluster (CPU), or one process per GPU on a node (launch/gpu_node.sh).
#
#   launch/local.sh NUM_PROCESSES --config=configs/default.py:tiny --workdir=runs/local2
#   launch/local.sh 2 --config=configs/default.py:tiny --workdir=runs/local2 --dry_run   # set-up only
#
# Each process sees the devices that JAX gives it (one CPU device unless XLA_FLAGS says otherwise);
# RESTOREJAX_CLUSTER=gpu_node (set by gpu_node.sh) pins process i to GPU i. SIGTERM/SIGINT are forwarded
# to every process, so a preemption reaches all of them. When a process fails, the others stop by
# themselves within RESTOREJAX_PEER_TIMEOUT_S (30 s); any still running a minute later are killed.
# Exit status: that of the first process to fail (its line says which), else 0.
set -o pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 NUM_PROCESSES [restorejax.main flags...]" >&2
  exit 2
fi
n=$1; shift
python=${PYTHON:-python}
export RESTOREJAX_CLUSTER=${RESTOREJAX_CLUSTER:-local}
if [[ -n "${RESTOREJAX_PORT:-}" ]]; then
  port=$RESTOREJAX_PORT
else
  free_port='import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  port=$(python3 -c "$free_port" 2>/dev/null || "$python" -c "$free_port") || exit 1
fi
pids=()
for ((i = 0; i < n; i++)); do
  "$python" -m restorejax.main --coordinator_address="127.0.0.1:$port" --num_processes="$n" \
    --process_id="$i" "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT

# Poll rather than `wait -n` (bash >= 4.3): a process's status is read as soon as it ends, in any order.
grace=$(( ${RESTOREJAX_PEER_TIMEOUT_S:-30} + 30 ))
status=0
deadline=
running=("${!pids[@]}")
while ((${#running[@]})); do
  for i in "${running[@]}"; do
    kill -0 "${pids[i]}" 2>/dev/null && continue
    wait "${pids[i]}"; code=$?
    left=(); for j in "${running[@]}"; do [[ $j != "$i" ]] && left+=("$j"); done; running=("${left[@]}")
    if ((code != 0 && status == 0)); then
      status=$code
      deadline=$((SECONDS + grace))
      echo "launch/local.sh: process $i of $n exited with status $code" >&2
    fi
  done
  if [[ -n $deadline ]] && ((SECONDS > deadline && ${#running[@]})); then
    echo "launch/local.sh: killing process(es) ${running[*]}, still running ${grace}s after the failure" >&2
    for i in "${running[@]}"; do kill -KILL "${pids[i]}" 2>/dev/null; done
    deadline=
  fi
  ((${#running[@]})) && sleep 0.5
done
exit $status
