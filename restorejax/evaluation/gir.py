"""GIR protocol scoring: acceptance / excellence ratios and relative performance ratio, with a report.

General image restoration (Kong et al., arXiv 2408.15143) scores one model on many degradation tasks
against two reference lines per task and metric, the scores of a weak and a strong reference model
(definitions as in the same lab's SEAL). Per metric, over its N tasks (higher is better: PSNR, SSIM):

    AR    = #{i : s_i >= A_i} / N                  acceptance ratio
    ER    = #{i : s_i >= E_i} / N                  excellence ratio
    RPR_i = sigmoid((s_i - A_i) / (E_i - A_i))     relative performance; RPR = mean over kept tasks

For the metrics where lower is better (`LOWER_IS_BETTER`: LPIPS, NIQE) "at least as good as" is `<=`:
AR counts s_i <= A_i, ER s_i <= E_i, and the RPR formula is unchanged (E_i - A_i is then negative, so
(s_i - A_i) / (E_i - A_i) still grows as s_i improves).

A task whose lines are closer than `MIN_GAP` in the metric's good direction (E_i - A_i < 0.1 dB PSNR,
< 0.01 SSIM; A_i - E_i < 0.01 LPIPS, < 0.1 NIQE: our choice, one small visible step of each; lines the
wrong way round included; a gap equal to it up to 1e-9 is kept) is dropped from RPR only, and the report
says how many were. AR and ER keep every task.

Files (JSON):
- scores of one model:  {"model": "<name>", "scores": {"<task>": {"psnr": 27.31, "ssim": 0.812}, ...}}
- lines, in one file:    {"lines": {"<task>": {"psnr": {"acceptance": 26.0, "excellence": 27.5}, ...}}}
- or lines from two reference runs' scores files: the weak one gives A, the strong one E.
The model must have a score for every (task, metric) with lines, and no task without lines; a
metric the lines do not cover is listed in the report as not evaluated.

    python -m restorejax.evaluation.gir --scores model.json --lines lines.json --out report/
    python -m restorejax.evaluation.gir --scores model.json --acceptance weak.json \\
        --excellence strong.json --out report/
writes report/gir_report.md, report/gir_report.png and report/gir_result.json.
"""

import argparse
import json
import math
import os
from typing import Mapping, Optional

from PIL import Image, ImageDraw, ImageFont

MIN_GAP = {"psnr": 0.1, "ssim": 0.01, "lpips": 0.01, "niqe": 0.1}
LOWER_IS_BETTER = ("lpips", "niqe")

Scores = Mapping[str, Mapping[str, float]]  # task -> metric -> value
Lines = Mapping[str, Mapping[str, tuple[float, float]]]  # task -> metric -> (acceptance, excellence)


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read JSON ({e})") from e


