"""Multi-process start: the cluster a launcher names -> the arguments of `jax.distributed.initialize()`.

Each script in launch/ says which cluster it runs on with `RESTOREJAX_CLUSTER` (as big_vision's
`BV_JAX_INIT`), so that nothing is guessed:

  none      one process; jax.distributed is not started (the default when no flag asks for more)
  local     N processes on this machine (launch/local.sh): --coordinator_address --num_processes
            --process_id; each process sees the devices JAX gives it
  gpu_node  one process per GPU on one node (launch/gpu_node.sh with RESTOREJAX_PROCESS_PER_GPU=1):
            as local, and process i drives GPU i only
  slurm     srun tasks (launch/slurm.sbatch), from the SLURM_* variables: a task that is alone on its
            node drives all the node's GPUs; several tasks on a node split them evenly (one GPU per
            task when there are as many tasks as GPUs)
  tpu_vm    the workers of a Cloud TPU VM slice (launch/tpu_pod.sh): JAX's own TPU detection
  auto      JAX's own cluster detection (Open MPI, Kubernetes, ...), for clusters without a launcher here

Without RESTOREJAX_CLUSTER, the three flags alone mean `local`; and a multi-process environment that no
launcher named (SLURM_NTASKS > 1, an Open MPI world, several TPU workers) is an error rather than N
independent copies of the run writing to one work directory.

A process that loses a peer stops within `RESTOREJAX_PEER_TIMEOUT_S` seconds (default 30) with one line
naming the process and saying to rerun the same command to resume (`watch_peers`), instead of JAX's C++
abort after its heartbeat timeout. That holds for process 0 too: where process 0 knows its index (local,
gpu_node, slurm), JAX's coordination service runs in a detached child of process 0 instead of inside it
(`serve`), so that killing process 0 does not take the service down with it; inside process 0, its loss
would make every other process's JAX client abort at once with a C++ stack trace (measured: 2 s), and
jaxlib's `missed_heartbeat_callback` cannot replace that abort (its status argument fails to convert,
`std::bad_cast`). The child outlives process 0 by the peer timeout plus 30 s, then exits (it cannot tell
a killed process 0 from a finished one); `jax.distributed.shutdown()` in process 0 stops it
after SERVICE_GRACE_S, so that the others' last calls of the shutdown barrier still find it.

`python -m restorejax.distributed [--coordinator_address=... --num_processes=N --process_id=i]` prints the
plan this environment resolves to, without starting JAX (`--dry_run` of the train command starts it).
"""

import argparse
import atexit
import collections
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
from jax._src import distributed as jax_distributed  # the coordination client, for the watchdog

CLUSTERS = ("none", "local", "gpu_node", "slurm", "tpu_vm", "auto")
ENV = "RESTOREJAX_CLUSTER"
PEER_TIMEOUT_ENV = "RESTOREJAX_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 30


class DistributedError(ValueError):
  """A cluster environment that cannot be started as asked; the message names the variable or flag."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the others: `init_args` for `jax.distributed.initialize()`, or None."""

  cluster: str
  init_args: Optional[dict[str, Any]]
  note: str = ""   # where the arguments came from, for the dry run

  def describe(self) -> str:
    if self.init_args is None:
      return f"cluster={self.cluster}: one process, jax.distributed not started"
    args = ", ".join(f"{k}={v!r}" for k, v in self.init_args.items())
    return f"cluster={self.cluster}: jax.distributed.initialize({args})" + (f"  [{self.note}]" if self.note else "")


# ----------------------------------------------------------------------------------------------------
# Resolving the environment (pure: reads a mapping, starts nothing).
# ----------------------------------------------------------------------------------------------------

def _int(env: Mapping[str, str], name: str, cluster: str) -> int:
  value = env.get(name)
  if value is None or not value.strip().isdigit():
    raise DistributedError(f"{ENV}={cluster} but {name} is {'not set' if value is None else repr(value)}"
                           + (" (run the command under srun, as launch/slurm.sbatch does)"
                              if cluster == "slurm" else ""))
  return int(value)


