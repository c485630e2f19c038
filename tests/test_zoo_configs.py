"""Every network family's shipped config trains: a few steps of each `:tiny` variant through the command
line, and choosing a network from the command line either works or says in one line how.

NAFNet's configs/default.py:tiny trains in test_runs.py, the fine-tuning recipe (configs/finetune.py) in
test_warm_start.py. The runs compile without XLA's CPU optimisation passes: they are four steps.
"""

import importlib.util
import os

import numpy as np
import pytest

from conftest import ROOT, read_metrics, read_summary, run_main, tiny_config
from restorejax import models

FAMILIES = ("restormer", "dehazenet")
FAST_COMPILE = {"XLA_FLAGS": " ".join(filter(None, (
    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true")))}


def _config_module(name):
  spec = importlib.util.spec_from_file_location(f"zoo_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_variant_trains_end_to_end(tmp_path, name):
  workdir = str(tmp_path)
  run_main(workdir, "--config.total_steps=4", "--config.eval_every=4", "--config.checkpoint_every=4",
           "--config.log_every=2", config=f"configs/{name}.py:tiny", env=FAST_COMPILE)
  s = read_summary(workdir)
  assert s["steps"] == 4 and s["nonfinite_steps"] == 0
  assert np.isfinite(s["eval/psnr"]) and s["params_fingerprint"] != s["ema_params_fingerprint"]
  assert all(np.isfinite(v) for v in read_metrics(workdir, "train/loss").values())
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert f'"name": "{name}"' in f.read()


@pytest.mark.parametrize("name", FAMILIES + ("finetune",))
def test_config_docstring_holds_the_run_command(name):
  doc = _config_module(name).__doc__
  assert f"python -m restorejax.main --config=configs/{name}.py" in doc and "Expect" in doc


@pytest.mark.parametrize("variant", ["", "tiny"])
@pytest.mark.parametrize("name", FAMILIES)
def test_default_config_takes_a_model_argument(name, variant):
  default = _config_module("default")
  arg = ",".join(filter(None, (variant, f"model={name}")))
  assert default.get_config(arg) == _config_module(name).get_config(variant or None)
  assert default.get_config(arg).model.name == name
  assert default.get_config(variant or None).model.name == "nafnet"


def test_unshipped_or_unknown_models_are_named():
  default = _config_module("default")
  with pytest.raises(ValueError, match="model='unet3000' unknown"):
    default.get_config("model=unet3000")
  with pytest.raises(ValueError, match="unknown option 'modle'"):
    default.get_config("modle=restormer")


def test_model_name_override_says_which_config_to_use():
  config = tiny_config(**{"model.name": "restormer"})  # what --config.model.name=restormer gives
  with pytest.raises(ValueError, match=r"config.model.name='restormer', but config.model holds the fields "
                                       r"of 'nafnet' .*--config=configs/default.py:model=restormer"):
    models.build(config.model)


def test_finetune_takes_the_network_of_its_checkpoint(tmp_path):
  finetune = _config_module("finetune")
  with pytest.raises(ValueError, match="needs the checkpoint to start from"):
    finetune.get_config("tiny")
  with pytest.raises(ValueError, match="has no config.json"):
    finetune.get_config(f"init_from={tmp_path}")
  (tmp_path / "config.json").write_text('{"task": "restoration", "model": {"name": "restormer", "dim": 8}}')
  c = finetune.get_config(f"tiny,init_from={tmp_path}")
  assert c.init_from == str(tmp_path) and c.model.name == "restormer" and c.model.dim == 8
  assert c.optim.lr < tiny_config().optim.lr
