"""Archives of a trained bundle: packed, unpacked into an empty folder and run there with ``python -m monai.bundle``
as a user would, giving the source bundle's outputs; an archive whose files do not match their hashes is refused."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from ignite.engine import Engine
from monai.bundle import download
from monai.handlers import CheckpointLoader

from conftest import CHEST_TINY, REPO, TINY, chest_workflow, cli_settings, ham_workflow, run_workflow
from segx_monai.bundle import ArchiveError, pack, unpack, verify
from segx_monai.bundle.conformance import LARGE_FILE_BYTES
from segx_monai.utils.files import sha256_file
from segx_monai.cli import main as cli

# per bundle: its trained fixture, data fixture, tiny settings, workflow factory, inference images and extra overrides
# (chest: the first finding always predicted, the others never, so that every image has one row to compare)
CASES = {
    "ham_segx": ("trained_ham_bundle", "ham_dir", TINY, ham_workflow, lambda data: sorted(data.rglob("ISIC_*.jpg"))[:4], {}),
    "chestx_segx": ("trained_chest_bundle", "chest_dir", CHEST_TINY, chest_workflow,
                    lambda data: sorted(p for p in (data / "dicom").iterdir() if p.is_file())[:3], {"finding_thresholds": [0.0] + [2.0] * 9}),
}
INFER = ["inference.yaml"]
INTERPRET = ["inference.yaml", "interpret.yaml"]


def assemble(name: str, trained: Path, folder: Path) -> Path:
    """A trained bundle folder as training leaves one: the repository bundle's files and the trained models."""
    source, bundle = REPO / "bundles" / name, folder / name
    for part in ("configs", "docs"):
        shutil.copytree(source / part, bundle / part)
    for part in ("LICENSE", "large_files.yml"):
        shutil.copy(source / part, bundle / part)
    shutil.copytree(trained / "models", bundle / "models")
    return bundle


def bundle_run(bundle_root: Path, run_id: str, configs: list[str], settings: dict) -> None:
    """``python -m monai.bundle run`` in ``bundle_root`` with ``--bundle_root .``, as the bundle's docs say; the same
    thread count as the tests' own process, so that the floating-point results can be compared exactly."""
    args = ["--config_file", str([f"configs/{c}" for c in configs]), "--bundle_root", "."]
    args += [a for key, value in cli_settings(bundle_root / "configs", configs, settings).items() for a in (f"--{key}", str(value))]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", run_id, *args], cwd=bundle_root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def rows(path: Path) -> list[dict]:
    """The rows of a CSV file."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", CASES)
def test_archive_runs_from_an_empty_folder_like_the_source(name, request, tmp_path):
    """pack -> unpack into an empty folder -> inference and interpretation there: the source bundle's outputs."""
    trained_fixture, data_fixture, tiny, workflow, inputs, overrides = CASES[name]
    trained, data = request.getfixturevalue(trained_fixture), request.getfixturevalue(data_fixture)
    source = assemble(name, trained, tmp_path / "source")
    archive = pack(source, tmp_path / f"{name}.zip")
    with zipfile.ZipFile(archive) as zf:
        members = {n.removeprefix(f"{name}/") for n in zf.namelist()}
        large = yaml.safe_load(zf.read(f"{name}/large_files.yml"))["large_files"]
    assert {"configs/metadata.json", "configs/inference.yaml", "docs/README.md", "docs/data_license.txt", "LICENSE",
            "models/model.pt", "models/segmenter.pt", "large_files.yml", "manifest.json"} <= members
    assert not any(m.startswith(("runs/", "datalists/")) for m in members)
    assert [(e["path"], e["hash_val"]) for e in large] == [("models/model.pt", sha256_file(source / "models" / "model.pt"))]
    assert (source / "models" / "model.pt").stat().st_size > LARGE_FILE_BYTES  # DenseNet121: over the zoo's 25 MB

    unpacked = tmp_path / "empty"
    unpacked.mkdir()
    unpack(archive, unpacked, sha256=sha256_file(archive))
    assert verify(unpacked)["bundle"] == name

    images = tmp_path / "images"  # a folder of a few images, as a user passes one
    images.mkdir()
    for image in inputs(data):
        shutil.copy(image, images / image.name)
    run_workflow(workflow(source, data, INFER, workflow_type="infer", input=str(images), inference_dir=str(tmp_path / "inference"), **overrides))
    run_workflow(workflow(source, data, INTERPRET, interpret_dir=str(tmp_path / "interpret"), **overrides))
    settings = {**tiny, **overrides, "input": images, "dataset_dir": data}
    bundle_run(unpacked, "inferring", INFER, settings)
    bundle_run(unpacked, "interpreting", INTERPRET, settings)

    assert rows(unpacked / "inference" / "predictions.csv") == rows(tmp_path / "inference" / "predictions.csv") != []
    masks = sorted(p.name for p in (tmp_path / "inference" / "masks").iterdir())
    assert masks and sorted(p.name for p in (unpacked / "inference" / "masks").iterdir()) == masks
    for mask in masks:
        assert (unpacked / "inference" / "masks" / mask).read_bytes() == (tmp_path / "inference" / "masks" / mask).read_bytes(), mask
    (interpret_dir,) = (unpacked / "interpret").iterdir()
    assert rows(interpret_dir / "samples.csv") == rows(tmp_path / "interpret" / "samples.csv") != []


