"""``segx-monai`` command: the built-in data generators, the report, the search, and the Model Zoo checks and
archives of a bundle, next to ``python -m monai.bundle``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module

COMMANDS = {
    "generate-ham": ("segx_monai.data.synthetic_derm", "write the synthetic dermoscopy set in the HAM10000 layout"),
    "generate-chest": ("segx_monai.data.synthetic_chest", "write the synthetic chest X-ray set in the ChestX-Det10 layout"),
    "report": ("segx_monai.report", "rebuild report.html of an interpretation folder"),
    "search": ("segx_monai.search.cli", "hyper-parameter search of a bundle train config on the validation fold"),
    "check": ("segx_monai.bundle.zoo_ci", "run the MONAI Model Zoo's CI steps on bundle folders (--resolve: its requirements too)"),
    "pack": ("segx_monai.bundle.archive:pack_main", "pack a trained bundle into a zip with the sha256 of every file"),
    "unpack": ("segx_monai.bundle.archive:unpack_main", "unpack a bundle archive, checking every file (its configs run as code: trust the source)"),
    "verify": ("segx_monai.bundle.archive:verify_main", "check an archive or unpacked bundle against its sha256 manifest"),
}


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``segx-monai <command> [args]`` to the command's ``module:function`` (default function ``main``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:16s} {help_}" for name, (_, help_) in COMMANDS.items())
        print(f"usage: segx-monai <command> [--help]\n\ncommands:\n{lines}")
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    from segx_monai.bundle.errors import install_excepthook

    install_excepthook()  # an error ends with one line naming its cause, as a failed bundle run does
    module, _, function = COMMANDS[argv[0]][0].partition(":")
    getattr(import_module(module), function or "main")(argv[1:])


if __name__ == "__main__":
    main()
