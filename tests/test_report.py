"""The interpretation report on a hand-written 12-prediction folder: tables, numbers, embedding, edge cases."""

import csv
import itertools
import json
import re
import statistics

import numpy as np
import pytest
from PIL import Image

from segx_monai.handlers.contract import pair_stem
from segx_monai.report import build_report, main
from segx_monai.report.interpretation import load_samples, summarize

HEADER = (
    "image_id,label,prediction,probability,correct,ciou,cauitc,iou_at_q_raw,iou_at_q_segx,auitc_raw,auitc_segx,"
    "hit_raw,hit_segx,relevance_mass_raw,relevance_mass_segx,empty_region,review,p_mel,p_nv"
)
ROWS = [  # a06 has no ground-truth mask (empty cells), a10 has NaN metrics, a09 has an empty predicted region
    "a01,mel,mel,0.91,1,0.42,0.40,0.30,0.36,0.28,0.33,1,1,0.55,0.80,0,0,0.91,0.09",
    "a02,nv,nv,0.88,1,0.35,0.31,0.22,0.25,0.20,0.26,1,1,0.48,0.77,0,0,0.12,0.88",
    "a03,nv,nv,0.75,1,0.28,0.27,0.18,0.21,0.17,0.22,0,1,0.40,0.70,0,0,0.25,0.75",
    "a04,mel,nv,0.61,0,0.05,0.07,0.04,0.06,0.05,0.08,0,0,0.10,0.35,0,1,0.39,0.61",
    "a05,nv,nv,0.93,1,0.50,0.45,0.41,0.44,0.38,0.42,1,1,0.66,0.85,0,0,0.07,0.93",
    "a06,mel,mel,0.67,1,0.12,0.15,,,,,,,,,0,0,0.67,0.33",
    "a07,nv,mel,0.55,0,0.18,0.16,0.10,0.14,0.09,0.13,0,1,0.21,0.52,0,0,0.55,0.45",
    "a08,nv,nv,0.81,1,0.31,0.30,0.25,0.29,0.23,0.27,1,1,0.51,0.74,0,0,0.19,0.81",
    "a09,mel,mel,0.72,1,0.00,0.02,0.12,0.00,0.11,0.00,1,0,0.30,0.00,1,1,0.72,0.28",
    "a10,mel,nv,0.58,0,0.09,0.10,nan,nan,nan,nan,nan,nan,nan,nan,0,1,0.42,0.58",
    "a11,nv,nv,0.85,1,0.38,0.36,0.27,0.32,0.26,0.30,1,1,0.58,0.79,0,0,0.15,0.85",
    "a12,mel,nv,0.52,0,0.31,0.25,0.20,0.19,0.18,0.17,1,0,0.44,0.41,0,0,0.48,0.52",
]
RUN = {"explainer": "gradcam", "segx_variant": "rethreshold", "q": 0.05, "mask_threshold": 0.5,
       "review_threshold": 0.1, "certainty_score": "ciou", "dataset": "synthetic", "n_samples": 12}


def write_folder(folder, rows, header=HEADER, overlays=("a01", "a04")):
    """An interpretation folder as the evaluator writes it."""
    folder.mkdir(exist_ok=True)
    (folder / "samples.csv").write_text("\n".join([header, *rows]) + "\n")
    thresholds = np.linspace(0, 1, 101)
    curves = {"thresholds": thresholds.tolist(), "auitc_curve_raw": (0.3 * (1 - thresholds)).tolist(),
              "auitc_curve_segx": (0.4 * (1 - thresholds) ** 2).tolist(), "n": len(rows)}
    (folder / "curves.json").write_text(json.dumps(curves))
    (folder / "run.json").write_text(json.dumps(RUN))
    (folder / "overlays").mkdir(exist_ok=True)
    for image_id in overlays:
        strip = (np.random.default_rng(0).random((16, 64, 3)) * 255).astype(np.uint8)
        Image.fromarray(strip).save(folder / "overlays" / f"{image_id}.png")
    return folder


def column(name):
    """The finite values of a column of ``ROWS``, parsed independently of the report."""
    values = [row[name] for row in csv.DictReader([HEADER, *ROWS])]
    return [float(v) for v in values if v not in ("", "nan")]


def by_hand_auroc(scores, correct):
    """Share of (correct, incorrect) pairs in which the correct prediction scores higher, ties counting one half."""
    positives = [s for s, c in zip(scores, correct) if c]
    pairs = list(itertools.product(positives, [s for s, c in zip(scores, correct) if not c]))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = write_folder(tmp_path_factory.mktemp("run"), ROWS)
    html_path = build_report(folder, n_bootstrap=300)
    return html_path.read_text(), json.loads((folder / "summary.json").read_text())


def test_html_shows_tables_and_hand_computed_numbers(report):
    html, _ = report
    for name in ("IoU@q", "AUITC", "Hit rate", "Relevance mass", "cIoU", "cAUITC", "AUROC", "AURC", "rethreshold"):
        assert name in html
    assert f"{statistics.mean(column('iou_at_q_raw')):.3f} [" in html
    assert f"{statistics.mean(column('iou_at_q_segx')):.3f} [" in html
    assert "a01: label mel, prediction mel (probability 0.910)" in html
    assert "flagged for review: yes" in html  # a04


def test_html_is_self_contained(report):
    html, _ = report
    sources = re.findall(r'src="([^"]*)"', html)
    # AUITC, risk-coverage, histograms; a01 and a04 in four gallery sections, a04 alone flagged for review
    assert len(sources) == 3 + 4 * 2 + 1
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r"https?://|<script|<link", html)


