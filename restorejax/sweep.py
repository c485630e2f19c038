"""Ablation sweeps: one config, a list of override sets, one run each, one table and chart at the end.

  python -m restorejax.sweep --config=configs/default.py --sweep=configs/sweeps/losses.py --workdir=DIR \
      [--print_only] [--config.x=y ...]

A sweep file defines `get_sweep(arg=None) -> [(name, {dotted config key: value}), ...]` (`file.py:arg`
passes `arg`). Each variant is trained by `python -m restorejax.main --config=CONFIG --workdir=DIR/<name>`
with its overrides (and any `--config.x=y` given here, applied to every variant first), one after the
other; a variant whose `DIR/<name>/summary.json` exists is skipped, so an interrupted sweep resumes where
it stopped (a half-finished variant resumes from its own checkpoint). `--print_only` prints one launch
command per variant instead (for a cluster scheduler) and runs nothing.

At the end (and with `--print_only`, for whatever has finished) every `summary.json` is gathered into
`DIR/results.md`, `DIR/results.csv` and `DIR/results.png` (bars of eval/psnr and eval/ssim per variant,
the input's PSNR/SSIM as a dashed line). Variants share the persistent compilation cache of
`restorejax.main`. Exit status: 0 when every variant has a summary, 1 otherwise, 2 for bad arguments.
"""

import argparse
import csv
import importlib.util
import io
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from restorejax import reporting

METRICS = ("eval/psnr", "eval/ssim", "eval/input_psnr", "eval/input_ssim")
# LPIPS (AlexNet) / NIQE: in a summary when the run's config.eval.perceptual is on and the extra installed.
PERCEPTUAL = ("eval/lpips", "eval/niqe", "eval/input_lpips", "eval/input_niqe")
COLUMNS = ("variant",) + METRICS + PERCEPTUAL + ("steps", "wall_time_s", "images_per_s", "overrides")


