"""The SegX variant changes what is scored and saved: SegX's IoU@q and hit come from the variant's binary map, which
is written to maps/ and outlined in the overlay (hand-worked 4x4 cases, then the ham bundle's interpretation)."""

import csv

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from segx_monai.core import segx
from segx_monai.handlers.contract import Columns, map_stem
from segx_monai.handlers.savers import ExplanationSaver
from segx_monai.handlers.segx import LocalizationScores, SegXMaps
from segx_monai.handlers.writers import SampleTableWriter

from conftest import INTERPRET, RAMP, block, ham_workflow, run_workflow

# E = RAMP (values 0..15 row by row), q = 0.25 (4 of 16 pixels: the raw top 25% is the last row, values 12..15)
# a: region M = rows 0-1, ground truth G = (1, 2), (1, 3) (values 6, 7)
# b: region M = columns 0-1, ground truth G = (3, 0), (3, 1) (values 12, 13)
REGIONS = {"a": block(slice(0, 2), slice(None)), "b": block(slice(None), slice(0, 2))}
TRUTHS = {"a": block(slice(1, 2), slice(2, 4)), "b": block(slice(3, 4), slice(0, 2))}
# rethreshold, a: E⊙M = 0..7 and 9 zeros, sorted x11 = 3, x12 = 4 -> threshold 3.25 -> row 1 (4, 5, 6, 7)
#              b: E⊙M = 0,1,4,5,8,9,12,13 and 8 zeros, x11 = 5, x12 = 8 -> threshold 5.75 -> rows 2-3 of columns 0-1
# intersect,   a: last row ∧ rows 0-1 = nothing;  b: last row ∧ columns 0-1 = (3, 0), (3, 1)
BINARY = {
    ("rethreshold", "a"): block(slice(1, 2), slice(None)),
    ("rethreshold", "b"): block(slice(2, 4), slice(0, 2)),
    ("intersect", "a"): torch.zeros(1, 1, 4, 4, dtype=torch.bool),
    ("intersect", "b"): block(slice(3, 4), slice(0, 2)),
}
# IoU with G and hit (the SegX map's peak within the binary map, in G):
#   rethreshold a: 2/4, peak 7 at (1, 3) in G -> 1;  b: 2/4, peak 13 at (3, 1) in G -> 1
#   intersect   a: empty set -> IoU 0, hit 0;        b: 2/2, peak 13 at (3, 1) in G -> 1
SEGX_SCORES = {
    "rethreshold": {"a": (0.5, 1.0), "b": (0.5, 1.0)},
    "intersect": {"a": (0.0, 0.0), "b": (1.0, 1.0)},
}
# raw (either variant): the last row: a: IoU 0/6 = 0, peak 15 at (3, 3) -> 0; b: IoU 2/4, peak (3, 3) -> 0
RAW_SCORES = {"a": (0.0, 0.0), "b": (0.5, 0.0)}
# on the continuous SegX map, the same for both variants: relevance mass a: (6 + 7) / (0 + ... + 7) = 13/28,
# b: (12 + 13) / 52 = 25/52; AUITC on 3 thresholds, a: E_n = E⊙M / 7, t = 0 all 16 pixels 2/16, t = 0.5 row 1 2/4,
# t = 1 (1, 3) 1/2 -> 0.25 * 2/16 + 0.5 * 1/2 + 0.25 * 1/2 = 0.40625
CONTINUOUS = {"a": (13 / 28, 0.40625), "b": (25 / 52, None)}


@pytest.mark.parametrize("variant", ["rethreshold", "intersect"])
def test_the_variants_declare_different_binary_maps(variant):
    for image_id, region in REGIONS.items():
        result = segx(RAMP, region.float(), variant=variant, q=0.25)
        assert torch.equal(result.binary, BINARY[variant, image_id]), image_id
        assert torch.equal(result.heatmap, RAMP * region)  # the continuous map is the same for both variants


