"""A failed bundle run exits non-zero, ends with one line naming the file or config key, and leaves no table that
looks complete; command-line values that cannot work are refused before any work."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ignite.engine import Engine
from PIL import Image

from conftest import CHEST_CONFIGS, HAM_CONFIGS, REPO, TRAIN_SEGMENTER
from segx_monai.bundle.errors import ConfigError, error_line, root_cause
from segx_monai.handlers.writers import SampleTableWriter
from segx_monai.search import SearchError, search

INFER = ["inference.yaml"]


def bundle_run(configs_dir: Path, configs: list[str], run_id: str, bundle_root: Path, *args: str) -> tuple[int, str, str]:
    """``python -m monai.bundle run`` with tiny settings; (exit code, last line of stdout and stderr together, all)."""
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", repr([str(configs_dir / c) for c in configs]),
               "--bundle_root", str(bundle_root), "--image_size", "32", "--num_workers", "0", *args]
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    return done.returncode, done.stdout.strip().splitlines()[-1], done.stdout


def image_file(path: Path) -> str:
    Image.new("RGB", (40, 30), (180, 120, 90)).save(path)
    return str(path)


def test_inference_without_its_checkpoint_fails_naming_it(tmp_path):
    inputs = repr([image_file(tmp_path / "a.png")])
    code, last, out = bundle_run(HAM_CONFIGS, INFER, "inferring", tmp_path / "root", "--input", inputs, "--review_threshold", "0.1")
    assert code != 0, out[-3000:]
    assert last.startswith("error: ") and str(tmp_path / "root" / "models" / "model.pt") in last, out[-3000:]
    assert not (tmp_path / "root" / "inference" / "predictions.csv").exists()


def test_inference_stops_at_an_unreadable_input_with_no_table(trained_ham_bundle, ham_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    good = next((ham_dir / "HAM10000_images_part_1").glob("*.jpg"))
    out_dir = tmp_path / "inference"
    code, last, out = bundle_run(HAM_CONFIGS, INFER, "inferring", trained_ham_bundle, "--dataset_dir", str(ham_dir),
                                 "--inference_batch_size", "8", "--input", repr([str(good), str(bad)]), "--inference_dir", str(out_dir))
    assert code != 0, out[-3000:]
    assert last.startswith("error: ") and "broken.jpg" in last, out[-3000:]
    assert not (out_dir / "predictions.csv").exists()


@pytest.mark.parametrize("configs, run_id, args, expected", [
    (INFER, "inferring", ["--q", "2.0"], ["--q: no such config key", "top_fraction"]),
    (["inference.yaml", "interpret.yaml"], "interpreting", ["--explainer_name", "nonsense"], ["'nonsense'", "gradcam", "gradient_shap"]),
    (["inference.yaml", "train_classifier.yaml"], "training", ["--image_size", "abc"], ["--image_size 'abc'", "integer"]),
    (["inference.yaml", "train_classifier.yaml"], "training", ["--val_fraction", "abc"], ["--val_fraction 'abc'", "number"]),
    (["inference.yaml", "train_classifier.yaml"], "training", ["--ckpt_dir", "FILE"], ["ckpt_dir", "is a file"]),
])
def test_refused_before_any_work(configs, run_id, args, expected, tmp_path):
    a_file = tmp_path / "models.txt"
    a_file.write_text("a file, not a folder")
    root = tmp_path / "root"
    code, last, out = bundle_run(HAM_CONFIGS, configs, run_id, root, *[str(a_file) if a == "FILE" else a for a in args])
    assert code != 0, out[-3000:]
    assert last.startswith("error: ") and all(e in last for e in expected), last
    assert not (root / "datalists").exists()  # refused before the data set was read


def test_chest_inference_without_its_models_fails_naming_them(tmp_path):
    image = tmp_path / "study.png"
    Image.new("L", (64, 64), 90).save(image)
    code, last, out = bundle_run(CHEST_CONFIGS, INFER, "inferring", tmp_path / "root", "--input", repr([str(image)]),
                                 "--top_fraction", "0.1")  # a number where a number is expected passes
    assert code != 0, out[-3000:]
    assert last.startswith("error: ") and str(tmp_path / "root" / "models") in last, out[-3000:]  # thresholds or classifier
    assert not list((tmp_path / "root").rglob("*.csv"))


def test_patch_logits_of_a_densenet_fails_naming_both_settings(tmp_path):
    image = tmp_path / "lesion.png"
    Image.new("RGB", (32, 32), (90, 60, 50)).save(image)
    code, last, out = bundle_run(HAM_CONFIGS, INFER, "inferring", tmp_path / "root", "--input", repr([str(image)]),
                                 "--explainer_name", "patch_logits", "--review_threshold", "0.2")
    assert code != 0, out[-3000:]
    assert last.startswith("error: ") and "explainer_name patch_logits" in last and "classifier_name: patchnet" in last, last


def test_a_search_whose_every_trial_fails_fails(ham_dir, tmp_path):
    configs = [str(HAM_CONFIGS / c) for c in [*TRAIN_SEGMENTER, "search.yaml"]]
    with pytest.raises(SearchError) as info:
        search(configs, {"bundle_root": str(tmp_path), "dataset_dir": str(ham_dir), "image_size": 32, "max_epochs": 1,
                         "segmenter_features": [8, 8, 16, 16, 32, 8], "search#space": {"batch_size": [0]}, "search#heartbeat_interval": 1})
    cause = root_cause(info.value)
    assert isinstance(cause, SearchError) and "every trial" in str(cause) and "batch_size" in str(cause), repr(cause)


def test_error_line_is_the_innermost_error_of_this_package():
    try:
        try:
            try:
                raise FileNotFoundError("x.png")
            except FileNotFoundError as e:
                raise ConfigError("image_size 'abc': expected an integer") from e
        except ConfigError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as e:
        assert error_line(e) == "error: image_size 'abc': expected an integer"
    try:
        try:
            raise KeyError("nonsense")
        except KeyError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as e:
        assert error_line(e) == "error: KeyError: 'nonsense'"
    worker = ("Caught {} in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File \"a.py\"\n"
              "PIL.UnidentifiedImageError: cannot identify x.png\n\nThe above exception was the direct cause of the following "
              "exception:\n\nTraceback (most recent call last):\n  File \"b.py\"\nsegx_monai.bundle.errors.ConfigError: x.png: unreadable")
    assert error_line(ConfigError(worker.format("ConfigError"))) == "error: x.png: unreadable"
    assert error_line(RuntimeError(worker.format("RuntimeError"))) == "error: PIL.UnidentifiedImageError: cannot identify x.png"


def table_run(path: Path, fail_at: int | None) -> Engine:
    """An engine of 3 iterations of 2 samples writing ``path`` through SampleTableWriter, failing at ``fail_at``."""
    def step(engine, batch):
        if engine.state.iteration == fail_at:
            raise ValueError(f"sample {batch[0]['image_id']}: unreadable")
        return [{"rows": [{"p": float(i)}]} for i, _ in enumerate(batch)]

    engine = Engine(step)
    SampleTableWriter(path).attach(engine)
    engine.run([[{"image_id": f"{b}{i}"} for i in range(2)] for b in "abc"], max_epochs=1)
    return engine


def test_sample_table_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "predictions.csv"
    with pytest.raises(ValueError, match="sample c0: unreadable"):  # the error reaches the caller
        table_run(path, fail_at=3)
    assert not path.exists()
    assert [line.split('"')[3] for line in path.with_suffix(".jsonl").read_text().splitlines()] == ["a0", "a1", "b0", "b1"]
    table_run(path, fail_at=None)
    with open(path) as table:
        assert [row["image_id"] for row in csv.DictReader(table)] == ["a0", "a1", "b0", "b1", "c0", "c1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]  # no lines file or temporary left


def test_inference_with_a_truncated_model_fails_naming_it(trained_ham_bundle, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(trained_ham_bundle / "models", root / "models")
    model = root / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a save cut short
    code, last, out = bundle_run(HAM_CONFIGS, INFER, "inferring", root, "--input", repr([image_file(tmp_path / "a.png")]))
    assert code != 0, out[-3000:]
    assert last.startswith(f"error: {model}: cannot be loaded") and "complete checkpoint" in last, last


def test_monai_tracking_settings_are_accepted_with_tracking_only():
    from segx_monai.bundle.errors import check_overrides

    config = [str(HAM_CONFIGS / "inference.yaml"), str(HAM_CONFIGS / "train_classifier.yaml")]
    check_overrides(config, {"tracking": "mlflow", "experiment_name": "segx", "run_name": "a", "max_epochs": 2})
    with pytest.raises(ConfigError, match="--experiment_name: no such config key"):
        check_overrides(config, {"experiment_name": "segx"})
