"""Command line: the prior-severity sweep as gains over no prior, per fusion mode and severity (issue 18).

  python -m restorejax.fusion_report SWEEP_DIR [--out PREFIX] [--chart_max DB]

SWEEP_DIR is the `--workdir` of `python -m restorejax.sweep --sweep=configs/sweeps/prior_severity.py`:
one run directory per variant, `<mode>_sev<severity>_s<seed>` and `none_s<seed>`, each with a
`summary.json` once finished. Each fusion run is paired with `none_s<seed>` of its seed (the same network,
data and evaluation without a prior), and its gain is its metric minus none's: PSNR (dB) and SSIM, higher is
better; LPIPS (when the summaries have `eval/lpips`) as none's minus the run's, so that a positive gain is
better there too. Per severity and mode the tables give the mean gain over seeds, with its spread as
min..max over the seeds and the number of seeds n.

Writes PREFIX.md (the tables, a text chart of the PSNR gains for markdown files, and what has not
finished), PREFIX.csv (one row per mode, severity and seed)
and PREFIX.png (PSNR gain against severity, one line per mode, min..max ticks over seeds, a zero line);
PREFIX defaults to SWEEP_DIR/severity. Prints the markdown. A partial sweep is reported as far as it has
finished: the expected grid is every mode seen x every severity seen x every seed seen (plus `none` per
seed), and whatever of it has no summary is listed. Exit status 0, or 2 with one line naming the path
when SWEEP_DIR does not exist or holds no finished `none_s<seed>`.
"""

import argparse
import csv
import io
import os
import re
import statistics
import sys
from typing import Any, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

from restorejax import reporting
from restorejax.models import fusion

PROG = "restorejax.fusion_report"
VARIANT = re.compile(r"^(?P<mode>[a-z]+)_sev(?P<severity>[0-9][0-9.e+-]*)_s(?P<seed>[0-9]+)$")
BASELINE = re.compile(r"^none_s(?P<seed>[0-9]+)$")
# (name, summary key, sign of the gain: +1 when higher is better, digits)
METRICS = (("psnr", "eval/psnr", 1, 2), ("ssim", "eval/ssim", 1, 4), ("lpips", "eval/lpips", -1, 4))
TITLES = {"psnr": "PSNR gain over no prior (dB)", "ssim": "SSIM gain over no prior",
          "lpips": "LPIPS gain over no prior (none's LPIPS minus the mode's: positive is closer)"}
CHART_SIZE = (760, 460)
X_MAX = 0.8  # the sweep's largest severity; the axis widens for larger ones


def parse_variant(name: str) -> Optional[tuple[str, float, int]]:
  """'align_sev0.4_s2' -> ('align', 0.4, 2) (the names of configs/sweeps/prior_severity.py); None for any
  other name, `none_s<seed>` included (`parse_baseline`)."""
  m = VARIANT.match(name)
  if not m:
    return None
  try:
    severity = float(m["severity"])
  except ValueError:
    return None
  return m["mode"], severity, int(m["seed"])


def parse_baseline(name: str) -> Optional[int]:
  """'none_s2' -> 2; None for any other name."""
  m = BASELINE.match(name)
  return int(m["seed"]) if m else None


def collect(sweep_dir: str) -> dict[str, Any]:
  """The sweep's finished runs: {'baselines': {seed: summary}, 'runs': {(mode, severity, seed): summary},
  'missing': [variant names of the expected grid without a summary]}."""
  if not os.path.isdir(sweep_dir):
    raise ValueError(f"{sweep_dir}: no such directory")
  baselines, runs, seen = {}, {}, set()
  for name in sorted(os.listdir(sweep_dir)):
    run_dir = os.path.join(sweep_dir, name)
    if not os.path.isdir(run_dir):
      continue
    seed, parsed = parse_baseline(name), parse_variant(name)
    if seed is None and parsed is None:
      continue
    seen.add(name)
    summary = reporting.read_summary(run_dir)
    if summary is None:
      continue
    if seed is not None:
      baselines[seed] = summary
    else:
      runs[parsed] = summary
  if not baselines:
    raise ValueError(f"{sweep_dir}: no none_s<seed>/summary.json (the runs without a prior, which every "
                     "gain is measured against)")
  names = {parse_variant(n) for n in seen} - {None}
  modes = sorted({m for m, _, _ in names}, key=_mode_order)
  severities = sorted({s for _, s, _ in names})
  seeds = sorted({s for _, _, s in names} | ({parse_baseline(n) for n in seen} - {None}))
  missing = [f"none_s{seed}" for seed in seeds if seed not in baselines]
  missing += [f"{mode}_sev{severity:g}_s{seed}" for seed in seeds for mode in modes for severity in severities
              if (mode, severity, seed) not in runs]
  return {"baselines": baselines, "runs": runs, "missing": missing}


