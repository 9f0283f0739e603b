"""``segx-monai check``: the Model Zoo's CI steps pass on both trained bundles, and each way a bundle fails the zoo's
CI is caught by its step: missing weights, weights of another network, metadata without its final newline, an
inference config that does not stand alone, requirements that cannot be installed on the zoo's Python."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import REPO
from segx_monai.bundle import zoo_ci
from segx_monai.bundle.conformance import json_format_problems

STEPS = [name for name, _ in zoo_ci.bundle_steps(False, None)]
BUNDLE_FILES = ("configs", "docs", "LICENSE", "large_files.yml")  # what the repository holds of a bundle


def checkable_bundle(trained: Path, data_dir: Path, bundle: str, dest: Path) -> Path:
    """A bundle folder as the demo leaves it: the repository's bundle files, a trained root's weights and split, and
    the data set at the configs' default ``data/synthetic``."""
    root = dest / bundle
    shutil.copytree(trained, root, ignore=shutil.ignore_patterns("runs"))
    for name in BUNDLE_FILES:
        source = REPO / "bundles" / bundle / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    (root / "data").mkdir()
    (root / "data" / "synthetic").symlink_to(data_dir, target_is_directory=True)
    # its image_size: the one its models were trained and their review threshold calibrated at (the tests' tiny size)
    trained_size = json.loads((root / "models" / "review_gradcam.json").read_text())["settings"]["image_size"]
    config = root / "configs" / "inference.yaml"
    config.write_text(re.sub(r"^image_size: \d+", f"image_size: {trained_size}", config.read_text(), count=1, flags=re.M))
    return root


@pytest.fixture
def ham_bundle(trained_ham_bundle, ham_dir, tmp_path) -> Path:
    return checkable_bundle(trained_ham_bundle, ham_dir, "ham_segx", tmp_path)


def step_lines(output: str, bundle: Path) -> dict[str, str]:
    """Each step's printed line (status and detail) under ``bundle``'s heading of the check's output (other lines,
    MONAI's log among them, are skipped)."""
    lines, current = {}, False
    for line in output.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line == f"{bundle}:"
        elif current and line.startswith("  "):
            lines.update({name: line for name in STEPS if line[8:].startswith(f"{name}: ")})
    return lines


