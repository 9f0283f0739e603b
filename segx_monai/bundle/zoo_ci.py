"""``segx-monai check``: the MONAI Model Zoo's CI steps on bundle folders, re-implemented to run here. From its
``ci/verify_bundle.py``: files, version and changelog, metadata schema, network shapes and TorchScript export of the
inference config alone, the properties of an inference workflow; from ``ci/get_bundle_requirements.py``: the
requirements it installs, resolved for the zoo's Python with ``--resolve``; from its pre-commit hooks: the JSON
format. Added: the weights must load strictly into the network (the zoo's export accepts a partial match). Each step
prints what it checked and its result; a step that is not run says so."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import segx_monai
from segx_monai.bundle import conformance
from segx_monai.bundle.errors import error_line

ZOO_PYTHON = "3.10"  # the Python of the zoo's CI runners (.github/workflows: setup-python 3.10)
NET_ID = "network_def"  # the network the zoo's CI checks and exports
WEIGHTS = "models/model.pt"
TORCHSCRIPT = "models/model.ts"  # loaded when a bundle ships one, as the zoo does
META_FILE = "configs/metadata.json"
LOGGING_FILE = "configs/logging.conf"
# the zoo's get_bundle_requirements.py leaves these, and then torch, to a bundle's own install script
SPECIAL_LIBS = ("xformers",)
PACKAGE_NAME = "segx-monai"
WHEEL_SOURCES = ("segx_monai", "pyproject.toml", "README.md", "LICENSE")  # what building the package's wheel reads
MESSAGE_CHARS = 600  # a failed step's message is cut to this length (torch lists every missing key)


class StepFailed(Exception):
    """A check step's problem(s), naming the file or key."""


def _fail_on(problems: list[str]) -> None:
    if problems:
        raise StepFailed(" ".join(problems))


def _rel(path: Path, bundle: Path) -> str:
    return path.relative_to(bundle).as_posix()


def _inference_config(bundle: Path) -> Path:
    config = conformance.inference_config(bundle)
    if config is None:
        raise StepFailed(f"{bundle}: no inference config ({' or '.join(conformance.INFERENCE_CONFIGS)}).")
    return config


def _weights(bundle: Path) -> Path:
    path = bundle / WEIGHTS
    if not path.is_file():
        raise StepFailed(f"{path}: missing (the trained classifier's weights under the zoo's name).")
    return path


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / META_FILE).read_text())


def step_files(bundle: Path) -> str:
    _fail_on(conformance.check_files(bundle))
    return ", ".join([*conformance.NECESSARY_FILES, *conformance.PREFERRED_FILES, _rel(_inference_config(bundle), bundle)])


def step_version(bundle: Path) -> str:
    _fail_on(conformance.check_version(bundle / META_FILE))
    return f"version {_metadata(bundle)['version']} has a changelog entry (not checked: that the zoo has no such version yet)"


def step_schema(bundle: Path) -> str:
    _fail_on(conformance.validate_metadata(bundle / META_FILE))
    return f"{META_FILE} against the kept copy of the schema it names ({conformance.SCHEMA_DIR.name}/), other networks' formats too"


def step_large_files(bundle: Path) -> str:
    _fail_on(conformance.check_large_files(bundle))
    return f"{len(conformance.large_file_entries(bundle))} entries checked; nothing downloaded"


def step_readme(bundle: Path) -> str:
    _fail_on(conformance.check_readme(bundle / "docs" / "README.md"))
    return f"docs/README.md has the {len(conformance.README_SECTIONS)} sections of the zoo's readme template"


def step_json_format(bundle: Path) -> str:
    files = sorted(p for folder in ("configs", "docs") for p in (bundle / folder).rglob("*.json"))
    _fail_on([problem for path in files for problem in conformance.json_format_problems(path)])
    return (f"{', '.join(_rel(p, bundle) for p in files) or 'no JSON files'} as pretty-format-json --no-sort-keys "
            f"--indent={conformance.JSON_INDENT} and end-of-file-fixer write them")