def test_summary_numbers(report):
    _, summary = report
    assert summary["counts"] == {"rows": 12, "images": 12, "correct": 8, "incorrect": 4,
                                 "with_ground_truth_mask": 10, "empty_region": 1, "review": 3}
    for key in ("iou_at_q", "auitc", "hit", "relevance_mass"):
        result = summary["localization"][key]
        raw, segx = column(f"{key}_raw"), column(f"{key}_segx")
        assert (result["n"], result["n_without_mask"], result["n_undefined"]) == (10, 2, 0)
        assert result["raw"]["mean"] == pytest.approx(statistics.mean(raw))
        assert result["segx"]["mean"] == pytest.approx(statistics.mean(segx))
        assert result["difference"]["mean"] == pytest.approx(statistics.mean(segx) - statistics.mean(raw))
        for estimate in (result["raw"], result["segx"], result["difference"]):
            assert estimate["ci"][0] <= estimate["mean"] <= estimate["ci"][1]
    correct = [c == 1 for c in column("correct")]
    for key in ("ciou", "cauitc"):
        result = summary["certainty"][key]
        scores = column(key)
        assert result["auroc"] == pytest.approx(by_hand_auroc(scores, correct))
        assert result["auroc_ci"][0] <= result["auroc"] <= result["auroc_ci"][1]
        assert result["mean_correct"] == pytest.approx(statistics.mean(s for s, c in zip(scores, correct) if c))
        assert result["mean_incorrect"] == pytest.approx(statistics.mean(s for s, c in zip(scores, correct) if not c))
    assert summary["auitc_curves"]["area_raw"] == pytest.approx(0.15, abs=1e-6)
    assert summary["gallery"] == {"best": ["a01", "a04"], "worst": ["a04", "a01"], "outside": ["a04", "a01"],
                                  "review": ["a04"], "uncertain": ["a04", "a01"]}


def test_tiny_auroc_by_hand(tmp_path):
    # correct 0.9, 0.4 vs incorrect 0.2, 0.7: pairs 0.9>0.2, 0.9>0.7, 0.4>0.2, 0.4<0.7 -> 3/4
    cases = [(0.9, 1), (0.2, 0), (0.7, 0), (0.4, 1)]
    rows = [f"t{i},mel,mel,0.8,{c},{s},{s},,,,,,,,,0,0,0.8,0.2" for i, (s, c) in enumerate(cases)]
    build_report(write_folder(tmp_path, rows, overlays=()), n_bootstrap=50)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["certainty"]["ciou"]["auroc"] == pytest.approx(0.75)
    assert summary["localization"]["iou_at_q"]["raw"]["mean"] is None


@pytest.mark.parametrize("rows", [ROWS[:1], []], ids=["one-correct-sample", "no-sample"])
def test_degenerate_inputs_show_na_with_reason(tmp_path, rows):
    html = build_report(write_folder(tmp_path, rows, overlays=()), n_bootstrap=50).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["certainty"]["ciou"]["auroc"] is None
    assert "AUROC: n/a, it needs both correct and incorrect predictions" in html
    assert "No such case has an overlay image." in html
    if not rows:
        assert "not drawn: no prediction has a SegU score" in html


def test_bootstrap_is_seeded(tmp_path):
    folder = write_folder(tmp_path, ROWS, overlays=())
    build_report(folder, n_bootstrap=100, seed=3)
    written = json.loads((folder / "summary.json").read_text())
    samples = load_samples(folder / "samples.csv")
    again, other_seed = (json.loads(json.dumps(summarize(samples, n_bootstrap=100, seed=seed))) for seed in (3, 4))
    assert {key: written[key] for key in again} == again
    assert written["localization"]["iou_at_q"]["raw"]["ci"] != other_seed["localization"]["iou_at_q"]["raw"]["ci"]
    assert written["certainty"]["ciou"]["auroc_ci"] != other_seed["certainty"]["ciou"]["auroc_ci"]


def test_findings_get_their_own_tables(tmp_path):
    # multi-label: two rows (findings) per image, the gallery shows each image once, with the overlay of the finding
    # the row explains, named as the explanation saver names it
    rows = [f"{row},{finding}" for row in ROWS[:4] for finding in ("Effusion", "Pleural thickening")]
    overlays = [pair_stem("a01", "Pleural thickening"), pair_stem("a04", "Effusion")]
    folder = write_folder(tmp_path, rows, header=HEADER + ",finding", overlays=overlays)
    html = build_report(folder, n_bootstrap=50).read_text()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counts"]["rows"] == 8 and summary["counts"]["images"] == 4
    assert set(summary["by_finding"]) == {"Effusion", "Pleural thickening"}
    assert summary["by_finding"]["Pleural thickening"]["counts"]["rows"] == 4
    assert "Finding Pleural thickening: localisation, raw vs SegX" in html
    assert summary["gallery"]["best"] == ["a01", "a04"]
    assert "a01 (Pleural thickening): label mel" in html and "a04 (Effusion): label mel" in html


def test_cli_prints_the_report_path(tmp_path, capsys):
    folder = write_folder(tmp_path, ROWS[:3], overlays=())
    assert main([str(folder), "--n-bootstrap", "20", "--title", "Run 7"]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "report.html")
    assert "<title>Run 7</title>" in (folder / "report.html").read_text()