def load_sweep(spec: str) -> list[tuple[str, dict[str, Any]]]:
  """`file.py[:arg]` -> its `get_sweep(arg)`, checked: unique, path-safe names; dict overrides."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--sweep={spec}: no such file {path}")
  module_spec = importlib.util.spec_from_file_location("restorejax_sweep_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--sweep={spec}: {path} defines no get_sweep(arg)")
  variants = module.get_sweep(arg or None)
  names = set()
  for item in variants:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
      raise ValueError(f"--sweep={spec}: each variant must be (name, {{key: value}}), got {item!r}")
    name = item[0]
    if not name or name in names or not all(ch.isalnum() or ch in "-_.+=" for ch in name):
      raise ValueError(f"--sweep={spec}: variant name {name!r} is empty, repeated or not usable as a directory")
    names.add(name)
  return [(name, dict(overrides)) for name, overrides in variants]


def flag_value(value: Any) -> str:
  """How a value is written after `--config.key=` (strings as they are, the rest as Python literals)."""
  return value if isinstance(value, str) else repr(value)


def command(config: str, workdir: str, overrides: dict[str, Any], common: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "restorejax.main", f"--config={config}", f"--workdir={workdir}", *common,
          *(f"--config.{k}={flag_value(v)}" for k, v in overrides.items())]


def run_variants(config: str, workdir: str, variants, common: Sequence[str]) -> dict[str, str]:
  """Trains every variant without a summary, in order; returns {name: 'done' | 'skipped' | 'failed ...'}."""
  status = {}
  for i, (name, overrides) in enumerate(variants):
    run_dir = os.path.join(workdir, name)
    if os.path.exists(os.path.join(run_dir, "summary.json")):
      status[name] = "skipped (summary.json exists)"
      print(f"[{i + 1}/{len(variants)}] {name}: done before, skipped", flush=True)
      continue
    os.makedirs(run_dir, exist_ok=True)
    cmd = command(config, run_dir, overrides, common)
    print(f"[{i + 1}/{len(variants)}] {name}: {shlex.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(os.path.join(workdir, f"{name}.log"), "w") as log:
      rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc == 0 and os.path.exists(os.path.join(run_dir, "summary.json")):
      status[name] = "done"
      print(f"    finished in {time.time() - start:.0f}s", flush=True)
    else:
      tail = _last_line(os.path.join(workdir, f"{name}.log"))
      status[name] = f"failed (exit {rc}): {tail}"
      print(f"    FAILED (exit {rc}, see {workdir}/{name}.log): {tail}", flush=True)
  return status


def _last_line(path: str) -> str:
  try:
    with open(path) as f:
      lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""
  except OSError:
    return ""


def gather(workdir: str, variants) -> list[dict[str, Any]]:
  """One row per variant with a summary.json (in sweep order)."""
  rows = []
  for name, overrides in variants:
    summary = reporting.read_summary(os.path.join(workdir, name))
    if summary is None:
      continue
    row = {"variant": name, "overrides": " ".join(f"{k}={flag_value(v)}" for k, v in overrides.items())}
    row.update({k: summary.get(k) for k in COLUMNS if k in summary})
    rows.append(row)
  return rows


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: row.get(k, "") for k in COLUMNS})


def _fmt(value: Any, digits: int) -> str:
  return "" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]], title: str) -> str:
  """A table with the change in PSNR/SSIM against the first variant (the baseline)."""
  out = io.StringIO()
  out.write(f"# {title}\n\n")
  if not rows:
    out.write("No variant has finished yet.\n")
    return out.getvalue()
  base = rows[0]
  out.write(f"Baseline: `{base['variant']}`. Input (degraded) PSNR {_fmt(base.get('eval/input_psnr'), 2)} dB, "
            f"SSIM {_fmt(base.get('eval/input_ssim'), 4)}.\n\n")
  extra = [k for k in ("eval/lpips", "eval/niqe") if any(r.get(k) is not None for r in rows)]
  names = {"eval/lpips": "LPIPS", "eval/niqe": "NIQE"}
  out.write("| variant | PSNR (dB) | dPSNR | SSIM | dSSIM | " + "".join(f"{names[k]} | " for k in extra)
            + "steps | wall (s) | images/s | overrides |\n")
  out.write("| --- | ---: | ---: | ---: | ---: | " + "---: | " * len(extra) + "---: | ---: | ---: | --- |\n")
  for r in rows:
    dp = None if r.get("eval/psnr") is None else r["eval/psnr"] - base["eval/psnr"]
    ds = None if r.get("eval/ssim") is None else r["eval/ssim"] - base["eval/ssim"]
    out.write(f"| {r['variant']} | {_fmt(r.get('eval/psnr'), 2)} | {'' if dp is None else f'{dp:+.2f}'} | "
              f"{_fmt(r.get('eval/ssim'), 4)} | {'' if ds is None else f'{ds:+.4f}'} | "
              + "".join(f"{_fmt(r.get(k), 4)} | " for k in extra) + f"{r.get('steps', '')} | "
              f"{_fmt(r.get('wall_time_s'), 0)} | {_fmt(r.get('images_per_s'), 1)} | `{r['overrides']}` |\n")
  if not extra:
    out.write("\nNo LPIPS/NIQE columns: no summary has them (they need `config.eval.perceptual = True` and "
              'pip install -e ".[perceptual]").\n')
  return out.getvalue()


def bar_chart(path: str, rows: list[dict[str, Any]], title: str) -> None:
  """PSNR and SSIM bars per variant (PIL), with the input's values as dashed lines."""
  try:
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
  except TypeError:  # Pillow without FreeType sizes
    font = small = ImageFont.load_default()
  panels = [("eval/psnr", "eval/input_psnr", "PSNR (dB)", 2), ("eval/ssim", "eval/input_ssim", "SSIM", 4)]
  n = max(len(rows), 1)
  bar_w, gap, left, top, panel_h, label_h = 44, 18, 70, 40, 260, 160
  width = left + n * (bar_w + gap) + 40
  height = top + len(panels) * (panel_h + label_h + 20)
  image = Image.new("RGB", (max(width, 420), height), "white")
  draw = ImageDraw.Draw(image)
  draw.text((10, 10), title, fill="black", font=font)
  for p, (key, input_key, label, digits) in enumerate(panels):
    y0 = top + p * (panel_h + label_h + 20) + 30
    values = [r.get(key) for r in rows]
    inputs = [r.get(input_key) for r in rows if r.get(input_key) is not None]
    known = [v for v in values if v is not None] + inputs
    if not known:
      continue
    lo, hi = min(known), max(known)
    span = max(hi - lo, 1e-6)
    lo, hi = lo - 0.15 * span, hi + 0.1 * span  # bars start below the smallest value, so differences show
    to_y = lambda v: y0 + panel_h - (v - lo) / (hi - lo) * panel_h
    draw.text((left, y0 - 26), label, fill="black", font=font)
    draw.line([(left - 5, y0), (left - 5, y0 + panel_h)], fill="black")
    draw.line([(left - 5, y0 + panel_h), (width - 20, y0 + panel_h)], fill="black")
    for tick in (lo, (lo + hi) / 2, hi):
      draw.text((5, to_y(tick) - 7), f"{tick:.{digits}f}", fill="gray", font=small)
    for i, (row, v) in enumerate(zip(rows, values)):
      x = left + i * (bar_w + gap)
      if v is not None:
        draw.rectangle([x, to_y(v), x + bar_w, y0 + panel_h], fill=(70, 110, 180) if i else (120, 120, 120))
        draw.text((x, to_y(v) - 15), f"{v:.{digits}f}", fill="black", font=small)
      # Variant names run upwards under their bars, ending at the axis (long names do not fit across).
      text = Image.new("RGBA", (label_h - 10, 16), (255, 255, 255, 0))
      name_draw = ImageDraw.Draw(text)
      name_draw.text((label_h - 10 - name_draw.textlength(row["variant"], font=small), 0), row["variant"],
                     fill="black", font=small)
      text = text.rotate(90, expand=True)
      image.paste(text, (x + bar_w // 2 - 8, int(y0 + panel_h + 5)), text)
    if inputs:
      y = to_y(sum(inputs) / len(inputs))
      for x in range(left - 5, width - 20, 12):
        draw.line([(x, y), (x + 6, y)], fill=(200, 40, 40), width=2)
      draw.text((width - 150, y - 16), "input", fill=(200, 40, 40), font=small)
  image.save(path)


def report(workdir: str, variants, title: str) -> list[dict[str, Any]]:
  rows = gather(workdir, variants)
  write_csv(os.path.join(workdir, "results.csv"), rows)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown(rows, title))
  bar_chart(os.path.join(workdir, "results.png"), rows, title)
  return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m restorejax.sweep", description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="config file (file.py or file.py:variant)")
  parser.add_argument("--sweep", required=True, help="sweep file (file.py or file.py:arg)")
  parser.add_argument("--workdir", required=True, help="one run directory per variant goes in here")
  parser.add_argument("--print_only", action="store_true", help="print the launch commands, run nothing")
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    print(f"restorejax.sweep: error: unexpected arguments {' '.join(bad)} (only --config.key=value)",
          file=sys.stderr)
    return 2
  try:
    variants = load_sweep(args.sweep)
  except ValueError as e:
    print(f"restorejax.sweep: error: {e}", file=sys.stderr)
    return 2
  title = f"{args.sweep} on {args.config}"
  if args.print_only:
    for name, overrides in variants:
      print(shlex.join(command(args.config, os.path.join(args.workdir, name), overrides, rest)))
    if os.path.isdir(args.workdir):
      report(args.workdir, variants, title)
    return 0
  os.makedirs(args.workdir, exist_ok=True)
  status = run_variants(args.config, args.workdir, variants, rest)
  rows = report(args.workdir, variants, title)
  print(f"{len(rows)}/{len(variants)} variants finished; see {args.workdir}/results.md", flush=True)
  failed = {k: v for k, v in status.items() if v.startswith("failed")}
  for name, why in failed.items():
    print(f"  {name}: {why}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
