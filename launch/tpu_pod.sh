#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker at once (each worker is one process).
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/default.py --workdir=/mnt/bucket/runs/exp1
#
# Assumes the repository is checked out at ~/restorejax on every worker and installed with
# pip install -e ".[tpu]" (launch/tpu_pod.sh TPU_NAME ZONE --setup does both from RESTOREJAX_REPO).
# JAX finds the other workers by itself on TPU VMs; the work directory must be a path every worker sees
# at the same place (a bucket mounted with gcsfuse, a Filestore share); gs:// URLs are refused for now.
# Re-running the same command resumes from the last checkpoint.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE [--setup | restorejax.main flags...]" >&2
  exit 2
fi
tpu=$1; zone=$2; shift 2
ssh() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
if [[ "${1:-}" == "--setup" ]]; then
  repo=${RESTOREJAX_REPO:?set RESTOREJAX_REPO to the git URL of restorejax}
  ssh "git clone $repo ~/restorejax 2>/dev/null || git -C ~/restorejax pull; cd ~/restorejax && pip install -e '.[tpu]'"
  exit 0
fi
args=$(printf ' %q' "$@")
ssh "cd ~/restorejax && python -m restorejax.main$args"