def _timeouts(env: Mapping[str, str]) -> dict[str, int]:
  peer = peer_timeout_s(env)
  # JAX's own heartbeat is left well behind ours, so that the watchdog's line comes first.
  return {"heartbeat_timeout_seconds": max(100, 4 * peer)}


def peer_timeout_s(env: Mapping[str, str]) -> int:
  value = env.get(PEER_TIMEOUT_ENV, str(DEFAULT_PEER_TIMEOUT_S))
  if not value.isdigit() or int(value) < 1:
    raise DistributedError(f"{PEER_TIMEOUT_ENV}={value!r}: expected a whole number of seconds >= 1")
  return int(value)


def first_host(nodelist: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-004,9],cpu1' -> 'gpu003'."""
  m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
  if not m:
    raise DistributedError(f"cannot read the SLURM node list {nodelist!r}")
  prefix, ranges = m.groups()
  return prefix + (re.split(r"[-,]", ranges)[0] if ranges else "")


def tasks_per_node(spec: str) -> list[int]:
  """SLURM's task counts per node: '4(x2),3' -> [4, 4, 3]."""
  out = []
  for part in spec.split(","):
    m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if not m:
      raise DistributedError(f"cannot read SLURM's tasks per node {spec!r}")
    out += [int(m.group(1))] * int(m.group(2) or 1)
  return out


