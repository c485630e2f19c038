"""GIR scoring: AR / ER / RPR by hand, the drop rule, files in and reports out."""

import json
import math

import pytest
from PIL import Image

from restorejax.evaluation import gir

SCORES = {
    "blur": {"psnr": 28.0, "ssim": 0.80},
    "noise": {"psnr": 30.0, "ssim": 0.90},
    "rain": {"psnr": 25.0, "ssim": 0.70},
    "haze": {"psnr": 20.0, "ssim": 0.60},
}
LINES = {
    "blur": {"psnr": (27.0, 29.0), "ssim": (0.78, 0.82)},   # between A and E
    "noise": {"psnr": (29.0, 30.0), "ssim": (0.85, 0.88)},  # at E exactly / above E
    "rain": {"psnr": (26.0, 27.0), "ssim": (0.70, 0.75)},   # below A / at A exactly
    "haze": {"psnr": (19.0, 19.05), "ssim": (0.61, 0.60)},  # gap 0.05 dB < 0.1; negative SSIM gap
}


def sigmoid(x):
  return 1 / (1 + math.exp(-x))


def test_ratios_by_hand():
  result = gir.evaluate(SCORES, LINES)
  psnr, ssim = result["metrics"]["psnr"], result["metrics"]["ssim"]
  # PSNR: >= A for blur, noise, haze (rain fails); >= E for noise (30 >= 30) and haze (20 >= 19.05).
  assert psnr["n"] == 4 and psnr["ar"] == 3 / 4 and psnr["er"] == 2 / 4
  # haze dropped from RPR only (E - A = 0.05 < 0.1).
  expected = [sigmoid((28 - 27) / 2), sigmoid((30 - 29) / 1), sigmoid((25 - 26) / 1)]
  assert psnr["dropped"] == 1 and psnr["rpr_tasks"] == 3
  assert psnr["rpr"] == pytest.approx(sum(expected) / 3, abs=1e-12)
  rows = {r["task"]: r for r in psnr["tasks"]}
  assert rows["haze"]["rpr"] is None and rows["noise"]["rpr"] == pytest.approx(sigmoid(1.0))
  # SSIM: >= A for blur, noise, rain (0.70 >= 0.70); >= E for noise and haze, whose lines are inverted
  # (0.60 >= E = 0.60 but < A = 0.61; E - A = -0.01 < 0.01 drops it from RPR); gaps 0.03..0.05 are kept.
  assert ssim["ar"] == 3 / 4 and ssim["er"] == 2 / 4 and ssim["dropped"] == 1
  expected = [sigmoid(0.02 / 0.04), sigmoid(0.05 / 0.03), sigmoid(0.0)]
  assert ssim["rpr"] == pytest.approx(sum(expected) / 3, abs=1e-9)


def test_drop_rule_threshold_is_inclusive_and_configurable():
  scores = {"t": {"psnr": 30.0}}
  kept = gir.evaluate(scores, {"t": {"psnr": (29.0, 29.1)}})["metrics"]["psnr"]  # gap exactly 0.1
  assert kept["dropped"] == 0 and kept["rpr"] == pytest.approx(sigmoid(10.0), rel=1e-6)
  typed = gir.evaluate(scores, {"t": {"psnr": (27.3, 27.4)}})["metrics"]["psnr"]  # 0.0999999999999979
  assert typed["dropped"] == 0
  dropped = gir.evaluate(scores, {"t": {"psnr": (29.0, 29.09)}})["metrics"]["psnr"]
  assert dropped["dropped"] == 1 and dropped["rpr"] is None and dropped["ar"] == 1.0
  loose = gir.evaluate(scores, {"t": {"psnr": (29.0, 29.09)}}, min_gap={"psnr": 0.05})["metrics"]["psnr"]
  assert loose["dropped"] == 0


