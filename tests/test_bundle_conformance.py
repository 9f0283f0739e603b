"""Both bundles against the MONAI Model Zoo's checks: metadata schema, files and readme, network shapes, TorchScript."""

from __future__ import annotations

import json
import re
import shutil
import zipfile

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out
from packaging.version import Version

import segx_monai
from conftest import REPO, TRAIN_CONFIGS
from segx_monai.bundle.conformance import SCHEMA_FILE, SCHEMA_SHA256, check_bundle, validate_metadata
from segx_monai.bundle.zoo_ci import build_wheel, package_source

BUNDLES = ("ham_segx", "chestx_segx")
# each network of a bundle: its format key in metadata.json and its weights file; its training configs
# (inference.yaml then train_<network>.yaml) define it as network_def
NETWORKS = {"classifier": ("network_data_format", "model.pt"), "segmenter": ("segmenter_data_format", "segmenter.pt")}
TRAINED = {"ham_segx": "trained_ham_bundle", "chestx_segx": "trained_chest_bundle"}


def metadata(bundle: str) -> dict:
    """The parsed ``configs/metadata.json`` of a bundle of the repository."""
    return json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_validates_against_the_zoo_schema(bundle):
    """metadata.json against the zoo's schema with jsonschema, both networks' formats included."""
    schema = json.loads(SCHEMA_FILE.read_text())
    meta = metadata(bundle)
    assert meta["schema"].endswith("/" + SCHEMA_FILE.name)
    jsonschema.validate(meta, schema)
    assert validate_metadata(REPO / "bundles" / bundle / "configs" / "metadata.json") == []
    # the segmenter's format is checked by the schema too (its "<network>_data_format" pattern), not just tolerated
    broken = json.loads(json.dumps(meta))
    broken["segmenter_data_format"]["outputs"]["pred"]["num_channels"] = "2"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_monai_verify_metadata_with_the_kept_schema(bundle):
    """MONAI's own check, offline: ``verify_metadata`` downloads the schema only when ``filepath`` has no file."""
    verify_metadata(meta_file=str(REPO / "bundles" / bundle / "configs" / "metadata.json"), filepath=str(SCHEMA_FILE),
                    hash_val=SCHEMA_SHA256[SCHEMA_FILE.name], hash_type="sha256")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_has_every_file_key_and_section_the_zoo_asks_for(bundle):
    """Files, licences, changelog, readme sections and installable versions, as the zoo's CI reads them."""
    root = REPO / "bundles" / bundle
    assert check_bundle(root) == []
    assert "Apache License" in (root / "LICENSE").read_text() and (root / "docs" / "data_license.txt").stat().st_size > 0
    meta = metadata(bundle)
    assert meta["version"] in meta["changelog"]
    assert meta["required_packages_version"]["segx-monai"] == segx_monai.__version__
    for key in ("monai_version", "pytorch_version", "numpy_version", *(f"required_packages_version#{p}" for p in meta["required_packages_version"])):
        Version(ConfigParser(meta)[key])  # a version pip can install, as the zoo's CI does


def test_metadata_names_the_monai_label_app_at_its_version():
    """``supported_apps`` names the MONAI Label app of this repository with the version its environment installs."""
    (version,) = re.findall(r"\bmonailabel==([\w.]+)", (REPO / "scripts" / "monailabel_env.sh").read_text())
    for bundle in BUNDLES:
        assert metadata(bundle)["supported_apps"] == {"monailabel": version}


