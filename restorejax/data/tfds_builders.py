"""TFDS builders for image-restoration datasets the user downloaded: paired folders, prepared as ArrayRecord.

`paired_images/<config>` reads folders of degraded / target (/ prior) images from the TFDS `manual_dir`,
pairs them like `restorejax.data.build` (by name key, converting 16-bit / grey / alpha images to 8-bit
RGB and resizing priors to the target size, bicubic) and prepares them as ArrayRecord, so that
`tfds.data_source('paired_images/<config>', split=...)` is a grain random-access source, and the
pipeline reads it with `config.data.source='tfds'`, `config.data.tfds.name='paired_images'`,
`config.data.tfds.config='<config>'`. Features: `degraded`, `target`, `prior` (uint8 RGB PNG images, as
the config has them) and `name` (the degraded file's stem, or the target's). Files that cannot be used
are logged with their reason (absl warnings); nothing is left out silently.

Prepare one (paths relative to the manual_dir are in each config's description):

    python -m restorejax.data.tfds_builders --config=lol --manual_dir=~/data/manual --data_dir=~/tfds

This module imports tensorflow_datasets at the top: import it only where a TFDS source is used (the
pipeline does so lazily), so that training without TFDS never loads TensorFlow.
"""

import dataclasses
import os
import sys
from typing import Optional

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from restorejax.data import build


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a config's images are: {split: {side: folder relative to manual_dir}} and the name keys."""
  splits: dict[str, dict[str, str]]
  keys: dict[str, str] = dataclasses.field(default_factory=dict)   # side -> regex (see build.pair)
  sides: tuple[str, ...] = ("degraded", "target")
  split_by_key: Optional[tuple[str, int]] = None   # (split, first key) moves keys >= first into split


class PairedImagesConfig(tfds.core.BuilderConfig):
  """A folder layout; `generic` configs take every sub-folder of manual_dir as a split."""

  def __init__(self, *, layout: Layout, generic: bool = False, **kwargs):
    super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
    self.layout = layout
    self.generic = generic


def _describe(summary: str, layout: Layout, extra: str = "") -> str:
  where = "; ".join(f"{split}: " + ", ".join(f"{side} <manual_dir>/{path}" for side, path in dirs.items())
                    for split, dirs in layout.splits.items())
  keys = "; ".join(f"{side} names match {rx!r}" for side, rx in layout.keys.items())
  return f"{summary} Layout: {where}." + (f" Pairing: {keys} (group 1 is the key)." if keys else "") + (
      f" {extra}" if extra else "")