def visible_gpus(env: Mapping[str, str]) -> int:
  """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else SLURM's count for the node."""
  cuda = env.get("CUDA_VISIBLE_DEVICES")
  if cuda is not None and cuda.strip() not in ("", "NoDevFiles"):
    return len([d for d in cuda.split(",") if d.strip()])
  for name in ("SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
    value = env.get(name, "").strip()
    if value:
      return int(value) if name == "SLURM_GPUS_ON_NODE" else len(value.split(","))
  return 0


def _slurm(env: Mapping[str, str]) -> Plan:
  c = "slurm"
  processes = _int(env, "SLURM_NTASKS", c) if "SLURM_STEP_NUM_TASKS" not in env else _int(
      env, "SLURM_STEP_NUM_TASKS", c)
  process_id = _int(env, "SLURM_PROCID", c)
  local_id = _int(env, "SLURM_LOCALID", c)
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
  if not nodelist:
    raise DistributedError(f"{ENV}=slurm but SLURM_STEP_NODELIST is not set (run the command under srun)")
  port = env.get("RESTOREJAX_PORT") or str(_int(env, "SLURM_JOB_ID", c) % 4096 + 61440)  # as JAX picks
  coordinator = env.get("RESTOREJAX_COORDINATOR") or f"{first_host(nodelist)}:{port}"
  spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  node = int(env.get("SLURM_NODEID", "0"))
  if spec:
    counts = tasks_per_node(spec)
    local_tasks = counts[node] if node < len(counts) else counts[-1]
  else:
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    local_tasks = max(1, processes // nodes)
  gpus = visible_gpus(env)
  if gpus == 0:
    local_ids, note = None, "no GPUs allocated: each task uses the devices JAX finds"
  elif local_tasks == 1:
    local_ids, note = list(range(gpus)), f"one task on this node drives its {gpus} GPUs"
  elif gpus == 1:
    local_ids, note = [0], "SLURM bound one GPU to this task"
  elif gpus % local_tasks == 0:
    k = gpus // local_tasks
    local_ids = list(range(local_id * k, (local_id + 1) * k))
    note = f"{local_tasks} tasks on this node share its {gpus} GPUs, {k} each"
  else:
    raise DistributedError(f"{ENV}=slurm: {local_tasks} tasks on node {node} cannot share its {gpus} GPUs "
                           "evenly; ask for one task per node or one per GPU")
  args = {"coordinator_address": coordinator, "num_processes": processes, "process_id": process_id,
          "local_device_ids": local_ids, "cluster_detection_method": "deactivate", **_timeouts(env)}
  return Plan(c, args, note)


def _multi_process_hint(env: Mapping[str, str]) -> Optional[str]:
  """The variable that says this is one of several processes, if any."""
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
    return f"SLURM_NTASKS={env['SLURM_NTASKS']} (use launch/slurm.sbatch, or set {ENV}=slurm)"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return f"OMPI_COMM_WORLD_SIZE={env['OMPI_COMM_WORLD_SIZE']} (set {ENV}=auto)"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return f"TPU_WORKER_HOSTNAMES lists several workers (use launch/tpu_pod.sh, or set {ENV}=tpu_vm)"
  return None


def resolve(env: Mapping[str, str], coordinator_address: Optional[str] = None,
            num_processes: Optional[int] = None, process_id: Optional[int] = None) -> Plan:
  """The plan for this process from its environment and the three explicit flags (None when not given)."""
  flags_given = coordinator_address is not None or (num_processes or 1) > 1 or process_id is not None
  cluster = env.get(ENV, "").strip() or ("local" if flags_given else "none")
  if cluster not in CLUSTERS:
    raise DistributedError(f"{ENV}={cluster}: unknown cluster (known: {', '.join(CLUSTERS)})")
  if cluster == "none":
    if flags_given:
      raise DistributedError(f"{ENV}=none but --coordinator_address/--num_processes/--process_id ask for "
                             "several processes; unset it or use launch/local.sh")
    if ENV not in env and (hint := _multi_process_hint(env)):
      raise DistributedError(f"this looks like one of several processes, {hint}; {ENV}=none runs each "
                             "process alone")
    return Plan("none", None)
  if cluster in ("local", "gpu_node"):
    missing = [f"--{n}" for n, v in (("coordinator_address", coordinator_address),
                                     ("num_processes", num_processes), ("process_id", process_id))
               if v is None]
    if missing:
      raise DistributedError(f"{ENV}={cluster} needs {', '.join(missing)} (launch/local.sh gives them)")
    if not 0 <= process_id < num_processes:
      raise DistributedError(f"--process_id={process_id} must lie in [0, --num_processes={num_processes})")
    args = {"coordinator_address": coordinator_address, "num_processes": num_processes,
            "process_id": process_id}
    if cluster == "gpu_node":
      args["local_device_ids"] = [process_id]
    note = "process i drives GPU i" if cluster == "gpu_node" else ""
    return Plan(cluster, {**args, "cluster_detection_method": "deactivate", **_timeouts(env)}, note)
  if cluster == "slurm":
    plan = _slurm(env)
    explicit = {k: v for k, v in (("coordinator_address", coordinator_address),
                                  ("num_processes", num_processes), ("process_id", process_id))
                if v is not None}
    return dataclasses.replace(plan, init_args={**plan.init_args, **explicit}) if explicit else plan
  # tpu_vm, auto: JAX finds the coordinator, the process count and this process's index itself
  # (on Cloud TPU VMs from the metadata server); explicit flags still win.
  args = {k: v for k, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                            ("process_id", process_id)) if v is not None}
  note = "JAX's TPU detection (metadata server)" if cluster == "tpu_vm" else "JAX's cluster detection"
  return Plan(cluster, {**args, **_timeouts(env)}, note)


# ----------------------------------------------------------------------------------------------------
# Starting, and reporting what started.
# ----------------------------------------------------------------------------------------------------

def start(plan: Plan) -> None:
  """Calls `jax.distributed.initialize(**plan.init_args)` (nothing for a one-process plan) and starts the
  peer watchdog; process 0 first starts the coordination service in a detached child (`serve`)."""
  if plan.init_args is None:
    return
  args = plan.init_args
  if args.get("process_id") == 0 and args.get("coordinator_address") and _can_serve_elsewhere():
    service = _start_service(args)
    with _service_elsewhere(service):
      jax.distributed.initialize(**args)
  else:
    jax.distributed.initialize(**args)
  client = jax_distributed.global_state.client
  if client is not None and jax.process_count() > 1:
    watch_peers(client, jax.process_index(), jax.process_count(), peer_timeout_s(os.environ))


# ----------------------------------------------------------------------------------------------------
# The coordination service beside process 0, not inside it.
# ----------------------------------------------------------------------------------------------------

_SERVICE_FACTORY = "get_distributed_runtime_service"


def _can_serve_elsewhere() -> bool:
  """jax.distributed.initialize starts the service through this jaxlib function (checked, not assumed)."""
  return callable(getattr(getattr(jax_distributed, "_jax", None), _SERVICE_FACTORY, None))


class _DetachedService:
  """What `jax.distributed` holds as process 0's service: stopping it stops the child."""

  def __init__(self, child: subprocess.Popen):
    self.child = child

  def shutdown(self) -> None:
    if self.child.poll() is None:
      self.child.terminate()  # `serve` then stops the service gracefully, after SERVICE_GRACE_S


@contextlib.contextmanager
def _service_elsewhere(service: _DetachedService) -> Iterator[None]:
  """While JAX initializes, its call that would start the service in this process returns `service`."""
  jaxlib_module = jax_distributed._jax  # pylint: disable=protected-access
  original = getattr(jaxlib_module, _SERVICE_FACTORY)
  setattr(jaxlib_module, _SERVICE_FACTORY, lambda *a, **k: service)
  try:
    yield
  finally:
    setattr(jaxlib_module, _SERVICE_FACTORY, original)


def _bind_address(coordinator_address: str) -> str:
  return os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", "[::]:" + coordinator_address.rsplit(":", 1)[1])


def _start_service(args: Mapping[str, Any]) -> _DetachedService:
  """Starts `serve` in a new session (a SIGKILL of this process's group does not reach it) and waits for
  its 'ready'; a service that cannot start (port taken, ...) is a DistributedError naming the address."""
  heartbeat = int(args.get("heartbeat_timeout_seconds", 100))
  linger = peer_timeout_s(os.environ) + 30
  cmd = [sys.executable, "-m", "restorejax.distributed", "--serve", _bind_address(args["coordinator_address"]),
         "--num_processes", str(args["num_processes"]), "--heartbeat_s", str(heartbeat),
         "--parent_pid", str(os.getpid()), "--linger_s", str(linger)]
  child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
  line = child.stdout.readline().strip()
  if line != "ready":
    child.wait()
    lines = [re.sub(r"^[EWIF]\d{4} [\d:.]+\s+\d+ \S+\] ", "", l)  # C++ log prefixes
             for l in (line + "\n" + child.stderr.read()).strip().splitlines()]
    error = next((l for l in lines if "Failed to add port" in l), lines[-1] if lines else "")
    raise DistributedError(f"the coordination service on {args['coordinator_address']} did not start "
                           f"(is the port in use?): {error or f'exit status {child.returncode}'}")
  child.stdout.close()
  child.stderr.close()
  return _DetachedService(child)


SERVICE_GRACE_S = 5.0


def serve(bind_address: str, num_processes: int, heartbeat_s: int, parent_pid: int, linger_s: float) -> None:
  """JAX's coordination service for `num_processes` clients, until `parent_pid` (process 0) is gone plus
  `linger_s` (the others' watchdogs need it to see that process 0 stopped), or until SIGTERM (process 0's
  `jax.distributed.shutdown()`) plus SERVICE_GRACE_S: process 0 leaves the shutdown barrier first, and
  the others' last calls must still find the service (killed at once, it made them abort; CI, stop 11)."""
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  service = jax_distributed._jax.get_distributed_runtime_service(  # pylint: disable=protected-access
      bind_address, num_processes, heartbeat_timeout=heartbeat_s)
  print("ready", flush=True)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)  # the parent stops reading: nothing more may go to its pipes
  os.dup2(devnull, 2)
  while os.getppid() == parent_pid and not stop.is_set():
    stop.wait(0.5)
  time.sleep(SERVICE_GRACE_S if stop.is_set() else linger_s)
  service.shutdown()


