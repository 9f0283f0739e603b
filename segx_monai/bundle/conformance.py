"""The MONAI Model Zoo's static checks of a bundle folder, offline: necessary files, ``metadata.json`` against the
zoo's metadata schema (kept in ``schemas/``), the version in the changelog, ``large_files.yml`` entries, the
``docs/README.md`` sections of the zoo's readme template and the JSON formatting of its pre-commit hooks. ``pack``
runs :func:`check_bundle`; ``segx-monai check`` (:mod:`segx_monai.bundle.zoo_ci`) runs them with the zoo's CI steps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import yaml

from segx_monai.utils.files import sha256_file

SCHEMA_DIR = Path(__file__).with_name("schemas")
SCHEMA_FILE = SCHEMA_DIR / "meta_schema_20240725.json"
# sha256 of each kept schema, as copied from its source (schemas/README.md): an edited copy is refused
SCHEMA_SHA256 = {"meta_schema_20240725.json": "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"}
# the zoo's rule for the format of a bundle's other networks, "<network>_data_format" (the schema's patternProperties)
NETWORK_FORMAT_KEY = re.compile(r"^[_a-zA-Z0-9]+_data_format$")
# files the zoo's CI requires (ci/verify_bundle.py: necessary and preferred files) plus the readme it asks for
NECESSARY_FILES = ("configs/metadata.json", "LICENSE", "docs/README.md")
PREFERRED_FILES = ("models/model.pt",)  # and an inference config; a trained bundle's weights, under the zoo's name
# in the zoo's order of look-up: when several exist, its CI uses the last one found
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
JSON_INDENT = 4  # the zoo's pre-commit: pretty-format-json --autofix --no-sort-keys --indent=4, end-of-file-fixer
LARGE_FILE_BYTES = 25 * 1024 * 1024  # the zoo keeps no single file over 25 MB in its repository
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")  # those MONAI's download_url checks
# sections of the zoo's docs/readme_template.md, each as the accepted heading prefixes (case-insensitive)
README_SECTIONS = (
    ("model overview", "model description"),
    ("data",),
    ("performance",),
    ("system configuration",),
    ("limitations", "intended use and limitations"),
    ("license",),
    ("references", "citation"),
)


def schema_file(url: str) -> Path:
    """The kept copy of the zoo's metadata schema that ``url`` (the ``schema`` field of a metadata.json) names,
    checked against its recorded sha256."""
    name = Path(urlparse(url).path).name
    path = SCHEMA_DIR / name
    if name not in SCHEMA_SHA256 or not path.is_file():
        raise FileNotFoundError(f"schema {url!r} is not kept in {SCHEMA_DIR}; kept: {sorted(SCHEMA_SHA256)}.")
    if sha256_file(path) != SCHEMA_SHA256[name]:
        raise ValueError(f"{path}: sha256 differs from the copied schema's {SCHEMA_SHA256[name]}; restore it from its source.")
    return path


def validate_metadata(meta_file: str | Path) -> list[str]:
    """Problems of a bundle's ``metadata.json``, each naming the file and the key: the zoo's metadata schema, the
    version in the changelog, and other networks' formats named so that the schema checks them."""
    meta_file = Path(meta_file)
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{meta_file}: not a readable JSON file ({e})."]
    if not isinstance(metadata, dict) or "schema" not in metadata:
        return [f"{meta_file}: no 'schema' key naming the zoo's metadata schema."]
    try:
        schema = json.loads(schema_file(metadata["schema"]).read_text())
    except (FileNotFoundError, ValueError) as e:
        return [f"{meta_file}: {e}"]
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [f"{meta_file}: {'#'.join(map(str, e.absolute_path)) or '<top level>'}: {e.message}"
                for e in sorted(validator.iter_errors(metadata), key=lambda e: list(map(str, e.absolute_path)))]
    problems += [f"{meta_file}: {key}: not checked by the schema; a network's format key must match {NETWORK_FORMAT_KEY.pattern}."
                 for key in metadata if "data_format" in key and key != "network_data_format" and not NETWORK_FORMAT_KEY.match(key)]
    return problems


def check_version(meta_file: str | Path) -> list[str]:
    """The zoo's version rules of ``metadata.json``: a ``version``, a ``changelog``, and an entry for that version."""
    meta_file = Path(meta_file)
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{meta_file}: not a readable JSON file ({e})."]
    missing = [f"{meta_file}: no '{key}' key." for key in ("version", "changelog") if key not in metadata]
    if missing:
        return missing
    if metadata["version"] not in metadata["changelog"]:
        return [f"{meta_file}: changelog: no entry for version {metadata['version']!r}."]
    return []