def step_net_in_out(bundle: Path) -> str:
    from monai.bundle import verify_net_in_out

    config = _inference_config(bundle)
    verify_net_in_out(net_id=NET_ID, meta_file=str(bundle / META_FILE), config_file=str(config), bundle_root=str(bundle))
    return f"verify_net_in_out {NET_ID} of {_rel(config, bundle)} alone, with {META_FILE}'s network_data_format"


def step_torchscript(bundle: Path) -> str:
    import torch
    from monai.bundle import ckpt_export

    config, weights = _inference_config(bundle), _weights(bundle)
    with tempfile.TemporaryDirectory() as tmp:  # the zoo writes models/verify_model.ts; this leaves the bundle as it was
        exported = Path(tmp) / "verify_model.ts"
        ckpt_export(net_id=NET_ID, filepath=str(exported), ckpt_file=str(weights), meta_file=str(bundle / META_FILE),
                    config_file=str(config), bundle_root=str(bundle))
        torch.jit.load(str(exported))
    shipped = bundle / TORCHSCRIPT
    if shipped.is_file():
        torch.jit.load(str(shipped))
    return (f"ckpt_export {NET_ID} of {_rel(config, bundle)} alone with {WEIGHTS} (no key_in_ckpt), the export reloaded"
            + (f"; {TORCHSCRIPT} loads" if shipped.is_file() else ""))


def step_strict_weights(bundle: Path) -> str:
    import torch
    from monai.bundle import ConfigParser

    config, weights = _inference_config(bundle), _weights(bundle)
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.read_meta(str(bundle / META_FILE))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content(NET_ID)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StepFailed(f"{weights}: not a plain state dict (parameter names to tensors); top-level keys: {list(state)[:5] if isinstance(state, Mapping) else type(state).__name__}.")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise StepFailed(f"{weights}: does not load strictly into {NET_ID} of {_rel(config, bundle)}: {' '.join(str(e).split())}") from e
    return f"{len(state)} tensors of {WEIGHTS} into {NET_ID} of {_rel(config, bundle)} with load_state_dict(strict=True)"


def step_infer_properties(bundle: Path) -> str:
    from monai.bundle import create_workflow

    config = _inference_config(bundle)
    workflow = create_workflow(workflow_type="inference", bundle_root=str(bundle), config_file=str(config),
                               logging_file=str(bundle / LOGGING_FILE), meta_file=str(bundle / META_FILE))
    missing = workflow.check_properties()
    if missing is None or missing:
        raise StepFailed(f"{config}: properties missing or under another config id: {missing}.")
    return (f"create_workflow(workflow_type='inference') of {_rel(config, bundle)} alone ran its initialize; "
            f"check_properties found every required MetaProperties and InferProperties item")


def allow_monai_rc() -> bool:
    """The zoo's ``ALLOW_MONAI_RC`` environment switch (its pre-merge scripts set it to true)."""
    return os.environ.get("ALLOW_MONAI_RC", "false").lower() in ("true", "1", "t", "y", "yes")


def _rc_upper_bound(version: str) -> str:
    """The zoo's upper bound of a MONAI release-candidate range: the third (or last) version part plus one, then
    trailing '.' and '0' characters stripped, as its script does (so 2.0.9 gives 2.0.1)."""
    parts = [int(p) for p in str(version).split(".")]
    parts += [0] * (3 - len(parts))
    parts[-1] += 1
    return ".".join(map(str, parts)).rstrip(".0")


def zoo_requirements(metadata: Mapping, monai_rc: bool = False) -> list[str]:
    """The lines of the requirements file the zoo's ``get_bundle_requirements.py`` writes for a ``metadata.json``."""
    lines = []
    if "monai_version" in metadata:
        version = metadata["monai_version"]
        lines.append(f"monai>={version}rc1,<{_rc_upper_bound(version)}" if monai_rc else f"monai=={version}")
    lines += [f"{package}=={metadata[key]}" for key, package in (("pytorch_version", "torch"), ("numpy_version", "numpy")) if key in metadata]
    for key in ("optional_packages_version", "required_packages_version"):
        for name, version in metadata.get(key, {}).items():
            if name not in SPECIAL_LIBS:
                lines.append(f"{name}=={version}")
            elif "pytorch_version" in metadata:
                lines = [line for line in lines if "torch" not in line]  # the zoo drops every line naming torch
    return lines