@pytest.fixture(scope="module")
def ham_source(trained_ham_bundle, tmp_path_factory) -> Path:
    """The trained ham_segx bundle folder, for the archive checks that run nothing."""
    return assemble("ham_segx", trained_ham_bundle, tmp_path_factory.mktemp("ham_source"))


def rewrite(archive: Path, out: Path, change) -> Path:
    """A copy of ``archive`` whose members are ``change(name, data)`` (``None`` drops one), plus any it returns
    for the name ``None``."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info, data)
        for name, data in (change(None, None) or {}).items():
            dst.writestr(name, data)
    return out


def flip_one_byte(data: bytes) -> bytes:
    """``data`` with its middle byte changed."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]


def test_tampered_archives_are_refused(ham_source, tmp_path):
    """One changed byte, an unlisted or escaping member, a missing file, a wrong archive hash: refused, nothing written."""
    archive = pack(ham_source, tmp_path / "ham.zip")
    assert pack(ham_source, tmp_path / "again.zip").read_bytes() == archive.read_bytes()  # reproducible, one hash to publish
    tampered = rewrite(archive, tmp_path / "tampered.zip", lambda name, data: flip_one_byte(data) if name == "ham_segx/models/segmenter.pt" else data)
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match="models/segmenter.pt: sha256 .* does not match the recorded"):
        unpack(tampered, dest)
    assert not dest.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".dest")] == []
    with pytest.raises(ArchiveError, match="models/segmenter.pt: sha256"):
        verify(tampered)
    with pytest.raises(SystemExit, match="models/segmenter.pt"):
        cli(["unpack", str(tampered), str(dest)])
    with pytest.raises(ArchiveError, match="sha256 .* is not the expected"):
        unpack(archive, dest, sha256=sha256_file(tampered))
    extra = rewrite(archive, tmp_path / "extra.zip", lambda name, data: {"ham_segx/models/extra.pt": b"x"} if name is None else data)
    with pytest.raises(ArchiveError, match=r"\['ham_segx/models/extra.pt'\] are not listed in manifest.json"):
        unpack(extra, dest)
    escaping = rewrite(archive, tmp_path / "escaping.zip", lambda name, data: {"ham_segx/../evil.py": b"x"} if name is None else data)
    with pytest.raises(ArchiveError, match=r"\['../evil.py'\] lie outside the bundle"):
        unpack(escaping, dest)
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        verify(ham_source / "LICENSE")
    missing = rewrite(archive, tmp_path / "missing.zip", lambda name, data: None if name == "ham_segx/models/model.pt" else data)
    with pytest.raises(ArchiveError, match=r"\['models/model.pt'\] are neither in the archive nor given a url"):
        unpack(missing, dest)
    (dest / "occupied").mkdir(parents=True)
    with pytest.raises(ArchiveError, match="not an empty folder"):
        unpack(archive, dest)


