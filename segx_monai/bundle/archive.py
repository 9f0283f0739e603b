"""Distributable archives of a trained bundle: ``segx-monai pack``, ``unpack`` and ``verify``.

An archive is a zip in the Model Zoo's release layout (``<bundle>/configs``, ``docs``, ``models``, ``LICENSE``,
``large_files.yml``) plus ``<bundle>/manifest.json``, the sha256 of every file. MONAI has no command that packs a
bundle, and its ``download`` checks one hash of the whole zip only, so packing and the per-file manifest are written
here; files over 25 MB are listed in ``large_files.yml`` with their sha256 in the zoo's format, and those left out of
the archive are fetched and checked by MONAI's own ``download_large_files``.

Trust: a bundle's configs are Python (``$`` expressions run when a workflow is built), so running an unpacked bundle
runs its author's code. The manifest shows that the files are intact, not who made them; only the archive's sha256,
published by its author and given to ``unpack``, ties it to them.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch
import yaml
from monai.bundle import download_large_files

import segx_monai
from segx_monai.bundle.conformance import LARGE_FILE_BYTES, check_bundle, large_file_entries, parse_large_files
from segx_monai.utils.files import sha256_file, sha256_stream

PARTS = ("configs", "docs", "models", "LICENSE")  # what a bundle folder contributes; large_files.yml is written anew
MANIFEST = "manifest.json"
LARGE_FILES = "large_files.yml"
REQUIRED_WEIGHTS = ("models/model.pt", "models/segmenter.pt")  # what inference and interpretation load
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: packing the same files twice gives the same archive

logger = logging.getLogger(__name__)


class ArchiveError(ValueError):
    """A bundle that cannot be packed or an archive that fails its checks; the message names the file."""


def bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """The files of a bundle folder that go into its archive, keyed by their POSIX path inside the bundle."""
    files = {}
    for part in PARTS:
        root = bundle_dir / part
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        files.update({p.relative_to(bundle_dir).as_posix(): p for p in paths})
    return files


def check_weights(bundle_dir: Path, files: dict[str, Path]) -> None:
    """Refuse a bundle without trained weights, or with a ``.pt``/``.pth`` file that ``torch.load(weights_only=True)``
    (how MONAI's CheckpointLoader reads it) cannot read, e.g. one holding pickled code."""
    missing = [name for name in REQUIRED_WEIGHTS if name not in files]
    if missing:
        raise ArchiveError(f"{bundle_dir}: no trained weights {missing}; run the bundle's train configs first.")
    for path in files.values():
        if path.suffix in (".pt", ".pth"):
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ArchiveError(f"{path}: not loadable with torch.load(weights_only=True), so not packed: {e}") from e


def large_files_yaml(entries: list[dict], large_file_bytes: int) -> bytes:
    """``large_files.yml`` in the zoo's format, with a header saying what it lists."""
    header = (f"# Files over {large_file_bytes / 2**20:g} MB with their sha256, written by `segx-monai pack`. An empty url: the file is in\n"
              "# the archive. The others are fetched and checked by: python -m monai.bundle download_large_files --bundle_path <bundle>\n")
    return (header + yaml.safe_dump({"large_files": entries}, sort_keys=False)).encode()


def pack(bundle_dir: str | Path, archive: str | Path | None = None, large_files_url: str | None = None,
         large_file_bytes: int = LARGE_FILE_BYTES) -> Path:
    """Pack a trained bundle folder into a zip (default ``<bundle>_v<version>.zip``) after the zoo's checks.

    Files over ``large_file_bytes`` are listed in ``large_files.yml`` with their sha256; with ``large_files_url`` they
    are left out of the zip, to be fetched from ``<large_files_url>/<path>`` when it is unpacked."""
    bundle_dir = Path(bundle_dir)
    problems = check_bundle(bundle_dir)
    if problems:
        raise ArchiveError("not packed, the bundle fails the Model Zoo's checks:\n" + "\n".join(problems))
    files = bundle_files(bundle_dir)
    check_weights(bundle_dir, files)
    name = bundle_dir.resolve().name
    version = json.loads((bundle_dir / "configs" / "metadata.json").read_text())["version"]
    archive = Path(archive) if archive else Path(f"{name}_v{version}.zip")
    hashes = {rel: sha256_file(path) for rel, path in files.items()}
    large = [rel for rel, path in files.items() if path.stat().st_size > large_file_bytes]
    entries = [{"path": rel, "url": f"{large_files_url.rstrip('/')}/{rel}" if large_files_url else "", "hash_val": hashes[rel], "hash_type": "sha256"}
               for rel in large]
    contents: dict[str, Path | bytes] = {rel: path for rel, path in files.items() if not (large_files_url and rel in large)}
    contents[LARGE_FILES] = large_files_yaml(entries, large_file_bytes)
    hashes[LARGE_FILES] = sha256_stream(io.BytesIO(contents[LARGE_FILES]))
    manifest = {"bundle": name, "version": version, "segx_monai_version": segx_monai.__version__, "sha256": dict(sorted(hashes.items()))}
    contents[MANIFEST] = json.dumps(manifest, indent=1).encode()
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in sorted(contents):
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=ZIP_DATE)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            source = contents[rel]
            with zf.open(info, "w") as dst, (io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    return archive


def read_manifest(zf: zipfile.ZipFile, archive: Path) -> tuple[str, dict, dict[str, zipfile.ZipInfo]]:
    """The bundle name, manifest and file members (by path inside the bundle) of an open archive, after checking
    that every member is a plain file inside one top folder and listed in the manifest."""
    tops = {PurePosixPath(info.filename).parts[0] for info in zf.infolist()}
    if len(tops) != 1:
        raise ArchiveError(f"{archive}: expected one top folder (the bundle), found {sorted(tops)}.")
    name = tops.pop()
    members = {info.filename[len(name) + 1:]: info for info in zf.infolist() if not info.is_dir()}
    try:
        manifest = json.loads(zf.read(members[MANIFEST]))
        listed = manifest["sha256"]
    except (KeyError, json.JSONDecodeError) as e:
        raise ArchiveError(f"{archive}: no readable {name}/{MANIFEST} with the sha256 of the files ({e}).") from e
    outside = [rel for rel in [*members, *listed] if not rel or ".." in PurePosixPath(rel).parts or PurePosixPath(rel).is_absolute()]
    links = [rel for rel, info in members.items() if stat.S_ISLNK(info.external_attr >> 16)]
    if outside or links:
        raise ArchiveError(f"{archive}: {outside + links} lie outside the bundle or are links; refused.")
    unlisted = [f"{name}/{rel}" for rel in members if rel != MANIFEST and rel not in listed]
    if unlisted:
        raise ArchiveError(f"{archive}: {unlisted} are not listed in {MANIFEST}; refused.")
    return name, manifest, members


def open_zip(archive: Path) -> zipfile.ZipFile:
    """The archive opened for reading; a clear error naming it when it is not a zip file."""
    try:
        return zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise ArchiveError(f"{archive}: not a readable zip archive ({e}).") from e


def mismatches(root: Path, hashes: dict[str, str]) -> list[str]:
    """The files under ``root`` listed in ``hashes`` that are missing or whose sha256 differs, each named."""
    problems = []
    for rel, expected in hashes.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing.")
        elif (actual := sha256_file(path)) != expected:
            problems.append(f"{rel}: sha256 {actual} does not match the recorded {expected}.")
    return problems


def unpack(archive: str | Path, dest: str | Path, sha256: str | None = None) -> Path:
    """Unpack an archive into ``dest`` (new or empty), which becomes the bundle root, after checking the archive's
    own sha256 (if given) and every file against the manifest; large files left out are fetched by MONAI's
    ``download_large_files`` and checked too. Nothing is left in ``dest`` when a check fails."""
    archive, dest = Path(archive), Path(dest)
    if not sha256:
        logger.warning("%s: no --sha256 given, so who made it is unchecked; its configs run as Python code when the "
                       "bundle runs: use only archives you trust, with the sha256 their author published.", archive)
    if sha256 and (actual := sha256_file(archive)) != sha256.lower():
        raise ArchiveError(f"{archive}: sha256 {actual} is not the expected {sha256}; refused.")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"{dest}: not an empty folder; unpack into a new or empty one.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with open_zip(archive) as zf:
            _, manifest, members = read_manifest(zf, archive)
            for rel, info in members.items():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(staging / rel, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        problems = mismatches(staging, {rel: h for rel, h in manifest["sha256"].items() if rel in members})
        if problems:
            raise ArchiveError(f"{archive}: refused, files differ from {MANIFEST}:\n" + "\n".join(problems))
        fetch_large_files(staging, archive, manifest["sha256"])
        problems = mismatches(staging, {rel: h for rel, h in manifest["sha256"].items() if rel not in members})
        if problems:
            raise ArchiveError(f"{archive}: refused after fetching the large files:\n" + "\n".join(problems))
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def unlisted_large_files(entries: list[dict], hashes: dict[str, str]) -> list[str]:
    """The ``large_files.yml`` entries without a sha256 in the manifest: a file fetched for one could be anything."""
    return [e.get("path") if isinstance(e, dict) else repr(e) for e in entries if not isinstance(e, dict) or e.get("path") not in hashes]


def fetch_large_files(bundle_dir: Path, archive: Path, hashes: dict[str, str]) -> None:
    """Fetch the ``large_files.yml`` entries missing from an unpacked bundle with MONAI's ``download_large_files``
    (which checks each file's hash); an entry without a url must have been in the archive, and every entry needs its
    sha256 in the manifest (``hashes``)."""
    entries = large_file_entries(bundle_dir)
    unlisted = unlisted_large_files(entries, hashes)
    if unlisted:
        raise ArchiveError(f"{archive}: {LARGE_FILES} lists {unlisted}, which have no sha256 in {MANIFEST}; refused.")
    absent = [e["path"] for e in entries if not (bundle_dir / e["path"]).is_file() and not e.get("url")]
    if absent:
        raise ArchiveError(f"{archive}: {absent} are neither in the archive nor given a url in {LARGE_FILES}.")
    if not entries:
        return
    try:
        download_large_files(bundle_path=str(bundle_dir))
    except (OSError, RuntimeError, ValueError) as e:  # MONAI's HashCheckError is a ValueError naming the file
        raise ArchiveError(f"{archive}: fetching or checking a file of {LARGE_FILES} failed: {e}") from e


def verify(path: str | Path) -> dict:
    """Check an archive (each member against its manifest; a file left out needs a url in ``large_files.yml``) or
    an unpacked bundle folder (each file its ``manifest.json`` lists); return the manifest, or raise naming the files."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise ArchiveError(f"{path}: no {MANIFEST}; not an unpacked archive.")
        manifest = json.loads((path / MANIFEST).read_text())
        problems = mismatches(path, manifest["sha256"])
    else:
        with open_zip(path) as zf:
            _, manifest, members = read_manifest(zf, path)
            problems = []
            for rel, expected in manifest["sha256"].items():
                if rel in members:
                    with zf.open(members[rel]) as f:
                        if (actual := sha256_stream(f)) != expected:
                            problems.append(f"{rel}: sha256 {actual} does not match the recorded {expected}.")
            entries = parse_large_files(zf.read(members[LARGE_FILES]).decode(), f"{path}:{LARGE_FILES}") if LARGE_FILES in members else []
            with_url = {e["path"] for e in entries if e.get("url")}
            problems += [f"{rel}: in {LARGE_FILES} but without a sha256 in {MANIFEST}." for rel in unlisted_large_files(entries, manifest["sha256"])]
            problems += [f"{rel}: missing, and no url in {LARGE_FILES}." for rel in manifest["sha256"] if rel not in members and rel not in with_url]
    if problems:
        raise ArchiveError(f"{path}: files differ from {MANIFEST}:\n" + "\n".join(problems))
    return manifest


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None, action) -> None:
    """Parse ``argv`` and run ``action(args)``; an :class:`ArchiveError` ends the command with its message, exit 1."""
    args = parser.parse_args(argv)
    try:
        print(action(args))
    except ArchiveError as e:
        raise SystemExit(f"error: {e}") from None


def pack_main(argv: Sequence[str] | None = None) -> None:
    """``segx-monai pack <bundle> [archive] [--large-files-url URL]``."""
    parser = argparse.ArgumentParser(prog="segx-monai pack", description="Pack a trained bundle into a zip with a sha256 manifest of every file.")
    parser.add_argument("bundle", help="trained bundle folder, e.g. bundles/ham_segx")
    parser.add_argument("archive", nargs="?", help="output zip (default <bundle>_v<version>.zip)")
    parser.add_argument("--large-files-url", help="leave files over 25 MB out of the zip; unpack fetches them from URL/<path>")

    def action(args):
        """Pack and name the archive with its sha256, the hash to publish."""
        archive = pack(args.bundle, args.archive, args.large_files_url)
        return f"{archive}  sha256 {sha256_file(archive)}"

    run_cli(parser, argv, action)


def unpack_main(argv: Sequence[str] | None = None) -> None:
    """``segx-monai unpack <archive> <folder> [--sha256 HEX]``."""
    parser = argparse.ArgumentParser(
        prog="segx-monai unpack", description="Unpack a bundle archive into a new or empty folder, checking every file.",
        epilog="A bundle's configs are Python ($ expressions): running an unpacked bundle runs its author's code. Unpack "
               "only archives from a source you trust, with the sha256 its author published (without --sha256 the "
               "manifest shows the files are intact, not who made them).")
    parser.add_argument("archive")
    parser.add_argument("folder", help="new or empty folder, the bundle root (run the bundle there with --bundle_root .)")
    parser.add_argument("--sha256", help="expected sha256 of the archive itself, as printed by pack")
    run_cli(parser, argv, lambda args: f"{unpack(args.archive, args.folder, args.sha256)}: every file matches the manifest")


def verify_main(argv: Sequence[str] | None = None) -> None:
    """``segx-monai verify <archive or unpacked folder>``."""
    parser = argparse.ArgumentParser(prog="segx-monai verify", description="Check an archive or an unpacked bundle against its sha256 manifest.")
    parser.add_argument("path")

    def action(args):
        """Verify and say what matched."""
        manifest = verify(args.path)
        return f"{args.path}: {manifest['bundle']} v{manifest['version']}, {len(manifest['sha256'])} files match the manifest"

    run_cli(parser, argv, action)
