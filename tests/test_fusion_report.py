"""The prior-severity report on hand-written sweep directories (no training): pairing with none per seed,
gains and their spread, partial sweeps, the chart, bad input; and the sweep file's names parse back."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs.sweeps import prior_severity
from restorejax import fusion_report


def write(sweep_dir, name, psnr, ssim, **extra):
  os.makedirs(sweep_dir / name, exist_ok=True)
  (sweep_dir / name / "summary.json").write_text(json.dumps({"eval/psnr": psnr, "eval/ssim": ssim, **extra}))


@pytest.fixture
def sweep_dir(tmp_path):
  """Two seeds; align and concat at severities 0 and 0.4; concat_sev0.4_s1 not finished (directory only),
  match started for one seed only (its severity 0.4 not even created)."""
  d = tmp_path / "sweep"
  write(d, "none_s0", 20.0, 0.80)
  write(d, "none_s1", 21.0, 0.82)
  write(d, "align_sev0_s0", 22.0, 0.85)
  write(d, "align_sev0_s1", 22.5, 0.86)
  write(d, "align_sev0.4_s0", 21.0, 0.83)
  write(d, "align_sev0.4_s1", 22.5, 0.84)
  write(d, "concat_sev0_s0", 21.0, 0.81)
  write(d, "concat_sev0_s1", 22.0, 0.83)
  write(d, "concat_sev0.4_s0", 19.5, 0.79)
  os.makedirs(d / "concat_sev0.4_s1")
  write(d, "match_sev0_s0", 20.5, 0.80)
  (d / "results.md").write_text("the sweep's own table\n")
  return d


def test_gains_pair_each_run_with_none_of_its_seed_and_give_mean_and_min_max(sweep_dir, capsys):
  assert fusion_report.main([str(sweep_dir)]) == 0
  text = (sweep_dir / "severity.md").read_text()
  assert capsys.readouterr().out == text
  psnr_table = text[text.index("## PSNR"):text.index("## SSIM")]
  header, _, sev0, sev04 = psnr_table.strip().splitlines()[2:6]
  assert header == "| severity | concat | match | align |"  # columns in fusion.FUSIONS order
  # align at 0: gains 2.0 (seed 0) and 1.5 (seed 1); at 0.4: 1.0 and 1.5; concat at 0.4: seed 0 only.
  assert sev0 == "| 0 | +1.00 (+1.00..+1.00, n=2) | +0.50 (n=1) | +1.75 (+1.50..+2.00, n=2) |"
  assert sev04 == "| 0.4 | -0.50 (n=1) |  | +1.25 (+1.00..+1.50, n=2) |"
  ssim_table = text[text.index("## SSIM"):]
  assert "| 0.4 | -0.0100 (n=1) |  | +0.0250 (+0.0200..+0.0300, n=2) |" in ssim_table
  assert "LPIPS" not in text  # no summary has eval/lpips
  # Partial: what the grid seen (concat, match, align x 0, 0.4 x seeds 0, 1) lacks.
  assert "Partial sweep: 4 variant(s)" in text
  for name in ("concat_sev0.4_s1", "match_sev0.4_s0", "match_sev0.4_s1", "match_sev0_s1"):
    assert name in text.split("Partial sweep")[1]
  with open(sweep_dir / "severity.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 8  # one per finished fusion run with its baseline
  row = next(r for r in rows if (r["mode"], r["severity"], r["seed"]) == ("align", "0.4", "1"))
  assert float(row["psnr"]) == 22.5 and float(row["none_psnr"]) == 21.0 and float(row["psnr_gain"]) == 1.5
  assert float(row["ssim_gain"]) == pytest.approx(0.02) and row["lpips_gain"] == ""


def test_lpips_gain_is_none_minus_mode_and_a_run_without_its_none_is_left_out(tmp_path):
  d = tmp_path / "sweep"
  write(d, "none_s0", 20.0, 0.80, **{"eval/lpips": 0.30})
  write(d, "align_sev0.2_s0", 21.0, 0.82, **{"eval/lpips": 0.25})
  write(d, "align_sev0.2_s1", 23.0, 0.90, **{"eval/lpips": 0.10})  # seed 1 has no none
  text, rows = fusion_report.report(str(d))
  assert [(r["mode"], r["seed"]) for r in rows] == [("align", 0)]
  assert rows[0]["lpips_gain"] == pytest.approx(0.05)
  assert "## LPIPS gain" in text and "| 0.2 | +0.0500 (n=1) |" in text
  assert "none_s1" in text.split("Partial sweep")[1]


def test_chart_has_its_size_and_draws_each_mode(sweep_dir, tmp_path):
  out = tmp_path / "figs" / "fig"
  fusion_report.report(str(sweep_dir), str(out))
  for ext in (".md", ".csv"):
    assert (tmp_path / "figs" / f"fig{ext}").exists()
  image = Image.open(f"{out}.png").convert("RGB")
  assert image.size == fusion_report.CHART_SIZE
  colours = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
  for i in range(3):  # concat, match, align
    assert fusion_report.COLOURS[i] in colours


def test_an_empty_or_missing_sweep_is_one_line_naming_the_path(tmp_path, capsys):
  assert fusion_report.main([str(tmp_path / "nowhere")]) == 2
  err = capsys.readouterr().err
  assert err == f"restorejax.fusion_report: error: {tmp_path / 'nowhere'}: no such directory\n"
  d = tmp_path / "sweep"
  write(d, "align_sev0_s0", 21.0, 0.81)
  os.makedirs(d / "none_s0")  # started, not finished
  assert fusion_report.main([str(d)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"restorejax.fusion_report: error: {d}: no none_s<seed>/summary.json")
  assert err.count("\n") == 1


def test_a_sweep_with_only_the_baselines_finished_says_so(tmp_path):
  d = tmp_path / "sweep"
  write(d, "none_s0", 20.0, 0.80)
  os.makedirs(d / "align_sev0_s0")
  text, rows = fusion_report.report(str(d))
  assert not rows and "No fusion variant with a finished baseline has finished yet" in text
  assert "align_sev0_s0" in text
  assert Image.open(d / "severity.png").size == fusion_report.CHART_SIZE


@pytest.mark.parametrize("arg", [None, "seeds=2,modes=align+concat", "tiny"])
def test_the_sweep_files_variant_names_parse_back(arg):
  variants = prior_severity.get_sweep(arg)
  seen = set()
  for name, overrides in variants:
    seed = fusion_report.parse_baseline(name)
    if seed is not None:
      assert overrides["model.fusion"] == "none" and overrides["seed"] == seed
      continue
    mode, severity, seed = fusion_report.parse_variant(name)
    assert name == f"{mode}_{prior_severity.severity_name(severity)}_s{seed}"
    assert overrides["model.fusion"] == mode and overrides["seed"] == seed
    assert overrides["data.simulated_prior.severity"] == (severity, severity)
    seen.add(mode)
  assert seen <= set(prior_severity.MODES)
  assert fusion_report.parse_variant("none_s0") is None
  assert fusion_report.parse_baseline("align_sev0_s0") is None
  assert fusion_report.parse_variant("results.md") is None


def test_an_unknown_mode_in_the_sweep_file_is_one_line():
  with pytest.raises(ValueError) as e:
    prior_severity.get_sweep("modes=bogus")
  assert "\n" not in str(e.value)
  assert str(e.value).startswith("configs/sweeps/prior_severity.py: modes='bogus': unknown mode(s) bogus")


def test_text_chart_places_each_mode_by_its_mean_gain_and_cuts_at_chart_max(sweep_dir):
  rows = fusion_report.gains(fusion_report.collect(str(sweep_dir)))
  chart = fusion_report.text_chart(rows, "psnr", height=9)
  lines = chart.split("```\n")[1].splitlines()
  grid = lines[:9]
  col = lambda s: 9 + [0, 0.4].index(s) * 8 + 4  # 8 label characters and '|', then 8 per severity
  assert grid[0].startswith("  +1.75 |") and grid[0][col(0)] == "a"   # align at severity 0: +1.75, the top
  assert grid[-1].startswith("  -0.50 |") and grid[-1][col(0.4)] == "c"  # concat at 0.4: -0.5, the bottom
  zero = [i for i, line in enumerate(grid) if set(line[9:]) == {"-"}]
  assert zero == [round(1.75 / 2.25 * 8)]  # the zero line where 0 falls between +1.75 and -0.5
  assert "a = align" in chart and "c = concat" in chart and "m = match" in chart
  cut = fusion_report.text_chart(rows, "psnr", height=9, y_max=1.5)
  top = cut.split("```\n")[1].splitlines()[0]
  assert top.startswith("  +1.50 |") and top[col(0)] == "^" and "above +1.50" in cut
  assert fusion_report._letters(["sft", "swin", "align"]) == {"sft": "s", "swin": "1", "align": "a"}
  assert fusion_report.text_chart([], "psnr") == ""
  assert fusion_report.main([str(sweep_dir), "--chart_max", "1.5"]) == 0
  assert fusion_report.text_chart(rows, "psnr", y_max=1.5) in (sweep_dir / "severity.md").read_text()