def test_large_files_left_out_are_fetched_and_checked(ham_source, tmp_path):
    """With a url, files over the limit stay out of the zip, as the Model Zoo asks, and MONAI's
    ``download_large_files`` fetches them at unpack, checking the sha256 listed in ``large_files.yml``."""
    published = tmp_path / "published"
    archive = pack(ham_source, tmp_path / "ham.zip", large_files_url=published.as_uri(), large_file_bytes=2**20)
    with zipfile.ZipFile(archive) as zf:
        kept = {Path(i.filename).name: i.file_size for i in zf.infolist() if i.filename.endswith(".pt")}
    assert "model.pt" not in kept and "segmenter.pt" not in kept and all(size <= 2**20 for size in kept.values())
    assert verify(archive)["bundle"] == "ham_segx"
    shutil.copytree(ham_source / "models", published / "models")
    dest = unpack(archive, tmp_path / "dest")
    for weights in ("model.pt", "segmenter.pt"):
        assert (dest / "models" / weights).read_bytes() == (ham_source / "models" / weights).read_bytes()
    (published / "models" / "segmenter.pt").write_bytes(flip_one_byte((published / "models" / "segmenter.pt").read_bytes()))
    with pytest.raises(ArchiveError, match="segmenter.pt"):
        unpack(archive, tmp_path / "dest2")
    assert not (tmp_path / "dest2").exists()


def test_monai_download_installs_an_archive(ham_source, tmp_path):
    """The archive has the Model Zoo's release layout: MONAI's ``download --url`` installs it as ``<dir>/ham_segx``."""
    archive = pack(ham_source, tmp_path / "ham_segx_v0.1.0.zip")
    download(name="ham_segx", url=archive.as_uri(), bundle_dir=str(tmp_path / "downloaded"))
    assert verify(tmp_path / "downloaded" / "ham_segx")["version"] == json.loads((ham_source / "configs" / "metadata.json").read_text())["version"]


class NotWeights:
    """An object a weights file must not hold: loading it would run code from the pickle."""


def test_untrained_or_unsafe_weights_are_not_packed(ham_source, tmp_path):
    """Missing weights, weights holding a pickled object, or a bundle failing the zoo's checks are not packed."""
    bundle = tmp_path / "ham_segx"
    shutil.copytree(ham_source, bundle, ignore=shutil.ignore_patterns("model.pt"))
    with pytest.raises(ArchiveError, match=r"no trained weights \['models/model.pt'\]"):
        pack(bundle, tmp_path / "untrained.zip")
    torch.save({"model": NotWeights()}, bundle / "models" / "model.pt")
    with pytest.raises(ArchiveError, match="model.pt: not loadable with torch.load\\(weights_only=True\\)"):
        pack(bundle, tmp_path / "unsafe.zip")
    loader = CheckpointLoader(load_path=str(bundle / "models" / "model.pt"), load_dict={"model": torch.nn.Linear(1, 1)})
    with pytest.raises(Exception, match="Weights only load failed"):  # MONAI's loader refuses it as well
        loader(Engine(lambda engine, batch: None))
    (bundle / "LICENSE").unlink()
    with pytest.raises(ArchiveError, match="fails the Model Zoo's checks:\n.*no LICENSE"):
        pack(bundle, tmp_path / "unlicensed.zip")