def _mode_order(mode: str) -> tuple[int, str]:
  return (fusion.FUSIONS.index(mode) if mode in fusion.FUSIONS else len(fusion.FUSIONS), mode)


def gains(collected: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per finished fusion run whose seed has a finished baseline: its metrics, none's, the gains."""
  rows = []
  for (mode, severity, seed), summary in sorted(collected["runs"].items(),
                                                key=lambda kv: (_mode_order(kv[0][0]), kv[0][1:])):
    base = collected["baselines"].get(seed)
    if base is None:
      continue
    row = {"mode": mode, "severity": severity, "seed": seed}
    for name, key, sign, _ in METRICS:
      value, ref = summary.get(key), base.get(key)
      row[name], row[f"none_{name}"] = value, ref
      row[f"{name}_gain"] = None if value is None or ref is None else sign * (value - ref)
    rows.append(row)
  return rows


def cells(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, float], dict[str, float]]:
  """(mode, severity) -> {'mean', 'min', 'max', 'n'} of the metric's gain over the seeds."""
  values: dict[tuple[str, float], list[float]] = {}
  for r in rows:
    if r[f"{metric}_gain"] is not None:
      values.setdefault((r["mode"], r["severity"]), []).append(r[f"{metric}_gain"])
  return {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "n": len(v)}
          for k, v in values.items()}


def _cell(c: Optional[dict[str, float]], digits: int) -> str:
  if c is None:
    return ""
  if c["n"] == 1:
    return f"{c['mean']:+.{digits}f} (n=1)"
  return f"{c['mean']:+.{digits}f} ({c['min']:+.{digits}f}..{c['max']:+.{digits}f}, n={c['n']})"


def markdown(sweep_dir: str, collected: dict[str, Any], rows: list[dict[str, Any]],
             chart_max: Optional[float] = None) -> str:
  """The gain tables (rows: severity, columns: mode), a text chart of the PSNR gains (`text_chart`, cut
  at `chart_max` dB), the baselines, and what is missing."""
  out = io.StringIO()
  out.write(f"# Prior fusion against prior severity: {sweep_dir}\n\n")
  out.write("Gain of each fusion mode over the same network without a prior (`none_s<seed>`, same seed). "
            "Cell: mean over seeds (min..max over seeds, n seeds).\n\n")
  if not rows:
    out.write("No fusion variant with a finished baseline has finished yet.\n")
  modes = sorted({r["mode"] for r in rows}, key=_mode_order)
  severities = sorted({r["severity"] for r in rows})
  for name, _, _, digits in METRICS:
    table = cells(rows, name)
    if not table:
      continue
    out.write(f"## {TITLES[name]}\n\n| severity | " + " | ".join(modes) + " |\n")
    out.write("| ---: |" + " ---: |" * len(modes) + "\n")
    for s in severities:
      out.write(f"| {s:g} | " + " | ".join(_cell(table.get((m, s)), digits) for m in modes) + " |\n")
    out.write("\n")
  chart = text_chart(rows, "psnr", y_max=chart_max)
  if chart:
    out.write(chart + "\n")
  out.write("Without a prior (`none`): " + ", ".join(
      f"seed {seed} PSNR {b.get('eval/psnr', float('nan')):.2f} dB, SSIM {b.get('eval/ssim', float('nan')):.4f}"
      for seed, b in sorted(collected["baselines"].items())) + ".\n")
  missing = collected["missing"]
  if missing:
    shown = ", ".join(missing[:20]) + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else "")
    out.write(f"\nPartial sweep: {len(missing)} variant(s) of the grid seen so far (every mode x severity x "
              f"seed present, and none per seed) have no summary.json yet: {shown}. Their gains are not in "
              "the tables; a run without its seed's none is not either.\n")
  else:
    out.write("\nEvery variant of the grid seen has finished.\n")
  return out.getvalue()