def interpret(variant: str, out) -> dict[str, dict]:
    """SegX, localisation, the map saver and the sample table on images a and b; the rows of samples.csv by id."""
    batch = [{Columns.IMAGE_ID: image_id, "mask": TRUTHS[image_id][0]} for image_id in REGIONS]
    items = lambda engine, batch: [  # noqa: E731
        {"image": torch.zeros(1, 4, 4), "map": RAMP.clone(), "region_prob": 0.9 * REGIONS[b[Columns.IMAGE_ID]][0].float(),
         "explained_classes": [0]} for b in batch
    ]
    engine = Engine(items)
    for handler in (SegXMaps(variant=variant, q=0.25), LocalizationScores(q=0.25, n_thresholds=3),
                    ExplanationSaver(out, mean=[0.0], std=[1.0], display_size=4), SampleTableWriter(out / "samples.csv")):
        handler.attach(engine)
    engine.run([batch], max_epochs=1)
    return {row[Columns.IMAGE_ID]: row for row in csv.DictReader(open(out / "samples.csv"))}


def test_segx_iou_and_hit_score_the_variants_binary_map(tmp_path):
    rows = {variant: interpret(variant, tmp_path / variant) for variant in SEGX_SCORES}
    for variant, expected in SEGX_SCORES.items():
        for image_id, row in rows[variant].items():
            assert (float(row["iou_at_q_segx"]), float(row["hit_segx"])) == pytest.approx(expected[image_id]), (variant, image_id)
            assert (float(row["iou_at_q_raw"]), float(row["hit_raw"])) == pytest.approx(RAW_SCORES[image_id])
            mass, auitc = CONTINUOUS[image_id]
            assert float(row["relevance_mass_segx"]) == pytest.approx(mass)
            if auitc is not None:
                assert float(row["auitc_segx"]) == pytest.approx(auitc)
    for column in ("auitc_segx", "relevance_mass_segx", "auitc_raw", "relevance_mass_raw"):
        assert [rows["rethreshold"][i][column] for i in REGIONS] == [rows["intersect"][i][column] for i in REGIONS]


def test_the_binary_map_is_saved_and_outlined(tmp_path):
    for variant in SEGX_SCORES:
        interpret(variant, tmp_path / variant)
        for image_id in REGIONS:
            saved = np.asarray(Image.open(tmp_path / variant / "maps" / f"{map_stem(image_id, None, 'segx_binary')}.png"))
            assert np.array_equal(saved, 255 * BINARY[variant, image_id][0, 0].numpy().astype(np.uint8)), (variant, image_id)
    for image_id in REGIONS:  # the SegX panel (the last 4 columns at display size 4, below the labels) outlines each variant's own set
        strips = [np.asarray(Image.open(tmp_path / variant / "overlays" / f"{image_id}.png"))[-4:] for variant in SEGX_SCORES]
        assert strips[0].shape == (4, 16, 3) and not np.array_equal(strips[0][:, 12:], strips[1][:, 12:])
        assert np.array_equal(strips[0][:, :12], strips[1][:, :12])


def test_the_variant_changes_the_interpretation_of_the_ham_bundle(trained_ham_bundle, ham_dir, tmp_path):
    """Same classifier, segmenter and maps: the raw scores agree, SegX's IoU@q and binary maps do not."""
    outputs = {}
    for variant in ("rethreshold", "intersect"):
        out = outputs[variant] = tmp_path / variant
        # GradientSHAP (seeded): Grad-CAM's 1x1 feature map at 32 px is flat, every binary map empty; 6 test images
        run_workflow(ham_workflow(trained_ham_bundle, ham_dir, INTERPRET, explainer_name="gradient_shap", segx_variant=variant,
                                  interpret_dir=str(out), inference_batch_size=3, review_threshold=0.1,  # not calibrated for it
                                  **{"dataset#data": "$@fold_items('test')[:6]"}))
    tables = {variant: list(csv.DictReader(open(out / "samples.csv"))) for variant, out in outputs.items()}
    column = lambda variant, name: [row[name] for row in tables[variant]]  # noqa: E731
    for name in ("image_id", "iou_at_q_raw", "hit_raw", "auitc_segx", "relevance_mass_segx"):
        assert column("rethreshold", name) == column("intersect", name), name
    assert column("rethreshold", "iou_at_q_segx") != column("intersect", "iou_at_q_segx")
    binaries = {variant: [np.asarray(Image.open(out / "maps" / f"{map_stem(i, None, 'segx_binary')}.png")) for i in column(variant, "image_id")]
                for variant, out in outputs.items()}
    assert any(not np.array_equal(r, i) for r, i in zip(binaries["rethreshold"], binaries["intersect"]))