def _configs() -> list[PairedImagesConfig]:
  configs = []
  generic = {
      "folders": ("degraded", "target"),
      "folders_prior": ("degraded", "target", "prior"),
      "folders_target": ("target",),
  }
  for name, sides in generic.items():
    layout = Layout(splits={}, sides=sides)
    configs.append(PairedImagesConfig(
        name=name, layout=layout, generic=True,
        description=f"Any paired set: <manual_dir>/<split>/{{{','.join(sides)}}}/ with the same file stems; "
                    "every sub-folder of manual_dir is a split (e.g. train, test)."))

  def add(name, summary, layout, extra=""):
    if "prior" in layout.sides:
      extra += " A split without its prior folder (e.g. priors released for the test set only) is left out."
    configs.append(PairedImagesConfig(name=name, layout=layout, description=_describe(summary, layout, extra)))

  sots_keys = {"degraded": r"0*(\d+)_.*", "target": r"0*(\d+)"}
  add("sots_indoor", "RESIDE SOTS indoor (500 GT, 10 hazy images each; a test set).",
      Layout({"test": {"degraded": "SOTS/indoor/hazy", "target": "SOTS/indoor/gt"}}, sots_keys),
      "Hazy 1400_1.png .. 1400_10.png all pair with gt 1400.png.")
  add("sots_outdoor", "RESIDE SOTS outdoor (500 hazy/GT pairs; a test set).",
      Layout({"test": {"degraded": "SOTS/outdoor/hazy", "target": "SOTS/outdoor/gt"}}, sots_keys),
      "Hazy 0001_0.8_0.2.jpg pairs with gt 0001.png.")
  ohaze = {"degraded": r"0*(\d+)_outdoor_hazy", "target": r"0*(\d+)_outdoor_GT", "prior": r"0*(\d+)\D*.*"}
  for suffix, sides in (("", ("degraded", "target")), ("_prior", ("degraded", "target", "prior"))):
    dirs = {"degraded": "O-HAZE/hazy", "target": "O-HAZE/GT", "prior": "O-HAZE/prior"}
    add(f"ohaze{suffix}", "O-HAZE (NTIRE 2018, 45 outdoor hazy/GT pairs)"
        + (" with generative priors." if suffix else "."),
        Layout({"train": {s: dirs[s] for s in sides}}, {s: ohaze[s] for s in sides}, sides, ("test", 41)),
        "Images 1-40 are the train split, 41-45 the test split."
        + (" Prior files are named by the image number (e.g. 41.png, 41_outdoor.png)." if suffix else ""))
  for name, title, n in (("rain100l", "Rain100L", 200), ("rain100h", "Rain100H", 1800)):
    add(name, f"{title} (JORDER synthetic rain; {n} train, 100 test pairs).",
        Layout({split: {"degraded": f"{title}/{split}/rain", "target": f"{title}/{split}/norain"}
                for split in ("train", "test")},
               {"degraded": r"rain-?0*(\d+).*", "target": r"norain-?0*(\d+).*"}),
        "rain-001.png pairs with norain-001.png (leading zeros and an x2 suffix are ignored).")
  for suffix, sides in (("", ("degraded", "target")), ("_prior", ("degraded", "target", "prior"))):
    dirs = {"degraded": "input", "target": "target", "prior": "prior"}
    add(f"rain800{suffix}", "Rain800 (IDCGAN; 700 train, 100 test pairs, as separate images)"
        + (" with generative priors." if suffix else "."),
        Layout({split: {s: f"Rain800/{split}/{dirs[s]}" for s in sides} for split in ("train", "test")},
               sides=sides),
        "Same file stems in each folder (split the original side-by-side images first).")
  for suffix, sides in (("", ("degraded", "target")), ("_prior", ("degraded", "target", "prior"))):
    dirs = {"degraded": "low", "target": "high", "prior": "prior"}
    add(f"lol{suffix}", "LOL (LOw-Light; 485 train, 15 test pairs)"
        + (" with generative priors." if suffix else "."),
        Layout({"train": {s: f"LOL/our485/{dirs[s]}" for s in sides},
                "test": {s: f"LOL/eval15/{dirs[s]}" for s in sides}}, sides=sides),
        "Same file names in each folder.")
  add("div2k", "DIV2K 2K ground truth only (800 train, 100 validation); degradations are synthesised.",
      Layout({"train": {"target": "DIV2K/DIV2K_train_HR"}, "validation": {"target": "DIV2K/DIV2K_valid_HR"}},
             sides=("target",)))
  add("flickr2k", "Flickr2K 2K ground truth only (2650 images); degradations are synthesised.",
      Layout({"train": {"target": "Flickr2K/Flickr2K_HR"}}, sides=("target",)))
  return configs