def _letters(modes: Sequence[str]) -> dict[str, str]:
  """Each mode's plot symbol: its first letter, or a digit where two modes share one."""
  out: dict[str, str] = {}
  for i, m in enumerate(modes):
    out[m] = m[0] if m[0] not in out.values() else str(i % 10)
  return out


def text_chart(rows: list[dict[str, Any]], metric: str = "psnr", height: int = 17,
               y_max: Optional[float] = None) -> str:
  """The mean gain against severity as a character plot, for markdown that cannot show the PNG: one
  symbol per mode (`_letters`), '*' where modes fall on one cell, '-' the zero line, '^' a mean above
  `y_max` (the axis is cut there so the small gains stay readable). Empty when nothing has finished."""
  table = cells(rows, metric)
  if not table:
    return ""
  modes = sorted({m for m, _ in table}, key=_mode_order)
  sevs = sorted({s for _, s in table})
  symbol = _letters(modes)
  means = [c["mean"] for c in table.values()]
  hi = max(max(means), 0.0) if y_max is None else min(max(max(means), 0.0), y_max)
  lo = min(min(means), 0.0)
  hi = hi if hi > lo else lo + 1.0
  col = 8  # characters per severity
  grid = [[" "] * (col * len(sevs)) for _ in range(height)]
  row_of = lambda v: int(round((hi - min(v, hi)) / (hi - lo) * (height - 1)))
  grid[row_of(0.0)] = ["-"] * (col * len(sevs))
  for (mode, severity), c in table.items():
    y, x = row_of(c["mean"]), sevs.index(severity) * col + col // 2
    mark = "^" if c["mean"] > hi else symbol[mode]
    grid[y][x] = mark if grid[y][x] in " -" or grid[y][x] == mark == "^" else "*"
  lines = [f"{hi - i * (hi - lo) / (height - 1):+7.2f} |" + "".join(r).rstrip() for i, r in enumerate(grid)]
  lines.append(" " * 8 + "+" + "-" * (col * len(sevs)))
  lines.append(" " * 9 + "".join(f"{s:g}".center(col) for s in sevs).rstrip() + "   severity")
  legend = ", ".join(f"{symbol[m]} = {m}" for m in modes)
  cut = f"; ^ = above {hi:+.2f}, see the table" if any(v > hi for v in means) else ""
  return f"{TITLES[metric]}, mean over seeds ({legend}{cut}):\n\n```\n" + "\n".join(lines) + "\n```\n"


CSV_COLUMNS = ("mode", "severity", "seed") + tuple(
    c for name, _, _, _ in METRICS for c in (name, f"none_{name}", f"{name}_gain"))


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: "" if r.get(k) is None else round(r[k], 6) if isinstance(r[k], float) else r[k]
                       for k in CSV_COLUMNS})


COLOURS = ((70, 110, 180), (200, 90, 40), (60, 150, 70), (150, 70, 160), (190, 40, 60), (90, 90, 90),
           (30, 160, 170), (170, 140, 30))