def test_check_bundle_names_each_problem(tmp_path):
    """Each broken rule is reported once, naming the file and the key."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "ham_segx" / "configs", bundle / "configs")
    shutil.copytree(REPO / "bundles" / "ham_segx" / "docs", bundle / "docs")
    assert check_bundle(bundle) == [f"{bundle}: no LICENSE."]
    (bundle / "LICENSE").write_text("Apache-2.0")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    del meta["task"]
    meta["version"] = "9.9.9"
    meta["network_data_format_segmenter"] = meta.pop("segmenter_data_format")
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    readme = bundle / "docs" / "README.md"
    readme.write_text(readme.read_text().replace("## Performance", "## Results"))
    (bundle / "large_files.yml").write_text("large_files:\n  - path: ../models/classifier.pt\n    url: ''\n")
    problems = "\n".join(check_bundle(bundle))
    for expected in ("'task' is a required property", "changelog: no entry for version '9.9.9'",
                     "network_data_format_segmenter: not checked by the schema", "no 'performance' section",
                     "large_files#0: path '../models/classifier.pt' must stay inside the bundle"):
        assert expected in problems, problems
    assert len(check_bundle(bundle)) == 5


def test_an_edited_schema_copy_is_refused(tmp_path, monkeypatch):
    """A kept schema that no longer matches its recorded sha256 is not used to validate."""
    import segx_monai.bundle.conformance as conformance

    monkeypatch.setattr(conformance, "SCHEMA_DIR", tmp_path)
    (tmp_path / SCHEMA_FILE.name).write_text(SCHEMA_FILE.read_text().replace('"task",', ""))
    (problem,) = validate_metadata(REPO / "bundles" / "ham_segx" / "configs" / "metadata.json")
    assert "sha256 differs" in problem and SCHEMA_FILE.name in problem


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("network", NETWORKS)
def test_verify_net_in_out_for_every_network(bundle, network):
    """MONAI's ``verify_net_in_out`` on each network with its own format from metadata.json (channels, shape, dtype)."""
    format_key, _ = NETWORKS[network]
    configs = REPO / "bundles" / bundle / "configs"
    data_format = metadata(bundle)[format_key]
    kwargs = {"net_id": "network_def", "meta_file": str(configs / "metadata.json"), "config_file": [str(configs / c) for c in TRAIN_CONFIGS[network]],
              "bundle_root": str(REPO / "bundles" / bundle), "device": "cpu"}
    verify_net_in_out(**kwargs, **{"_meta_#network_data_format": data_format})
    data_format["outputs"]["pred"]["num_channels"] += 1
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(**kwargs, **{"_meta_#network_data_format": data_format})


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("network", NETWORKS)
def test_torchscript_export_of_every_network(bundle, network, request, tmp_path):
    """MONAI's ``ckpt_export`` of the trained weights (plain state dicts, as the zoo exports them): the TorchScript
    module computes what the network does."""
    trained = request.getfixturevalue(TRAINED[bundle])
    format_key, weights = NETWORKS[network]
    configs = [str(REPO / "bundles" / bundle / "configs" / c) for c in TRAIN_CONFIGS[network]]
    ckpt_file = trained / "models" / weights
    exported = tmp_path / f"{network}.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(ckpt_file), meta_file=str(REPO / "bundles" / bundle / "configs" / "metadata.json"),
                config_file=configs, bundle_root=str(trained))
    extra = {"metadata.json": "", **{c.rpartition("/")[2].replace(".yaml", ".json"): "" for c in configs}}
    scripted = torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == metadata(bundle)["version"]
    parser = ConfigParser()
    parser.read_config(configs)
    parser["bundle_root"] = str(trained)
    network_def = parser.get_parsed_content("network_def")
    network_def.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True))
    image_format = metadata(bundle)[format_key]["inputs"]["image"]
    x = torch.rand(2, image_format["num_channels"], *image_format["spatial_shape"])
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), network_def.eval()(x))


def test_the_wheel_ships_the_schema_and_the_bundle_commands(tmp_path):
    """What ``pip install segx-monai`` installs, at the version the bundles pin: the kept schema (package data) and
    the bundle commands. Built from a copy of the sources, so that the build leaves nothing in the repository."""
    assert package_source() == REPO
    wheel = build_wheel(REPO, tmp_path)
    assert wheel.name == f"segx_monai-{metadata('ham_segx')['required_packages_version']['segx-monai']}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read(f"segx_monai/bundle/schemas/{SCHEMA_FILE.name}") == SCHEMA_FILE.read_bytes()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "segx-monai = segx_monai.cli:main" in zf.read(entry_points).decode()
    assert {"segx_monai/bundle/archive.py", "segx_monai/bundle/conformance.py", "segx_monai/bundle/zoo_ci.py", "segx_monai/bundle/schemas/README.md"} <= names