class PairedImages(tfds.core.GeneratorBasedBuilder):
  """Paired restoration images from folders in the manual_dir (see each config's description)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = _configs()
  # tfds finds this through importlib_resources, which not every install has; nothing else depends on it
  code_path = epath.Path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the dataset from its authors and place its folders under the manual_dir as the config's "
      "description says (python -m restorejax.data.tfds_builders --list shows them all).")

  def _info(self) -> tfds.core.DatasetInfo:
    image = lambda: tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png")
    features = {side: image() for side in self.builder_config.layout.sides}
    features["name"] = tfds.features.Text()
    return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                 features=tfds.features.FeaturesDict(features),
                                 homepage="https://github.com/restorejax/restorejax")

  def _split_dirs(self, manual_dir: str) -> dict[str, dict[str, str]]:
    layout = self.builder_config.layout
    if self.builder_config.generic:
      splits = {}
      for split in sorted(os.listdir(manual_dir)):
        if os.path.isdir(os.path.join(manual_dir, split, "target")):
          splits[split] = {side: os.path.join(split, side) for side in layout.sides}
    else:
      splits = layout.splits
    found = {}
    for split, dirs in splits.items():
      present = {side: os.path.isdir(os.path.join(manual_dir, d)) for side, d in dirs.items()}
      if not any(present.values()):
        logging.warning("paired_images/%s: split %s left out: none of its folders is in %s",
                        self.builder_config.name, split, manual_dir)
        continue
      missing = [os.path.join(manual_dir, dirs[s]) for s, ok in present.items() if not ok]
      if missing and not [s for s, ok in present.items() if not ok and s != "prior"]:
        logging.warning("paired_images/%s: split %s left out: it has no prior folder %s",
                        self.builder_config.name, split, missing[0])
        continue
      if missing:
        raise ValueError(f"paired_images/{self.builder_config.name}: split {split}: missing folder(s) "
                         f"{', '.join(missing)}")
      found[split] = {side: os.path.join(manual_dir, d) for side, d in dirs.items()}
    if not found:
      raise ValueError(f"paired_images/{self.builder_config.name}: no split found in {manual_dir}. "
                       f"{self.builder_config.description}")
    return found

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    layout = self.builder_config.layout
    found = self._split_dirs(os.fspath(dl_manager.manual_dir))
    gens = {}
    for split, dirs in found.items():
      pairing = build.pair(dirs, {s: rx for s, rx in layout.keys.items() if s in dirs})
      if layout.split_by_key:
        other, first = layout.split_by_key
        moved = {n: f for n, f in pairing.examples.items() if int(pairing.keys[n]) >= first}
        kept = {n: f for n, f in pairing.examples.items() if n not in moved}
        gens[split] = self._generate_examples(build.Pairing(kept, pairing.skipped))
        gens[other] = self._generate_examples(build.Pairing(moved, {}))
      else:
        gens[split] = self._generate_examples(pairing)
    return gens

  def _generate_examples(self, pairing: build.Pairing):
    for path, reason in sorted(pairing.skipped.items()):
      logging.warning("paired_images/%s: skipped %s: %s", self.builder_config.name, path, reason)
    for name, files in pairing.examples.items():
      outcome = build.load(name, files, encode=False)
      if outcome.summary is None:
        for path, reason in sorted(outcome.skipped.items()):
          logging.warning("paired_images/%s: skipped %s: %s", self.builder_config.name, path, reason)
        continue
      for path, changes in outcome.converted.items():
        logging.info("paired_images/%s: %s: %s", self.builder_config.name, path, ", ".join(changes))
      yield name, {**outcome.summary["images"], "name": name}


def prepare(config: str, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Prepares `paired_images/<config>` from `manual_dir` into `data_dir` (ArrayRecord); returns the builder."""
  builder = PairedImages(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv: Optional[list[str]] = None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m restorejax.data.tfds_builders", description=__doc__.split("\n")[0])
  parser.add_argument("--config", help="one of the configs (see --list)")
  parser.add_argument("--manual_dir", help="where the downloaded folders are")
  parser.add_argument("--data_dir", help="the TFDS data directory to prepare into")
  parser.add_argument("--list", action="store_true", help="print the configs and their layouts")
  args = parser.parse_args(argv)
  if args.list:
    for c in PairedImages.BUILDER_CONFIGS:
      print(f"{c.name}: {c.description}")
    return
  names = [c.name for c in PairedImages.BUILDER_CONFIGS]
  for flag in ("config", "manual_dir", "data_dir"):
    if not getattr(args, flag):
      parser.exit(2, f"restorejax.data.tfds_builders: error: --{flag} is required\n")
  if args.config not in names:
    parser.exit(2, f"restorejax.data.tfds_builders: error: --config={args.config}: unknown "
                   f"(known: {', '.join(names)})\n")
  try:
    builder = prepare(args.config, os.path.expanduser(args.manual_dir), os.path.expanduser(args.data_dir))
  except (ValueError, AssertionError) as e:
    parser.exit(2, f"restorejax.data.tfds_builders: error: {' '.join(str(e).split())}\n")
  print({split: info.num_examples for split, info in builder.info.splits.items()})


if __name__ == "__main__":
  main(sys.argv[1:])