def test_files_and_report(tmp_path):
  weak = {"model": "weak", "scores": {t: {m: a for m, (a, e) in v.items()} for t, v in LINES.items()}}
  strong = {"model": "strong", "scores": {t: {m: e for m, (a, e) in v.items()} for t, v in LINES.items()}}
  model = {"model": "ours", "scores": {t: {**v, "lpips": 0.1} for t, v in SCORES.items()}}
  lines_file = {"lines": {t: {m: {"acceptance": a, "excellence": e} for m, (a, e) in v.items()}
                          for t, v in LINES.items()}}
  for name, data in (("weak", weak), ("strong", strong), ("model", model), ("lines", lines_file)):
    (tmp_path / f"{name}.json").write_text(json.dumps(data))

  from_refs = gir.lines_from_references(gir.load_scores(str(tmp_path / "weak.json"))[1],
                                        gir.load_scores(str(tmp_path / "strong.json"))[1])
  from_file = gir.load_lines(str(tmp_path / "lines.json"))
  assert from_refs == from_file == {t: dict(v) for t, v in LINES.items()}

  gir.main(["--scores", str(tmp_path / "model.json"), "--lines", str(tmp_path / "lines.json"),
            "--out", str(tmp_path / "report")])
  md = (tmp_path / "report" / "gir_report.md").read_text()
  result = gir.evaluate(SCORES, LINES)
  assert "ours" in md and "lpips" in md  # the metric without lines is named, not silently skipped
  assert f"| psnr | 4 | 0.7500 | 0.5000 | {result['metrics']['psnr']['rpr']:.4f} | 3 | 1 (gap 0.1) |" in md
  assert "| haze | 20.00 | 19.00 | 19.05 | yes | yes | dropped |" in md
  assert f"| blur | 0.8000 | 0.7800 | 0.8200 | yes | no | {sigmoid(0.5):.4f} |" in md
  saved = json.loads((tmp_path / "report" / "gir_result.json").read_text())
  assert saved["metrics"]["ssim"]["er"] == 0.5
  png = Image.open(tmp_path / "report" / "gir_report.png")
  assert png.size[0] > 400 and png.size[1] > 4 * 16
  colours = {c for _, c in png.convert("RGB").getcolors(1 << 20)}
  assert gir.COLOURS["failed"] in colours and gir.COLOURS["excellent"] in colours

  gir.main(["--scores", str(tmp_path / "model.json"), "--acceptance", str(tmp_path / "weak.json"),
            "--excellence", str(tmp_path / "strong.json"), "--out", str(tmp_path / "report2")])
  assert (tmp_path / "report2" / "gir_report.md").read_text() == md


def test_mismatches_are_errors():
  with pytest.raises(ValueError, match="tasks without lines"):
    gir.evaluate({**SCORES, "snow": {"psnr": 1.0}}, LINES)
  with pytest.raises(ValueError, match="no ssim score"):
    gir.evaluate({**SCORES, "blur": {"psnr": 28.0}}, LINES)
  with pytest.raises(ValueError, match="minimum line gap"):
    gir.evaluate({"t": {"fid": 0.1}}, {"t": {"fid": (0.2, 0.1)}})  # a metric with no known gap
  with pytest.raises(ValueError, match="different tasks"):
    gir.lines_from_references({"a": {"psnr": 1.0}}, {"b": {"psnr": 2.0}})


def test_lower_is_better_metrics_pass_below_their_lines():
  """LPIPS and NIQE: a score at or below a line passes it; RPR grows as the score falls; lines closer
  than the gap (or the wrong way round) are dropped from RPR only."""
  lines = {"noise": {"lpips": (0.30, 0.20)}, "blur": {"lpips": (0.30, 0.20)},
           "haze": {"lpips": (0.200, 0.195)}, "rain": {"niqe": (6.0, 5.0)}}
  scores = {"noise": {"lpips": 0.25}, "blur": {"lpips": 0.35}, "haze": {"lpips": 0.1},
            "rain": {"niqe": 4.5}}
  result = gir.evaluate(scores, lines)
  rows = {r["task"]: r for r in result["metrics"]["lpips"]["tasks"]}
  assert rows["noise"]["pass_acceptance"] and not rows["noise"]["pass_excellence"]
  assert rows["noise"]["rpr"] == pytest.approx(sigmoid(0.5))
  assert not rows["blur"]["pass_acceptance"] and rows["blur"]["rpr"] == pytest.approx(sigmoid(-0.5))
  assert rows["haze"]["pass_excellence"] and rows["haze"]["rpr"] is None  # 0.005 apart: dropped
  assert result["metrics"]["lpips"]["ar"] == pytest.approx(2 / 3)
  niqe = result["metrics"]["niqe"]["tasks"][0]
  assert niqe["pass_excellence"] and niqe["rpr"] == pytest.approx(sigmoid(1.5))
  assert "| lpips (lower is better) | 3 |" in gir.markdown(result)