def test_cli_pack_verify_unpack(ham_source, tmp_path, capsys):
    """The ``segx-monai`` subcommands: pack prints the archive's sha256, which unpack then checks."""
    cli(["pack", str(ham_source), str(tmp_path / "ham.zip")])
    printed = capsys.readouterr().out
    assert printed.strip() == f"{tmp_path / 'ham.zip'}  sha256 {sha256_file(tmp_path / 'ham.zip')}"
    cli(["verify", str(tmp_path / "ham.zip")])
    version = json.loads((ham_source / "configs" / "metadata.json").read_text())["version"]
    assert f"ham_segx v{version}, " in capsys.readouterr().out
    cli(["unpack", str(tmp_path / "ham.zip"), str(tmp_path / "unpacked"), "--sha256", printed.split()[-1]])
    assert (tmp_path / "unpacked" / "configs" / "inference.yaml").is_file()


def hand_made_archive(path: Path, files: dict[str, bytes], large_files: list[dict]) -> Path:
    """An archive of the bundle ``tiny`` holding ``files`` and a ``large_files.yml`` of ``large_files``, each of them
    in its manifest: what a packer other than ``pack`` could publish."""
    files = {**files, "large_files.yml": yaml.safe_dump({"large_files": large_files}).encode()}
    manifest = {"bundle": "tiny", "version": "0.0.1", "sha256": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}}
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in {**files, "manifest.json": json.dumps(manifest).encode()}.items():
            zf.writestr(f"tiny/{rel}", data)
    return path


def test_unpack_without_sha256_warns_that_configs_run_as_code(tmp_path, caplog):
    """Without --sha256 the manifest only shows the files are intact: unpack says so in one warning line."""
    archive = hand_made_archive(tmp_path / "tiny.zip", {"configs/inference.yaml": b"x: $print('runs')\n"}, [])
    with caplog.at_level("WARNING", logger="segx_monai.bundle.archive"):
        unpack(archive, tmp_path / "checked", sha256=sha256_file(archive))
    assert caplog.records == []
    result = subprocess.run([sys.executable, "-m", "segx_monai.cli", "unpack", str(archive), str(tmp_path / "unchecked")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "--sha256" in line]
    assert len(warnings) == 1 and str(archive) in warnings[0] and "run as Python code" in warnings[0], result.stderr
    assert (tmp_path / "unchecked" / "configs" / "inference.yaml").is_file()


def test_large_files_entry_without_a_manifest_hash_is_refused(tmp_path):
    """A large_files.yml entry that the manifest does not list would be fetched unchecked: unpack and verify refuse it
    by name, and nothing is fetched or written."""
    published = tmp_path / "published"
    (published / "models").mkdir(parents=True)
    (published / "models" / "extra.pt").write_bytes(b"anything")
    entries = [{"path": "models/extra.pt", "url": (published / "models" / "extra.pt").as_uri(), "hash_val": "", "hash_type": "sha256"}]
    archive = hand_made_archive(tmp_path / "tiny.zip", {"configs/inference.yaml": b"x: 1\n"}, entries)
    dest = tmp_path / "bundles" / "dest"
    with pytest.raises(ArchiveError, match=r"large_files.yml lists \['models/extra.pt'\], which have no sha256 in manifest.json"):
        unpack(archive, dest, sha256=sha256_file(archive))
    assert not dest.exists() and sorted(p.name for p in dest.parent.iterdir()) == []
    with pytest.raises(ArchiveError, match="models/extra.pt: in large_files.yml but without a sha256 in manifest.json"):
        verify(archive)


def test_a_large_files_entry_that_is_not_a_mapping_is_refused_by_name(tmp_path):
    archive = hand_made_archive(tmp_path / "tiny.zip", {"configs/inference.yaml": b"x: 1\n"}, ["models/extra.pt"])
    with pytest.raises(ArchiveError, match=r"large_files.yml lists \[\"'models/extra.pt'\"\]"):
        unpack(archive, tmp_path / "dest", sha256=sha256_file(archive))
