"""The shared command-line module: every command defines its own flags, in any order and any number of
times in one process, and a flag a command does not take is one line."""

import pytest
from absl import flags

from restorejax import bench, cascade, cli, evaluate, gir_report, main, pod_check, restore

FLAGS = flags.FLAGS
COMMANDS = (main, evaluate, restore, gir_report, cascade, pod_check, bench)


def test_commands_define_their_own_flags_in_one_process():
  for module in COMMANDS + COMMANDS[::-1]:  # each after every other, and twice
    module.define_flags()
  restore.define_flags()
  assert FLAGS["tile"].default == 512 and FLAGS["seed"].default == 0 and "stages" not in FLAGS
  cascade.define_flags()
  assert FLAGS["tile"].default is None and "stages" in FLAGS and "tile_batch" not in FLAGS
  # The shared flags have one definition, kept across commands.
  config, workdir = FLAGS["config"], FLAGS["workdir"]
  main.define_flags()
  evaluate.define_flags()
  assert FLAGS["config"] is config and FLAGS["workdir"] is workdir and "dry_run" not in FLAGS


@pytest.mark.parametrize("argv, message", [
    (["restorejax-evaluate", "--workdir=/w", "--config=c.py"],
     "restorejax: error: --config is not used by restorejax.evaluate: the run's own config.json is"),
    (["restorejax-evaluate", "--workdir=/w", "--nope=1"],
     "restorejax: error: Unknown command line flag 'nope'"),
])
def test_a_flag_the_command_does_not_take_is_one_line(capsys, argv, message):
  evaluate.define_flags()
  FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as e:
    evaluate.parse_flags(argv)
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [message]


def test_one_line_of_an_exception():
  assert cli.one_line(KeyError("'nope' is not a field")) == "'nope' is not a field"
  assert cli.one_line(ValueError("first\n  second")) == "first second"
  wrapped = RuntimeError("Traceback (most recent call last):\n  x\nValueError: bad")
  assert cli.one_line(wrapped) == "ValueError: bad"