def test_check_passes_on_both_trained_bundles(trained_ham_bundle, ham_dir, trained_chest_bundle, chest_dir, tmp_path):
    """``segx-monai check`` on the trained demo bundles: every step runs and passes, the resolution says it was not
    run, and the standalone inference config is what the network, export and properties steps used."""
    bundles = [checkable_bundle(trained_ham_bundle, ham_dir, "ham_segx", tmp_path), checkable_bundle(trained_chest_bundle, chest_dir, "chestx_segx", tmp_path)]
    result = subprocess.run([sys.executable, "-m", "segx_monai.cli", "check", *map(str, bundles)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for bundle in bundles:
        lines = step_lines(result.stdout, bundle)
        assert list(lines) == STEPS, result.stdout
        assert all(lines[name].startswith("  ok    ") for name in STEPS[:-1]), lines
        assert lines[STEPS[-1]].startswith("  --    ") and "not run" in lines[STEPS[-1]]
        for name in ("net in/out", "torchscript export", "weights load strictly", "inference properties"):
            assert "configs/inference.yaml" in lines[name], lines[name]
    assert result.stdout.splitlines()[-1] == f"check passed: {bundles[0]}, {bundles[1]}: {len(STEPS) - 1} steps each; not run: requirements resolve (pass --resolve)"


def test_missing_weights_fail_the_steps_that_need_them(ham_bundle, capsys):
    """Without models/model.pt: the files, export and strict-load steps fail naming it, the others still run and pass;
    the exit status is 1 and the last line names the failed steps."""
    (ham_bundle / "models" / "model.pt").unlink()
    with pytest.raises(SystemExit) as exit_:
        zoo_ci.main([str(ham_bundle)])
    assert exit_.value.code == 1
    output = capsys.readouterr().out
    lines = step_lines(output, ham_bundle)
    failed = ["files", "torchscript export", "weights load strictly"]
    for name in STEPS[:-1]:
        assert lines[name].startswith("  FAIL  " if name in failed else "  ok    "), lines[name]
    assert all("models/model.pt" in lines[name] for name in failed)
    assert output.splitlines()[-1] == f"check failed: {ham_bundle}: {', '.join(failed)}"


def test_weights_that_do_not_load_strictly_fail(ham_bundle):
    """Weights missing a tensor, or nested under a key, fail the strict load and name the file and the key."""
    weights = ham_bundle / "models" / "model.pt"
    state = torch.load(weights, weights_only=True)
    zoo_ci.step_strict_weights(ham_bundle)
    dropped = next(iter(state))
    torch.save({k: v for k, v in state.items() if k != dropped}, weights)
    with pytest.raises(zoo_ci.StepFailed, match=f"{re.escape(str(weights))}: does not load strictly into network_def.*Missing key.*{re.escape(dropped)}"):
        zoo_ci.step_strict_weights(ham_bundle)
    torch.save({"model": state}, weights)
    with pytest.raises(zoo_ci.StepFailed, match=r"not a plain state dict .*\['model'\]"):
        zoo_ci.step_strict_weights(ham_bundle)


def test_an_inference_config_that_does_not_stand_alone_fails(ham_bundle):
    """An inference config that needs another config (here: no network_def, no seed, as an overlay of the train
    config would be) fails the network, export and properties steps, naming what is missing."""
    config = ham_bundle / "configs" / "inference.yaml"
    content = ConfigParser.load_config_file(str(config))
    for key in ("network_def", "seed"):
        del content[key]
    ConfigParser.export_config_file(content, str(config), fmt="yaml")
    with pytest.raises(KeyError, match="network_def"):
        zoo_ci.step_net_in_out(ham_bundle)
    with pytest.raises(KeyError, match="network_def"):
        zoo_ci.step_torchscript(ham_bundle)
    with pytest.raises(Exception) as error:
        zoo_ci.step_infer_properties(ham_bundle)
    assert "seed" in str(zoo_ci.error_line(error.value))


def test_json_format_as_the_zoo_pre_commit_writes_it(tmp_path):
    """A final newline, four-space indents, no trailing spaces, non-ASCII escaped (keys stay in any order); each
    departure is named."""
    path = tmp_path / "metadata.json"
    content = {"version": "0.1.0", "authors": "Zoë", "changelog": {"0.1.0": "first"}}
    good = json.dumps(content, indent=4) + "\n"
    path.write_text(good)
    assert json_format_problems(path) == []
    for text, expected in ((good.rstrip("\n"), "no final newline"), (good + "\n", "blank lines at the end"),
                           (json.dumps(content, indent=2) + "\n", "line 2 differs"), (json.dumps(content, indent=4, separators=(", ", ": ")) + "\n", "line 2 differs"),
                           (json.dumps(content, indent=4, ensure_ascii=False) + "\n", "line 3 differs"), ("{", "not valid JSON")):
        path.write_text(text)
        (problem,) = json_format_problems(path)
        assert problem.startswith(f"{path}: {expected}"), (text, problem)


def test_metadata_without_final_newline_fails_the_json_step(tmp_path):
    """The repository's metadata.json passes; the same file without its final newline fails, naming it."""
    bundle = tmp_path / "ham_segx"
    shutil.copytree(REPO / "bundles" / "ham_segx" / "configs", bundle / "configs")
    zoo_ci.step_json_format(bundle)
    meta = bundle / "configs" / "metadata.json"
    meta.write_text(meta.read_text().rstrip("\n"))
    with pytest.raises(zoo_ci.StepFailed, match=f"{re.escape(str(meta))}: no final newline"):
        zoo_ci.step_json_format(bundle)


def test_requirements_as_the_zoo_generates_them(tmp_path):
    """get_bundle_requirements.py's lines: exact pins in its order, the release-candidate range, xformers' rule."""
    meta = json.loads((REPO / "bundles" / "ham_segx" / "configs" / "metadata.json").read_text())
    lines = zoo_ci.zoo_requirements(meta)
    assert lines[:3] == [f"monai=={meta['monai_version']}", f"torch=={meta['pytorch_version']}", f"numpy=={meta['numpy_version']}"]
    assert lines[3:] == [f"{name}=={version}" for name, version in meta["required_packages_version"].items()]
    assert zoo_ci.zoo_requirements({"monai_version": "1.4.0"}, monai_rc=True) == ["monai>=1.4.0rc1,<1.4.1"]
    assert zoo_ci.zoo_requirements({"monai_version": "2.0.9"}, monai_rc=True) == ["monai>=2.0.9rc1,<2.0.1"]  # the zoo's rstrip
    assert zoo_ci.zoo_requirements({"monai_version": "1.4", "pytorch_version": "2.4.0", "optional_packages_version": {"pytorch-ignite": "0.4.11"},
                                    "required_packages_version": {"xformers": "0.0.26"}}) == ["monai==1.4"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    zoo_ci.step_requirements(tmp_path, monai_rc=False)
    meta["required_packages_version"]["segx-monai"] = "0.0.9"  # a version the wheel of this repository is not
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(zoo_ci.StepFailed, match="required_packages_version#segx-monai is '0.0.9'"):
        zoo_ci.step_requirements(tmp_path, monai_rc=False)


def test_requirements_resolve_for_the_zoo_python(tmp_path):
    """Both bundles' generated requirements install on Python 3.10 with segx-monai from a wheel of this repository
    (one pip resolution: both bundles pin the same); a numpy pin with no Python 3.10 wheel is refused, naming it.
    Needs PyPI; pip downloads the wheels to read their metadata (about 1.5 GB, torch's CUDA wheels among them)."""
    metas = [json.loads((REPO / "bundles" / b / "configs" / "metadata.json").read_text()) for b in ("ham_segx", "chestx_segx")]
    lines = zoo_ci.zoo_requirements(metas[0])
    assert zoo_ci.zoo_requirements(metas[1]) == lines
    wheels = zoo_ci.build_wheel(REPO, tmp_path / "wheels").parent
    installs = zoo_ci.resolve_requirements(lines, wheels)
    assert {f"segx-monai-{metas[0]['required_packages_version']['segx-monai']}", f"numpy-{metas[0]['numpy_version']}",
            f"torch-{metas[0]['pytorch_version']}", f"monai-{metas[0]['monai_version']}"} <= set(installs), installs
    with pytest.raises(zoo_ci.StepFailed, match=r"No matching distribution found for numpy==2\.4\.6"):
        zoo_ci.resolve_requirements(["numpy==2.4.6"], wheels)  # installed here (Python 3.11), none for 3.10
