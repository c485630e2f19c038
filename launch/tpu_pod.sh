#!/usr/bin/env bash
# A Cloud TPU VM slice: the same command on every worker at once (each worker is one process), detached,
# with a log file on each worker.
#
#   launch/tpu_pod.sh TPU_NAME ZONE --setup                      # clone/pull, Python 3.11+, venv, install
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/default.py --workdir=/mnt/bucket/runs/exp1
#   launch/tpu_pod.sh TPU_NAME ZONE --follow [WORKER]            # tail -F worker 0's (or WORKER's) log
#   launch/tpu_pod.sh TPU_NAME ZONE --status                     # running or not, last log line, per worker
#   launch/tpu_pod.sh TPU_NAME ZONE --stop                       # SIGTERM: every worker saves, then exits
#   launch/tpu_pod.sh TPU_NAME ZONE --config=... --workdir=... --dry_run   # set-up and mesh only (--follow)
#
# --setup clones RESTOREJAX_REPO (git URL) into ~/restorejax on every worker (or pulls), finds a Python
# 3.11+ (stock TPU VM images ship 3.10; it installs python3.11 from the Ubuntu archive when missing, or
# says what to do), makes ~/restorejax/.venv and installs restorejax with jax[tpu] there.
# A run starts detached (setsid nohup) on every worker with RESTOREJAX_CLUSTER=tpu_vm (JAX's own TPU
# detection joins the workers) and writes ~/restorejax-logs/<time>.log there (latest.log points at it);
# this command returns once all have started. XLA_FLAGS, LIBTPU_INIT_ARGS and RESTOREJAX_* set here are
# passed on (XLA keeps the last value of a flag: the user's win). The work directory must be a path every
# worker sees at the same place (a bucket mounted with gcsfuse, a Filestore share); gs:// URLs are refused
# for now. Re-running the same command resumes from the last checkpoint.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE --setup | --follow [WORKER] | --status | --stop | restorejax.main flags..." >&2
  exit 2
fi
tpu=$1; zone=$2; shift 2
on() {  # on WORKER|all COMMAND: gcloud's exit status is the first failing worker's
  gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker="$1" --command "$2"
}
logs='$HOME/restorejax-logs'
alive="[ -f $logs/run.pid ] && kill -0 \$(cat $logs/run.pid) 2>/dev/null"

case "$1" in
  --setup)
    repo=${RESTOREJAX_REPO:?set RESTOREJAX_REPO to the git URL of restorejax}
    on all "set -e
      if [ -d ~/restorejax/.git ]; then git -C ~/restorejax pull --ff-only; else git clone $(printf %q "$repo") ~/restorejax; fi
      py=
      for c in python3.13 python3.12 python3.11 python3; do
        if command -v \$c >/dev/null && \$c -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then py=\$c; break; fi
      done
      if [ -z \"\$py\" ]; then
        sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv && py=python3.11 || {
          echo \"\$(hostname): no Python 3.11+ and apt could not install python3.11; install one (e.g. uv python install 3.11) and rerun --setup\" >&2
          exit 1; }
      fi
      \$py -m venv ~/restorejax/.venv
      ~/restorejax/.venv/bin/pip install -q --upgrade pip
      ~/restorejax/.venv/bin/pip install -q -e ~/restorejax'[tpu]'
      echo \"\$(hostname): \$(~/restorejax/.venv/bin/python --version), restorejax installed\""
    exit
    ;;
  --follow)
    on "${2:-0}" "tail -n 200 -F $logs/latest.log"
    exit
    ;;
  --status)
    on all "if $alive; then s=running; else s=stopped; fi; echo \"\$(hostname): \$s; \$(tail -n 1 $logs/latest.log 2>/dev/null)\""
    exit
    ;;
  --stop)
    on all "if $alive; then kill -TERM \$(cat $logs/run.pid) && echo \"\$(hostname): SIGTERM sent (saves, then exits)\"; else echo \"\$(hostname): not running\"; fi"
    exit
    ;;
esac

env_args="RESTOREJAX_CLUSTER=tpu_vm"
for name in XLA_FLAGS LIBTPU_INIT_ARGS $(compgen -e | grep '^RESTOREJAX_' | grep -v '^RESTOREJAX_CLUSTER$' || true); do
  if [[ -n "${!name:-}" ]]; then env_args+=" $name=$(printf %q "${!name}")"; fi
done
args=$(printf ' %q' "$@")
on all "set -e
  if $alive; then echo \"\$(hostname): a run is already going (pid \$(cat $logs/run.pid)); --stop it first\" >&2; exit 1; fi
  [ -x ~/restorejax/.venv/bin/python ] || { echo \"\$(hostname): ~/restorejax/.venv is missing; run $0 $tpu $zone --setup\" >&2; exit 1; }
  mkdir -p $logs; log=$logs/\$(date -u +%Y%m%d-%H%M%S).log; ln -sfn \"\$log\" $logs/latest.log
  cd ~/restorejax
  $env_args setsid nohup .venv/bin/python -m restorejax.main$args > \"\$log\" 2>&1 < /dev/null &
  echo \$! > $logs/run.pid
  echo \"\$(hostname): started (pid \$!), log \$log\""