def devices_line(mesh: Any) -> str:
  """One line: processes, local devices per process, global devices, mesh."""
  per_process = collections.Counter(d.process_index for d in jax.devices())
  counts = sorted(set(per_process.values()))
  local = str(counts[0]) if len(counts) == 1 else str(dict(sorted(per_process.items())))
  return (f"processes: {jax.process_count()}, local devices per process: {local} "
          f"({jax.devices()[0].platform}), global devices: {jax.device_count()}, "
          f"mesh: {dict(mesh.shape)}")


# ----------------------------------------------------------------------------------------------------
# A dead peer: one line and a bounded exit, not a C++ abort.
# ----------------------------------------------------------------------------------------------------

PEER_LOST_EXIT = 75  # EX_TEMPFAIL: rerunning may succeed
_ALIVE = "restorejax/alive/"
_watch: dict[str, Any] = {}


def _peer_lost(missing: list[int], me: int, count: int, timeout_s: float) -> None:
  who = ", ".join(str(p) for p in missing)
  role = " (the coordinator)" if missing == [0] else ""
  print(f"restorejax: error: process {who}{role} of {count} stopped or became unreachable (no sign of life "
        f"for {timeout_s:.0f}s); process {me} stops too. Rerun the same command to resume from the last "
        "checkpoint.", file=sys.stderr, flush=True)
  os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access  (other threads may be stuck in a collective)