def json_format_problems(path: str | Path) -> list[str]:
    """How a JSON file differs from what the zoo's pre-commit hooks write: a single final newline and
    ``json.dumps(..., indent=4)`` with the keys in their order and non-ASCII characters escaped."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        expected = json.dumps(json.loads(text), indent=JSON_INDENT, separators=(",", ": ")) + "\n"
    except json.JSONDecodeError as e:
        return [f"{path}: not valid JSON ({e})."]
    if text == expected:
        return []
    if text.rstrip("\n") == expected.rstrip("\n"):
        ending = "blank lines at the end" if text.endswith("\n") else "no final newline"
        return [f"{path}: {ending} (the zoo's end-of-file-fixer)."]
    line = next(i for i, (a, b) in enumerate(zip(text.splitlines() + [""], expected.splitlines() + [""]), 1) if a != b)
    return [f"{path}: line {line} differs from pretty-format-json --no-sort-keys --indent={JSON_INDENT} (the zoo's pre-commit)."]


def inference_config(bundle_dir: str | Path) -> Path | None:
    """The bundle's inference config as the zoo's CI picks it (the last of :data:`INFERENCE_CONFIGS` that exists)."""
    found = [Path(bundle_dir) / name for name in INFERENCE_CONFIGS if (Path(bundle_dir) / name).is_file()]
    return found[-1] if found else None


def check_files(bundle_dir: str | Path, preferred: bool = True) -> list[str]:
    """The zoo's necessary files, and with ``preferred`` its preferred ones (trained weights), plus an inference
    config, missing from a bundle folder."""
    bundle_dir = Path(bundle_dir)
    names = NECESSARY_FILES + (PREFERRED_FILES if preferred else ())
    missing = [f"{bundle_dir}: no {name}." for name in names if not (bundle_dir / name).is_file()]
    if inference_config(bundle_dir) is None:
        missing.append(f"{bundle_dir}: no inference config ({' or '.join(INFERENCE_CONFIGS)}).")
    return missing


def parse_large_files(text: str, where: str | Path) -> list[dict]:
    """The ``large_files`` entries of the text of a ``large_files.yml`` read from ``where``."""
    content = yaml.safe_load(text) or {}
    entries = content.get("large_files") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a 'large_files' list of {{path, url, hash_val, hash_type}} entries.")
    return entries


def large_file_entries(bundle_dir: str | Path) -> list[dict]:
    """The ``large_files`` entries of a bundle's ``large_files.yml`` (none when it has no such file)."""
    path = Path(bundle_dir) / "large_files.yml"
    return parse_large_files(path.read_text(), path) if path.is_file() else []


def check_large_files(bundle_dir: str | Path) -> list[str]:
    """Problems of ``large_files.yml``: each entry needs a relative ``path`` inside the bundle, a ``url`` (may be
    empty when the file is shipped), and a ``hash_type`` MONAI can check whenever a ``hash_val`` is given."""
    path = Path(bundle_dir) / "large_files.yml"
    try:
        entries = large_file_entries(bundle_dir)
    except (ValueError, yaml.YAMLError) as e:
        return [str(e)]
    problems = []
    for i, entry in enumerate(entries):
        where = f"{path}: large_files#{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or "url" not in entry:
            problems.append(f"{where}: needs 'path' and 'url'.")
            continue
        if Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts:
            problems.append(f"{where}: path {entry['path']!r} must stay inside the bundle.")
        if entry.get("hash_val") and entry.get("hash_type", "md5") not in HASH_TYPES:
            problems.append(f"{where}: hash_type {entry.get('hash_type')!r} is not one of {HASH_TYPES}.")
    return problems


def readme_headings(readme: str | Path) -> list[str]:
    """The Markdown headings of a readme, lower-case, without the ``#`` and bold marks."""
    return [line.strip("#* \t").lower() for line in Path(readme).read_text().splitlines() if line.startswith("#")]


def check_readme(readme: str | Path) -> list[str]:
    """The zoo readme template's sections missing from ``docs/README.md``."""
    headings = readme_headings(readme)
    return [f"{readme}: no '{alternatives[0]}' section (a heading starting with {' or '.join(map(repr, alternatives))})."
            for alternatives in README_SECTIONS if not any(h.startswith(a) for h in headings for a in alternatives)]


def check_bundle(bundle_dir: str | Path) -> list[str]:
    """Every problem the zoo's static checks (no weights, no code run) find in a bundle folder; empty when it conforms."""
    bundle_dir = Path(bundle_dir)
    missing = check_files(bundle_dir, preferred=False)
    if missing:
        return missing
    meta_file = bundle_dir / "configs" / "metadata.json"
    return check_version(meta_file) + validate_metadata(meta_file) + check_large_files(bundle_dir) + check_readme(bundle_dir / "docs" / "README.md")
