"""Multi-process start (restorejax/distributed.py) and the launch scripts.

Each cluster's environment is faked in-process and the arguments that reach `jax.distributed.initialize()`
are checked with a recording stand-in; launch/local.sh is run with a fake Python for its exit status, and
for real (two CPU processes of the tiny config) for the dry run and for a peer SIGKILLed mid-run.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from conftest import ROOT, read_summary
from restorejax import distributed

LOCAL_SH = os.path.join(ROOT, "launch", "local.sh")


def _started_with(monkeypatch, env, *flags):
  """The keyword arguments `distributed.start` passes to jax.distributed.initialize() (None: not called)."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  distributed.start(distributed.resolve(env, *flags))
  assert len(calls) <= 1
  return calls[0] if calls else None


def _slurm(procid, ntasks, tasks_per_node, **extra):
  env = {"RESTOREJAX_CLUSTER": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": str(ntasks),
         "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % tasks_per_node),
         "SLURM_NODEID": str(procid // tasks_per_node), "SLURM_STEP_NODELIST": "gpu[07-08]",
         "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x2)", "SLURM_GPUS_ON_NODE": "4",
         "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
  return {**env, **extra}


def test_slurm_one_process_per_node_drives_all_its_gpus(monkeypatch):
  args = _started_with(monkeypatch, _slurm(procid=1, ntasks=2, tasks_per_node=1))
  assert args["coordinator_address"] == f"gpu07:{4242 % 4096 + 61440}"
  assert (args["num_processes"], args["process_id"]) == (2, 1)
  assert args["local_device_ids"] == [0, 1, 2, 3]  # JAX's own detection would give [SLURM_LOCALID] = [0]
  assert args["cluster_detection_method"] == "deactivate"


def test_slurm_one_process_per_gpu(monkeypatch):
  args = _started_with(monkeypatch, _slurm(procid=6, ntasks=8, tasks_per_node=4))
  assert (args["num_processes"], args["process_id"], args["local_device_ids"]) == (8, 6, [2])
  # SLURM binding each task to its GPU (--gpu-bind): the task sees one device, ordinal 0.
  bound = _slurm(procid=6, ntasks=8, tasks_per_node=4, CUDA_VISIBLE_DEVICES="2")
  assert _started_with(monkeypatch, bound)["local_device_ids"] == [0]
  # Two tasks per node split its four GPUs.
  assert _started_with(monkeypatch, _slurm(procid=3, ntasks=4, tasks_per_node=2))["local_device_ids"] == [2, 3]
  with pytest.raises(distributed.DistributedError, match="3 tasks on node 0 cannot share its 4 GPUs"):
    distributed.resolve(_slurm(procid=0, ntasks=6, tasks_per_node=3))


def test_multi_worker_tpu_vm_uses_jax_detection(monkeypatch):
  env = {"RESTOREJAX_CLUSTER": "tpu_vm", "TPU_WORKER_ID": "2",
         "TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4"}
  args = _started_with(monkeypatch, env)
  # Nothing of the coordinator or the local devices: JAX reads them on the TPU VM (never local ids on TPUs).
  assert set(args) == {"heartbeat_timeout_seconds"}
  # Without the launcher's name the same environment is an error, not four independent runs.
  with pytest.raises(distributed.DistributedError, match="TPU_WORKER_HOSTNAMES lists several workers"):
    distributed.resolve({k: v for k, v in env.items() if k != "RESTOREJAX_CLUSTER"})


def test_gpu_node_one_process_per_gpu(monkeypatch):
  env = {"RESTOREJAX_CLUSTER": "gpu_node"}
  args = _started_with(monkeypatch, env, "127.0.0.1:1234", 4, 3)
  assert args["coordinator_address"] == "127.0.0.1:1234"
  assert (args["num_processes"], args["process_id"], args["local_device_ids"]) == (4, 3, [3])


def test_one_process_and_explicit_flags(monkeypatch):
  assert _started_with(monkeypatch, {}) is None
  assert distributed.resolve({}).init_args is None
  args = _started_with(monkeypatch, {}, "10.1.1.1:99", 2, 1)  # flags alone: the 'local' cluster
  assert (args["coordinator_address"], args["num_processes"], args["process_id"]) == ("10.1.1.1:99", 2, 1)
  assert "local_device_ids" not in args
  assert args["heartbeat_timeout_seconds"] > distributed.DEFAULT_PEER_TIMEOUT_S  # the watchdog speaks first


@pytest.mark.parametrize("env, flags, message", [
    ({"RESTOREJAX_CLUSTER": "k8s"}, (), "RESTOREJAX_CLUSTER=k8s: unknown cluster"),
    ({"RESTOREJAX_CLUSTER": "slurm"}, (), "SLURM_NTASKS is not set (run the command under srun"),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, (), "SLURM_NTASKS=8 (use launch/slurm.sbatch"),
    ({"RESTOREJAX_CLUSTER": "local"}, (None, 2, 0), "needs --coordinator_address"),
    ({"RESTOREJAX_CLUSTER": "none"}, ("h:1", 2, 0), "RESTOREJAX_CLUSTER=none but"),
    ({"RESTOREJAX_PEER_TIMEOUT_S": "soon", "RESTOREJAX_CLUSTER": "tpu_vm"}, (), "RESTOREJAX_PEER_TIMEOUT_S"),
])
def test_environment_mistakes_are_named(env, flags, message):
  with pytest.raises(distributed.DistributedError, match=message.replace("(", r"\(")):
    distributed.resolve(env, *flags)


def test_slurm_node_lists():
  assert distributed.first_host("node[001-004,9],gpu2") == "node001"
  assert distributed.first_host("a12,b") == "a12"
  assert distributed.tasks_per_node("4(x2),3") == [4, 4, 3]


class _FakeClient:
  """The coordination service's key-value store, with a peer that can fall silent."""

  def __init__(self):
    self.store, self.silent = {}, set()

  def key_value_increment(self, key, n):
    pid = int(key.rsplit("/", 1)[-1])
    self.store[key] = str(int(self.store.get(key, "0")) + n)
    for p in (1, 2):  # the peers beat too, unless silenced
      if p != pid and p not in self.silent:
        k = f"restorejax/alive/{p}"
        self.store[k] = str(int(self.store.get(k, "0")) + 1)

  def key_value_dir_get(self, prefix):
    return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


def test_watchdog_names_the_silent_peer():
  client, lost = _FakeClient(), []
  distributed.watch_peers(client, 0, 3, timeout_s=0.6, poll_s=0.05, on_lost=lambda *a: lost.append(a))
  time.sleep(1.0)
  assert not lost  # everyone beats
  client.silent.add(2)
  deadline = time.time() + 5
  while not lost and time.time() < deadline:
    time.sleep(0.05)
  assert lost and lost[0][:3] == ([2], 0, 3)


def test_the_watchdog_outlives_the_shutdown_barrier_and_is_joined_before_the_interpreter_ends(monkeypatch):
  # A daemon thread still inside a client call when the interpreter finalizes aborted two-process runs
  # at exit ("FATAL: exception not rethrown"): the exit handler shuts JAX's client down itself, then joins.
  handlers, events = [], []
  monkeypatch.setattr(distributed.atexit, "register", handlers.append)
  client, before = _FakeClient(), set(distributed.threading.enumerate())  # other tests' watchdogs
  distributed.watch_peers(client, 0, 3, timeout_s=60, poll_s=0.05, on_lost=lambda *a: events.append("lost"))
  beating = lambda: [t for t in set(distributed.threading.enumerate()) - before
                     if t.name.startswith("restorejax-peers-")]
  monkeypatch.setattr(jax.distributed, "shutdown", lambda: events.append(("shutdown", len(beating()))))
  assert len(handlers) == 1 and len(beating()) == 2
  handlers[0]()
  assert events == [("shutdown", 2)]  # the barrier ran while the watchdog still watched
  assert not beating()
  count = client.store["restorejax/alive/0"]
  time.sleep(0.2)
  assert client.store["restorejax/alive/0"] == count  # no more client calls


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_the_detached_service_serves_a_grace_period_after_process_0_shuts_it_down():
  # Process 0 leaves the shutdown barrier first; a service killed at once made the others' last calls
  # abort them (CI, stop 11). So `shutdown` asks the child to stop, and the child serves SERVICE_GRACE_S more.
  port = _free_port()
  service = distributed._start_service({"coordinator_address": f"127.0.0.1:{port}", "num_processes": 2})  # pylint: disable=protected-access
  started = time.time()
  service.shutdown()
  time.sleep(1.0)
  assert service.child.poll() is None
  socket.create_connection(("127.0.0.1", port), timeout=5).close()  # still listening
  assert service.child.wait(timeout=distributed.SERVICE_GRACE_S + 30) == 0
  assert time.time() - started >= distributed.SERVICE_GRACE_S


def test_a_coordination_service_that_cannot_start_is_one_error():
  with socket.socket(socket.AF_INET6) as taken:
    taken.bind(("::", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(distributed.DistributedError,
                       match=rf"the coordination service on 127.0.0.1:{port} did not start \(is the port in use\?\): "):
      distributed._start_service({"coordinator_address": f"127.0.0.1:{port}", "num_processes": 2})  # pylint: disable=protected-access


def _fake_python(tmp_path):
  """A stand-in for `python -m restorejax.main`: process 1 fails with status 3 after a moment."""
  path = tmp_path / "python"
  path.write_text("#!/bin/bash\nfor a; do case $a in --process_id=*) id=${a#*=};; esac; done\n"
                  "if [[ $id == 1 ]]; then sleep 0.3; exit 3; fi\nsleep 1\n")
  path.chmod(0o755)
  return str(path)


def test_local_sh_exits_with_the_failed_process_status(tmp_path):
  env = {**os.environ, "PYTHON": _fake_python(tmp_path), "RESTOREJAX_PORT": "1"}
  proc = subprocess.run([LOCAL_SH, "3", "--config=x"], env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 3, proc.stderr
  assert "process 1 of 3 exited with status 3" in proc.stderr
  env["PYTHON"] = "/bin/false"  # the issue's own example: every process fails at once
  assert subprocess.run([LOCAL_SH, "2", "--config=x"], env=env, capture_output=True, timeout=60).returncode == 1
  env["PYTHON"] = "/bin/true"
  assert subprocess.run([LOCAL_SH, "2", "--config=x"], env=env, capture_output=True, timeout=60).returncode == 0


def _local(n, workdir, *extra, env=None):
  cmd = [LOCAL_SH, str(n), f"--config={ROOT}/configs/default.py:tiny", f"--workdir={workdir}", *extra]
  env = {**os.environ, "PYTHON": sys.executable, **(env or {}),
         "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))}
  return cmd, env


def test_dry_run_prints_the_set_up_and_creates_nothing(tmp_path):
  cmd, env = _local(2, tmp_path / "run", "--dry_run")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for i in range(2):
    assert (f"restorejax dry run, process {i}: cluster=local: jax.distributed.initialize(coordinator_address="
            in proc.stdout), proc.stdout
    assert (f"restorejax dry run, process {i}: processes: 2, local devices per process: 1 (cpu), "
            "global devices: 2, mesh: {'data': 2}") in proc.stdout, proc.stdout
  assert not (tmp_path / "run").exists()


RUN = ("--config.total_steps=80", "--config.checkpoint_every=20", "--config.eval_every=40",
       "--config.log_every=10")  # as tests/test_runs.py, so the compiled step comes from the cache


def _children(pid):
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(c) for c in f.read().split()]


def test_dead_peer_ends_the_survivor_with_one_line_and_the_rerun_resumes_exactly(tmp_path):
  reference = tmp_path / "reference"
  cmd, env = _local(2, reference, *RUN)
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]

  workdir = tmp_path / "run"
  cmd, env = _local(2, workdir, *RUN, env={"RESTOREJAX_PEER_TIMEOUT_S": "10"})
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  start = time.time()
  while not (workdir / "checkpoints" / "20").is_dir():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() - start < 600, "no checkpoint 20"
    time.sleep(0.05)
  # Process 0, the coordinator: the hardest case (JAX's service used to live in it; see distributed.py).
  victim = [c for c in _children(proc.pid)
            if "--process_id=0" in open(f"/proc/{c}/cmdline").read().split("\0")]
  os.kill(victim[0], signal.SIGKILL)
  killed = time.time()
  _, stderr = proc.communicate(timeout=180)
  assert time.time() - killed < 120
  assert not (workdir / "summary.json").exists(), "the run ended before the kill"
  assert proc.returncode == 128 + signal.SIGKILL, stderr[-3000:]  # local.sh: the first process to fail
  lines = [l for l in stderr.splitlines() if l.startswith("restorejax: error:")]
  assert lines == [lines[0]] and "process 0 (the coordinator) of 2 stopped or became unreachable" in lines[0], \
      stderr[-3000:]
  assert "Rerun the same command to resume" in lines[0]
  assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-3000:]

  cmd, env = _local(2, workdir, *RUN)
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  s = read_summary(workdir)
  assert s["resumed_from_step"] >= 20 and s["processes"] == 2
  assert s["params_fingerprint"] == read_summary(reference)["params_fingerprint"]