def watch_peers(client: Any, me: int, count: int, timeout_s: float, poll_s: float = 1.0,
                on_lost: Callable[[list[int], int, int, float], None] = _peer_lost) -> None:
  """Two daemon threads over the coordination service's key-value store: one counts this process's
  heartbeat (`restorejax/alive/<me>`) and reads everyone's; the other calls `on_lost` when a peer's
  count has not moved for `timeout_s`, or the store itself has not answered for that long (then the
  coordinator, process 0, is the one missing). Counts, not clocks: hosts need not agree on the time."""
  now = time.monotonic()
  state = {"seen": {p: (-1, now) for p in range(count) if p != me}, "answered": now}
  stop = threading.Event()
  _watch.update(state=state, timeout_s=timeout_s)

  def beat():
    while not stop.is_set():
      try:
        client.key_value_increment(f"{_ALIVE}{me}", 1)
        t = time.monotonic()
        for key, value in client.key_value_dir_get(_ALIVE):
          p = int(key.rsplit("/", 1)[-1])
          if p in state["seen"] and state["seen"][p][0] != value:
            state["seen"][p] = (value, t)
        state["answered"] = t
      except Exception:  # pylint: disable=broad-except  (the coordinator is gone: `check` decides)
        pass
      stop.wait(poll_s)

  def check():
    while not stop.wait(poll_s):
      t = time.monotonic()
      if t - state["answered"] > timeout_s:
        on_lost([0] if me != 0 else [p for p in state["seen"]], me, count, timeout_s)
        return
      missing = sorted(p for p, (_, seen) in state["seen"].items() if t - seen > timeout_s)
      if missing:
        on_lost(missing, me, count, timeout_s)
        return

  threads = [threading.Thread(target=target, name=f"restorejax-peers-{name}", daemon=True)
              for target, name in ((beat, "beat"), (check, "check"))]
  for thread in threads:
    thread.start()

  def stop_watching():
    # Runs before JAX's own exit handler (atexit: last in, first out): the shutdown barrier runs while the
    # watchdog still watches, then the threads are joined. A daemon thread still inside a client call
    # when the interpreter finalizes aborts the process ("FATAL: exception not rethrown"; measured: 3 of
    # 10 two-process runs that exit at once).
    try:
      jax.distributed.shutdown()
    finally:
      stop.set()
      for thread in threads:
        thread.join(timeout=10)

  atexit.register(stop_watching)


def wait_for_lost_peer() -> None:
  """After a runtime error in a multi-process run: if it came from a peer that died, the watchdog says
  so (and ends this process) within its timeout; otherwise this returns and the error stands."""
  if "state" in _watch:
    time.sleep(_watch["timeout_s"] + 3)


def main() -> None:
  parser = argparse.ArgumentParser(description="Print the jax.distributed plan this environment resolves to.")
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--serve", metavar="BIND_ADDRESS", help=argparse.SUPPRESS)  # process 0's child
  parser.add_argument("--heartbeat_s", type=int, default=100, help=argparse.SUPPRESS)
  parser.add_argument("--parent_pid", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--linger_s", type=float, default=60, help=argparse.SUPPRESS)
  a = parser.parse_args()
  if a.serve:
    serve(a.serve, a.num_processes, a.heartbeat_s, a.parent_pid, a.linger_s)
    return
  try:
    plan = resolve(os.environ, a.coordinator_address, a.num_processes, a.process_id)
  except DistributedError as e:
    print(f"restorejax: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(plan.describe())


if __name__ == "__main__":
  main()