def step_requirements(bundle: Path, monai_rc: bool) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    metadata = _metadata(bundle)
    lines = zoo_requirements(metadata, monai_rc)
    problems = []
    for line in lines:
        try:
            Requirement(line)
        except InvalidRequirement as e:
            problems.append(f"{bundle / META_FILE}: {line!r} is not a requirement pip reads ({e}).")
    pinned = metadata.get("required_packages_version", {}).get(PACKAGE_NAME)
    if pinned != segx_monai.__version__:
        problems.append(f"{bundle / META_FILE}: required_packages_version#{PACKAGE_NAME} is {pinned!r}; expected this package's "
                        f"version {segx_monai.__version__!r}, which the configs run.")
    _fail_on(problems)
    return f"as get_bundle_requirements.py writes them (ALLOW_MONAI_RC={'true' if monai_rc else 'false'}): {', '.join(lines)}"


def package_source() -> Path:
    """The checkout this package runs from (the folder holding ``pyproject.toml`` next to ``segx_monai/``)."""
    root = Path(segx_monai.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{root}: no pyproject.toml: {PACKAGE_NAME} is installed, not run from a checkout; "
                                "pass --find-links with a folder holding its wheel.")
    return root


def build_wheel(source: Path, dest: Path) -> Path:
    """The wheel of the checkout ``source``, written to ``dest``: built offline with the installed setuptools (no build
    isolation) from a copy of what the build reads, so that nothing is written into the checkout."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in WHEEL_SOURCES:
            path = source / name
            if path.is_dir():
                shutil.copytree(path, Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif path.is_file():
                shutil.copy2(path, Path(tmp) / name)
            else:
                raise FileNotFoundError(f"{path}: missing; the wheel is built from {', '.join(WHEEL_SOURCES)}.")
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
                                 "-w", str(dest), tmp], capture_output=True, text=True, timeout=300)
    if result.returncode:
        raise RuntimeError(f"pip wheel {source} failed: {' '.join((result.stdout + result.stderr).split()[-80:])}")
    wheel = Path(dest) / f"segx_monai-{segx_monai.__version__}-py3-none-any.whl"
    if not wheel.is_file():
        raise RuntimeError(f"{dest}: no {wheel.name} after building {source} (found {sorted(p.name for p in Path(dest).glob('*.whl'))}).")
    return wheel


def resolve_requirements(lines: Sequence[str], find_links: Path, monai_rc: bool = False, python: str = ZOO_PYTHON) -> list[str]:
    """The distributions pip would install for ``lines`` on Python ``python`` (binary wheels only, for this platform),
    from pip's configured indexes and ``find_links``; raises naming pip's errors when they cannot be installed."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{line}\n" for line in lines))
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
                   "--python-version", python, "--target", str(Path(tmp) / "target"), "--find-links", str(find_links),
                   "--disable-pip-version-check", *(["--pre"] if monai_rc else []), "-r", str(requirements)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode:
        errors = [re.sub(r" \(from versions: [^)]*\)", "", line) for line in result.stderr.splitlines() if line.startswith("ERROR")]
        raise StepFailed(f"pip cannot install {', '.join(lines)} on Python {python}: {' '.join(errors) or result.stderr[-400:]}")
    would = re.search(r"^Would install (.*)$", result.stdout, re.MULTILINE)
    return would.group(1).split() if would else []


def step_resolve(bundle: Path, monai_rc: bool, find_links: Path) -> str:
    lines = zoo_requirements(_metadata(bundle), monai_rc)
    installs = resolve_requirements(lines, find_links, monai_rc)
    ours = [name for name in installs if name.startswith(f"{PACKAGE_NAME}-")]
    return f"pip install --dry-run for Python {ZOO_PYTHON} would install {len(installs)} distributions, {', '.join(ours) or f'no {PACKAGE_NAME}'} among them"


