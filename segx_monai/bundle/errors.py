"""Bundle runs that fail say why in their last line, and command-line values that cannot work fail before any work.

``check_run()`` is the first step of every workflow's ``initialize`` in the bundles' configs. It checks the run's
overrides against the config files (unknown keys, values of the wrong type) and its ``*_dir`` folders; in a
``python -m monai.bundle`` process it also makes an uncaught exception end, after the usual traceback, with one line
``error: <root cause>``. Importing it changes nothing: only a bundle run's ``initialize`` calls it.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle import scripts as bundle_scripts
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ID_SEP = "#"


class ConfigError(ValueError):
    """A config key or value of a bundle run that cannot work; the message names the key and what was expected."""


def root_cause(exc: BaseException) -> BaseException:
    """The exception to show a user: along the chain of causes and contexts (MONAI and Ignite wrap errors in their
    own), the innermost one raised by this package, which names the file, row or key; else the innermost of all."""
    chain: list[BaseException] = []
    while exc is not None and not any(exc is e for e in chain):
        chain.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__
    ours = [e for e in chain if _raised_here(e)]
    return (ours or chain)[-1]


def _raised_here(exc: BaseException) -> bool:
    """Whether ``exc`` is this package's class or was raised by this package's code (its last traceback frame)."""
    if type(exc).__module__.split(".")[0] == PACKAGE_DIR.name:
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)


def error_line(exc: BaseException) -> str:
    """``error: <message of the root cause>`` on one line."""
    cause = root_cause(exc)
    message = str(cause).strip()
    if "\nOriginal Traceback" in message:  # re-raised from a DataLoader worker with the worker's chain as text
        chain = re.split(r"\n\n(?:The above exception|During handling)", message)
        ours = _raised_here(cause)  # this package's (outermost) message, else the innermost error as ``Type: message``
        line = (chain[-1] if ours else chain[0]).strip().splitlines()[-1]
        message = line.partition(": ")[2] if ours else line
    if isinstance(cause, KeyError) or not message:
        message = f"{type(cause).__name__}: {message}".rstrip(": ")
    return "error: " + " ".join(message.split())


def install_excepthook() -> None:
    """Make an uncaught exception print its traceback as before, then :func:`error_line` as the last line."""
    previous = sys.excepthook
    if getattr(previous, "ends_with_error_line", False):
        return

    def excepthook(exc_type, exc, tb) -> None:
        sys.stdout.flush()  # earlier output first, even when both streams go to one pipe
        previous(exc_type, exc, tb)
        if not issubclass(exc_type, KeyboardInterrupt):
            print(error_line(exc), file=sys.stderr, flush=True)

    excepthook.ends_with_error_line = True
    sys.excepthook = excepthook


def check_run() -> None:
    """Checks of the bundle run being initialized (call it from ``initialize``; outside one it does nothing):
    overrides that match no config key, override values of another type than the config's literal default, and
    ``*_dir`` keys that name an existing file. In a ``python -m monai.bundle`` process, installs the excepthook."""
    workflow = _frame_local(ConfigWorkflow.initialize, "self")
    if workflow is None:
        return
    if getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", None) == "monai.bundle.__main__":
        install_excepthook()  # the command line only: a Python program keeps its own excepthook
    # MONAI merges the overrides into the config without keeping them; `create_workflow`'s own parsed kwargs (command
    # line and args_file, as MONAI read them) are the one exact record, so they are read from its frame when it runs.
    config_file, args = _frame_local(bundle_scripts.create_workflow, "config_file"), _frame_local(bundle_scripts.create_workflow, "_args")
    if config_file is not None and args is not None:
        check_overrides(config_file, args)
    check_folders(workflow.parser)


MODULE_CONSTANT = re.compile(r"^\$[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")  # a config value that names a module's constant


def check_overrides(config_file: Any, args: dict) -> None:
    """Refuse override ids the config files do not define (naming the nearest) and values whose type differs from
    the default's when that is a number or boolean; ``args`` are the workflow's kwargs, overrides among them."""
    defaults = ConfigParser()
    defaults.read_config(config_file)
    workflow_args = set(inspect.signature(ConfigWorkflow.__init__).parameters)
    if args.get("tracking"):  # MONAI's experiment tracking adds its own settings (experiment_name, run_name, ...)
        workflow_args |= set(DEFAULT_MLFLOW_SETTINGS["configs"])
    for key, value in args.items():
        if key in workflow_args or key.startswith("_meta_"):
            continue
        id_ = key.replace("::", ID_SEP)
        parent = id_.rpartition(ID_SEP)[0]
        if id_ not in defaults and not (parent and parent in defaults and isinstance(defaults[parent], dict)):
            raise ConfigError(f"--{key}: no such config key; nearest: {', '.join(nearest_ids(id_, defaults)) or 'none similar'}.")
        if id_ in defaults:
            default = defaults[id_]
            if isinstance(default, str) and MODULE_CONSTANT.match(default):  # e.g. the split defaults: typed by their value
                default = defaults.get_parsed_content(id_)
            check_type(key, value, default)


def nearest_ids(id_: str, config: ConfigParser, n: int = 3) -> list[str]:
    """Config ids like ``id_``: top-level keys close in spelling, and nested ids ending in ``#<id_>`` with the key
    their value refers to (``handlers#5#q`` is ``@top_fraction``)."""
    leaf = id_.rpartition(ID_SEP)[2]
    found = []
    for nested, value in _nested_items(config.get()):
        if nested.rpartition(ID_SEP)[2] == leaf and ID_SEP in nested:
            found.append(nested)
            if isinstance(value, str) and value.startswith("@"):
                found.append(value[1:])
    top = [k for k in config.get() if isinstance(k, str)]
    return list(dict.fromkeys(found + difflib.get_close_matches(id_, top, n=n)))[: 2 * n]


def _nested_items(config: Any, prefix: str = ""):
    """``(id, value)`` of every item under ``config`` (dicts and lists), depth first."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        id_ = f"{prefix}{ID_SEP}{k}" if prefix else str(k)
        yield id_, v
        yield from _nested_items(v, id_)


def check_type(key: str, value: Any, default: Any) -> None:
    """Refuse ``value`` for a key whose default is a literal number or boolean when it is not one (references and
    expressions, ``@``/``$``/``%``, are left to the config); strings other than ``true``/``false`` pass for a
    boolean key, since some take a path too (``pretrained``)."""
    if isinstance(value, str) and value[:1] in "@$%" or value is None:
        return
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            raise ConfigError(f"--{key} {value}: expected True or False (Python literals; the command line reads {value!r} as text).")
    elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"--{key} {value!r}: expected an integer (default {default}).")
    elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"--{key} {value!r}: expected a number (default {default}).")


def check_folders(parser: ConfigParser) -> None:
    """Refuse a top-level ``*_dir`` key whose path, or a parent of it, is an existing file: it must be a folder."""
    for key in [k for k in parser.get() if isinstance(k, str) and k.endswith("_dir")]:
        path = parser.get_parsed_content(key)
        if not isinstance(path, (str, Path)):
            continue
        existing = next(p for p in (Path(path), *Path(path).parents) if p.exists() or p == Path(p.anchor or "."))
        if existing.exists() and not existing.is_dir():
            raise ConfigError(f"{key} {path}: {'it' if existing == Path(path) else existing} is a file; expected a folder.")


def _frame_local(function: Any, name: str) -> Any:
    """Local ``name`` of the innermost running call of ``function`` on the stack, or None."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is function.__code__:
            return frame.f_locals.get(name)
        frame = frame.f_back
    return None