def line_chart(path: str, rows: list[dict[str, Any]], title: str) -> None:
  """PSNR gain (dB) against severity, one line per mode (PIL), min..max ticks where there are several
  seeds, and a dashed zero line (no prior)."""
  try:
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
  except TypeError:  # Pillow without FreeType sizes
    font = small = ImageFont.load_default()
  table = cells(rows, "psnr")
  modes = sorted({m for m, _ in table}, key=_mode_order)
  width, height = CHART_SIZE
  left, right, top, bottom = 70, 170, 58, 50
  image = Image.new("RGB", CHART_SIZE, "white")
  draw = ImageDraw.Draw(image)
  draw.text((10, 10), title, fill="black", font=font)
  x_max = max([X_MAX] + [s for _, s in table])
  lo = min([0.0] + [c["min"] for c in table.values()])
  hi = max([0.0] + [c["max"] for c in table.values()])
  span = max(hi - lo, 0.5)
  lo, hi = lo - 0.08 * span, hi + 0.08 * span
  x0, x1, y0, y1 = left, width - right, top, height - bottom
  to_x = lambda s: x0 + s / x_max * (x1 - x0)
  to_y = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)
  draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
  for k in range(5):  # y ticks
    v = lo + k * (hi - lo) / 4
    draw.line([(x0 - 4, to_y(v)), (x0, to_y(v))], fill="black")
    draw.text((5, to_y(v) - 7), f"{v:+.2f}", fill="gray", font=small)
  ticks = sorted({s for _, s in table} | {0.0, x_max})
  for s in ticks:
    draw.line([(to_x(s), y1), (to_x(s), y1 + 4)], fill="black")
    draw.text((to_x(s) - 8, y1 + 6), f"{s:g}", fill="gray", font=small)
  draw.text(((x0 + x1) // 2 - 30, height - 22), "prior severity", fill="black", font=small)
  draw.text((5, top - 18), "PSNR gain over no prior (dB)", fill="black", font=small)
  for x in range(x0, x1, 12):  # the zero line: no prior
    draw.line([(x, to_y(0)), (x + 6, to_y(0))], fill=(120, 120, 120), width=1)
  for i, mode in enumerate(modes):
    colour = COLOURS[i % len(COLOURS)]
    points = [(s, table[(m, s)]) for m, s in sorted(table) if m == mode]
    xy = [(to_x(s), to_y(c["mean"])) for s, c in points]
    if len(xy) > 1:
      draw.line(xy, fill=colour, width=2)
    for (s, c), (px, py) in zip(points, xy):
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
      if c["n"] > 1:  # spread over seeds
        draw.line([(px, to_y(c["min"])), (px, to_y(c["max"]))], fill=colour, width=1)
        for v in (c["min"], c["max"]):
          draw.line([(px - 4, to_y(v)), (px + 4, to_y(v))], fill=colour, width=1)
    ly = top + 8 + 18 * i  # legend
    draw.line([(x1 + 15, ly + 7), (x1 + 40, ly + 7)], fill=colour, width=3)
    draw.text((x1 + 46, ly), mode, fill="black", font=small)
  if any(c["n"] > 1 for c in table.values()):
    draw.text((x1 + 15, top + 12 + 18 * len(modes)), "ticks: min..max\nover seeds", fill="gray", font=small)
  image.save(path)


def report(sweep_dir: str, out: Optional[str] = None,
           chart_max: Optional[float] = None) -> tuple[str, list[dict[str, Any]]]:
  """Writes OUT.md, OUT.csv, OUT.png (OUT: SWEEP_DIR/severity); returns (markdown, rows)."""
  collected = collect(sweep_dir)
  rows = gains(collected)
  out = out or os.path.join(sweep_dir, "severity")
  if os.path.dirname(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
  text = markdown(sweep_dir, collected, rows, chart_max)
  with open(out + ".md", "w", encoding="utf-8") as f:
    f.write(text)
  write_csv(out + ".csv", rows)
  name = os.path.basename(os.path.normpath(sweep_dir))
  line_chart(out + ".png", rows, f"Prior fusion against prior severity: {name}")
  return text, rows


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n")[0])
  parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the prior_severity sweep's --workdir")
  parser.add_argument("--out", default=None, help="PREFIX of PREFIX.md/.csv/.png (default SWEEP_DIR/severity)")
  parser.add_argument("--chart_max", type=float, default=None,
                      help="cut the markdown's text chart at this PSNR gain (dB); larger means show as ^")
  args = parser.parse_args(argv)
  try:
    text, _ = report(args.sweep_dir, args.out, args.chart_max)
  except ValueError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  print(text, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
