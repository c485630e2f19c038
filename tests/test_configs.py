"""configs/ as a package: the shared argument reader, and every shipped config importable by name."""

import importlib
import pkgutil

import pytest

import configs
from configs import common


def test_parse_arg_types_variants_flags_and_positional():
  args = common.parse_arg("x4,steps=12,severity=0.1:0.3,tiny,lr=2e-4,name=run", source="configs/t.py",
                          variants=("x2", "x4"), steps=400, severity=(0.0, 0.2), tiny=False, lr=1e-3,
                          name="", ema=True)
  assert args.variant == "x4" and args.steps == 12 and isinstance(args.steps, int)
  assert args.severity == (0.1, 0.3) and args.tiny is True and args.lr == 2e-4 and args.name == "run"
  assert args.ema is True
  assert common.parse_arg("ema=false", source="c", ema=True).ema is False
  assert common.parse_arg(None, source="c", variants=("a", "b"), n=1).to_dict() == {"variant": "a", "n": 1}
  where = common.parse_arg("tiny,/data/set", source="c", positional="path", path="", tiny=False)
  assert where.path == "/data/set" and where.tiny


@pytest.mark.parametrize("arg, message", [
    ("nope=1", r"configs/t.py: unknown option 'nope' \(known: steps, tiny\)"),
    ("steps=many", r"configs/t.py: option steps='many' is not a int"),
    ("huge", r"configs/t.py: unknown variant 'huge' \(known: small, big\)"),
])
def test_parse_arg_names_the_file_and_the_mistake(arg, message):
  with pytest.raises(ValueError, match=message):
    common.parse_arg(arg, source="configs/t.py", variants=("small", "big"), steps=1, tiny=False)
  with pytest.raises(ValueError, match=r"configs/t.py: unknown argument 'extra' \(known: tiny\)"):
    common.parse_arg("extra", source="configs/t.py", tiny=False)


def test_every_shipped_config_imports_by_name_and_builds():
  names = [m.name for m in pkgutil.iter_modules(configs.__path__) if m.name != "common" and not m.ispkg]
  assert {"default", "restormer", "rrdbnet", "swinir_sr", "sr3", "triples", "finetune"} <= set(names)
  for name in names:
    module = importlib.import_module(f"configs.{name}")
    if name in ("triples", "finetune"):  # need a directory: their errors say so
      with pytest.raises(ValueError, match="needs the"):
        module.get_config(None)
    else:
      assert module.get_config(None).keys(), name
  for name in ("fusion", "losses", "diffloss_perceptual"):
    assert importlib.import_module(f"configs.sweeps.{name}").get_sweep("tiny")