def _number(value, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
    raise ValueError(f"{where}: expected a number, got {value!r}")
  return float(value)


def load_scores(path: str) -> tuple[str, dict[str, dict[str, float]]]:
  """Reads a scores file: (model name, task -> metric -> score)."""
  data = _read_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
    raise ValueError(f'{path}: expected {{"model": ..., "scores": {{task: {{metric: value}}}}}}')
  scores = {}
  for task, by_metric in data["scores"].items():
    if not isinstance(by_metric, dict):
      raise ValueError(f"{path}: scores[{task!r}] must map metric names to numbers")
    scores[task] = {m: _number(v, f"{path}: scores[{task!r}][{m!r}]") for m, v in by_metric.items()}
  return str(data.get("model", os.path.splitext(os.path.basename(path))[0])), scores


def load_lines(path: str) -> dict[str, dict[str, tuple[float, float]]]:
  """Reads a lines file: task -> metric -> (acceptance, excellence)."""
  data = _read_json(path)
  if not isinstance(data, dict) or not isinstance(data.get("lines"), dict):
    raise ValueError(f'{path}: expected {{"lines": {{task: {{metric: {{"acceptance": a, "excellence": e}}}}}}}}')
  lines = {}
  for task, by_metric in data["lines"].items():
    if not isinstance(by_metric, dict):
      raise ValueError(f"{path}: lines[{task!r}] must map metric names to acceptance / excellence")
    lines[task] = {}
    for m, pair in by_metric.items():
      where = f"{path}: lines[{task!r}][{m!r}]"
      if not isinstance(pair, dict) or set(pair) != {"acceptance", "excellence"}:
        raise ValueError(f'{where}: expected {{"acceptance": a, "excellence": e}}, got {pair!r}')
      lines[task][m] = (_number(pair["acceptance"], where), _number(pair["excellence"], where))
  return lines


def lines_from_references(acceptance: Scores, excellence: Scores) -> dict[str, dict[str, tuple[float, float]]]:
  """Lines from the per-task scores of the weak (acceptance) and strong (excellence) reference models."""
  if set(acceptance) != set(excellence):
    raise ValueError("reference scores cover different tasks: only in acceptance "
                     f"{sorted(set(acceptance) - set(excellence))}, only in excellence "
                     f"{sorted(set(excellence) - set(acceptance))}")
  lines = {}
  for task in acceptance:
    if set(acceptance[task]) != set(excellence[task]):
      raise ValueError(f"reference scores of task {task!r} have different metrics: "
                       f"{sorted(acceptance[task])} vs {sorted(excellence[task])}")
    lines[task] = {m: (acceptance[task][m], excellence[task][m]) for m in acceptance[task]}
  return lines


def _sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def evaluate(scores: Scores, lines: Lines, *, min_gap: Optional[Mapping[str, float]] = None) -> dict:
  """AR, ER and RPR per metric, with the per-task rows; see the module doc for the definitions.

  Returns {"metrics": {metric: {"n", "ar", "er", "rpr", "rpr_tasks", "dropped", "tasks": [rows]}},
  "not_evaluated": [metrics with scores but no lines]}; a row is {"task", "score", "acceptance",
  "excellence", "pass_acceptance", "pass_excellence", "rpr"} with rpr None for a dropped task.
  """
  min_gap = dict(MIN_GAP if min_gap is None else min_gap)
  extra = sorted(set(scores) - set(lines))
  if extra:
    raise ValueError(f"scores for tasks without lines: {extra}")
  metrics = sorted({m for by_metric in lines.values() for m in by_metric})
  result = {"metrics": {}, "not_evaluated": sorted({m for s in scores.values() for m in s} - set(metrics))}
  for metric in metrics:
    if metric not in min_gap:
      raise ValueError(f"metric {metric!r}: no minimum line gap known (pass min_gap={{{metric!r}: ...}})")
    rows = []
    for task in sorted(t for t in lines if metric in lines[t]):
      if metric not in scores.get(task, {}):
        raise ValueError(f"task {task!r}: no {metric} score for a task that has {metric} lines")
      s = scores[task][metric]
      a, e = lines[task][metric]
      sign = -1.0 if metric in LOWER_IS_BETTER else 1.0  # scores times sign: higher is better
      # The tolerance keeps lines typed with the gap exactly (27.3 / 27.4) from failing by a rounding.
      kept = sign * (e - a) >= min_gap[metric] - 1e-9
      rows.append({
          "task": task, "score": s, "acceptance": a, "excellence": e,
          "pass_acceptance": sign * s >= sign * a, "pass_excellence": sign * s >= sign * e,
          "rpr": _sigmoid((s - a) / (e - a)) if kept else None,
      })
    n = len(rows)
    rprs = [r["rpr"] for r in rows if r["rpr"] is not None]
    result["metrics"][metric] = {
        "n": n,
        "ar": sum(r["pass_acceptance"] for r in rows) / n,
        "er": sum(r["pass_excellence"] for r in rows) / n,
        "rpr": sum(rprs) / len(rprs) if rprs else None,
        "rpr_tasks": len(rprs),
        "dropped": n - len(rprs),
        "min_gap": min_gap[metric],
        "tasks": rows,
    }
  return result


# ---- report ----

def _fmt(value: Optional[float], digits: int) -> str:
  if value is None:
    return "n/a"
  return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def markdown(result: dict, model: str = "") -> str:
  """The report as Markdown: a summary table, then one table per metric."""
  out = [f"# GIR evaluation{': ' + model if model else ''}", "",
         "| metric | tasks | AR | ER | RPR | RPR tasks | dropped from RPR (E - A < gap) |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
  for metric, r in result["metrics"].items():
    label = f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric
    out.append(f"| {label} | {r['n']} | {r['ar']:.4f} | {r['er']:.4f} | {_fmt(r['rpr'], 4)} | "
               f"{r['rpr_tasks']} | {r['dropped']} (gap {r['min_gap']:g}) |")
  if result["not_evaluated"]:
    out += ["", f"Not evaluated (no lines): {', '.join(result['not_evaluated'])}."]
  for metric, r in result["metrics"].items():
    digits = 2 if metric in ("psnr", "niqe") else 4
    out += ["", f"## {metric}", "",
            "| task | score | A | E | pass A | pass E | RPR |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["tasks"]:
      rpr = _fmt(row["rpr"], 4) if row["rpr"] is not None else "dropped"
      out.append(f"| {row['task']} | {_fmt(row['score'], digits)} | {_fmt(row['acceptance'], digits)} | "
                 f"{_fmt(row['excellence'], digits)} | {'yes' if row['pass_acceptance'] else 'no'} | "
                 f"{'yes' if row['pass_excellence'] else 'no'} | {rpr} |")
  return "\n".join(out) + "\n"


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font
    return ImageFont.load_default()


# Normalised score u = (s - A) / (E - A) is drawn on [U_MIN, U_MAX]; A is u = 0, E is u = 1.
U_MIN, U_MAX = -1.0, 2.0
COLOURS = {"excellent": (46, 139, 87), "accepted": (70, 130, 180), "failed": (205, 92, 92),
           "dropped": (160, 160, 160), "acceptance": (230, 140, 0), "excellence": (0, 120, 0)}


def plot(result: dict, model: str = "") -> Image.Image:
  """One panel per metric: a bar per task of (s - A) / (E - A), with the A (0) and E (1) lines."""
  font, small = _font(14), _font(12)
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  text_w = lambda t, f: probe.textbbox((0, 0), t, font=f)[2]
  tasks = [row["task"] for r in result["metrics"].values() for row in r["tasks"]]
  label_w = max([text_w(t, small) for t in tasks] + [60]) + 12
  bar_w, row_h, top, bottom = 360, 16, 64, 34
  panel_w = label_w + bar_w + 24
  n_rows = max([len(r["tasks"]) for r in result["metrics"].values()] + [1])
  panels = list(result["metrics"].items())
  img = Image.new("RGB", (max(1, len(panels)) * panel_w + 10, top + n_rows * row_h + bottom), "white")
  draw = ImageDraw.Draw(img)
  heading = f"GIR evaluation{': ' + model if model else ''}"
  draw.text((10, 6), heading, fill="black", font=font)
  x = 30 + text_w(heading, font)
  for kind, label in (("excellent", ">= E"), ("accepted", ">= A"), ("failed", "< A")):
    draw.rectangle([x, 10, x + 10, 20], fill=COLOURS[kind])
    draw.text((x + 14, 8), label, fill="black", font=small)
    x += 24 + text_w(label, small)
  for p, (metric, r) in enumerate(panels):
    x0 = 10 + p * panel_w + label_w
    to_x = lambda u: x0 + (min(max(u, U_MIN), U_MAX) - U_MIN) / (U_MAX - U_MIN) * bar_w
    title = f"{metric.upper()}  AR {r['ar']:.2f}  ER {r['er']:.2f}  RPR {_fmt(r['rpr'], 3)}"
    if r["dropped"]:
      title += f"  ({r['dropped']} dropped)"
    draw.text((10 + p * panel_w, 28), title, fill="black", font=font)
    y_end = top + len(r["tasks"]) * row_h
    for i, row in enumerate(r["tasks"]):
      y = top + i * row_h
      draw.text((x0 - 6 - text_w(row["task"], small), y + 1), row["task"], fill="black", font=small)
      if row["rpr"] is None:
        draw.text((to_x(0) + 4, y + 1), "dropped: lines too close", fill=COLOURS["dropped"], font=small)
        continue
      u = (row["score"] - row["acceptance"]) / (row["excellence"] - row["acceptance"])
      kind = "excellent" if row["pass_excellence"] else "accepted" if row["pass_acceptance"] else "failed"
      xa, xb = sorted((to_x(0), to_x(u)))
      draw.rectangle([xa, y + 3, max(xb, xa + 1), y + row_h - 3], fill=COLOURS[kind])
    for u, name in ((0.0, "acceptance"), (1.0, "excellence")):
      draw.line([to_x(u), top - 4, to_x(u), y_end + 2], fill=COLOURS[name], width=2)
    for u in (U_MIN, 0.0, 1.0, U_MAX):
      label = {0.0: "A", 1.0: "E"}.get(u, f"{u:g}")
      draw.text((to_x(u) - text_w(label, small) / 2, y_end + 6), label, fill="black", font=small)
    draw.text((x0, top - 20), "(score - A) / (E - A)", fill=(90, 90, 90), font=small)
  return img


def write_report(result: dict, out_dir: str, *, model: str = "") -> dict[str, str]:
  """Writes gir_report.md, gir_report.png and gir_result.json into out_dir; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f"gir_{k}") for k in ("report.md", "report.png", "result.json")}
  with open(paths["report.md"], "w", encoding="utf-8") as f:
    f.write(markdown(result, model))
  plot(result, model).save(paths["report.png"])
  with open(paths["result.json"], "w", encoding="utf-8") as f:
    json.dump({"model": model, **result}, f, indent=1, default=str)
  return paths


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="Scores a model on the GIR protocol (AR, ER, RPR).")
  parser.add_argument("--scores", required=True, help="scores JSON of the model to evaluate")
  parser.add_argument("--lines", help="lines JSON (acceptance / excellence per task and metric)")
  parser.add_argument("--acceptance", help="scores JSON of the weak reference model")
  parser.add_argument("--excellence", help="scores JSON of the strong reference model")
  parser.add_argument("--out", required=True, help="directory for the report")
  args = parser.parse_args(argv)
  if bool(args.lines) == bool(args.acceptance or args.excellence) or (
      not args.lines and not (args.acceptance and args.excellence)):
    parser.error("give either --lines, or both --acceptance and --excellence")
  model, scores = load_scores(args.scores)
  lines = load_lines(args.lines) if args.lines else lines_from_references(
      load_scores(args.acceptance)[1], load_scores(args.excellence)[1])
  paths = write_report(evaluate(scores, lines), args.out, model=model)
  print("\n".join(paths.values()))


if __name__ == "__main__":
  main()