def bundle_steps(monai_rc: bool, find_links: Path | Exception | None) -> list[tuple[str, Callable[[Path], str] | None]]:
    """The steps in the order they run, each a name and a function of the bundle folder returning what it checked;
    ``None`` for the requirement resolution when ``find_links`` is ``None`` (not asked for)."""
    def resolve(bundle: Path) -> str:
        if isinstance(find_links, Exception):  # the wheel could not be built: every bundle's resolution fails on it
            raise StepFailed(f"no wheel of {PACKAGE_NAME} to resolve against: {find_links}")
        return step_resolve(bundle, monai_rc, find_links)

    return [
        ("files", step_files),
        ("version and changelog", step_version),
        ("metadata schema", step_schema),
        ("large_files.yml", step_large_files),
        ("readme sections", step_readme),
        ("json format", step_json_format),
        ("net in/out", step_net_in_out),
        ("torchscript export", step_torchscript),
        ("weights load strictly", step_strict_weights),
        ("inference properties", step_infer_properties),
        ("requirements", lambda bundle: step_requirements(bundle, monai_rc)),
        (f"requirements resolve (Python {ZOO_PYTHON})", None if find_links is None else resolve),
    ]


def run_steps(bundle: Path, steps: list[tuple[str, Callable[[Path], str] | None]]) -> list[str]:
    """Run and print each step on ``bundle``; the names of those that failed."""
    print(f"{bundle}:", flush=True)
    failed = []
    for name, step in steps:
        if step is None:
            print(f"  --    {name}: not run (it needs PyPI): pass --resolve", flush=True)
            continue
        try:
            detail, status = step(bundle), "ok"
        except Exception as e:  # reported as the step's failure, with the message naming the file or key
            detail = str(e) if isinstance(e, StepFailed) else error_line(e).removeprefix("error: ")
            status = "FAIL"
            failed.append(name)
        print(f"  {status:5s} {name}: {detail[:MESSAGE_CHARS]}", flush=True)
    return failed


def main(argv: Sequence[str] | None = None) -> None:
    """``segx-monai check [--resolve] <bundle> ...``: the zoo's CI steps on each bundle; exit 1 if any fails, the
    last line naming the failed steps."""
    parser = argparse.ArgumentParser(prog="segx-monai check", description="Run the MONAI Model Zoo's CI steps on bundle folders.")
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders, e.g. bundles/ham_segx")
    parser.add_argument("--resolve", action="store_true",
                        help=f"also resolve the generated requirements for Python {ZOO_PYTHON} with pip (needs PyPI), "
                             f"{PACKAGE_NAME} from a wheel built from this checkout")
    parser.add_argument("--find-links", type=Path, help=f"with --resolve: a folder holding the {PACKAGE_NAME} wheel, instead of building one")
    args = parser.parse_args(argv)
    monai_rc = allow_monai_rc()
    with tempfile.TemporaryDirectory() as tmp:
        find_links: Path | Exception | None = None
        if args.resolve:
            find_links = args.find_links
            if find_links is None:
                try:
                    source = package_source()
                    find_links = build_wheel(source, Path(tmp)).parent
                    print(f"{PACKAGE_NAME} for the requirement resolution: a wheel built from {source}", flush=True)
                except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:  # reported by each resolution step
                    find_links = e
            else:
                print(f"{PACKAGE_NAME} for the requirement resolution: the wheels in {find_links}", flush=True)
        steps = bundle_steps(monai_rc, find_links)
        failures = {bundle: run_steps(bundle, steps) for bundle in args.bundles}
    failed = [f"{bundle}: {', '.join(names)}" for bundle, names in failures.items() if names]
    if failed:
        print(f"check failed: {'; '.join(failed)}")
        raise SystemExit(1)
    skipped = "" if args.resolve else "; not run: requirements resolve (pass --resolve)"
    print(f"check passed: {', '.join(map(str, args.bundles))}: {sum(s is not None for _, s in steps)} steps each{skipped}")
