"""The maths imports with torch and MONAI alone: nothing of the DICOM, data, engine or report stacks comes with it."""

from __future__ import annotations

import json
import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    """Top-level modules (and segx_monai's submodules) that ``statement`` imports beyond ``import torch, monai``."""
    code = (
        "import sys, json, torch, monai; before = set(sys.modules); " + statement + "; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    new = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    return {m if m.startswith("segx_monai") else m.split(".")[0] for m in new}


def test_core_and_metrics_need_only_torch_and_monai():
    new = imported_after("import segx_monai.core, segx_monai.metrics")
    assert {m.split(".")[0] for m in new} == {"segx_monai"}
    assert {m for m in new if m.count(".") == 1} == {"segx_monai.core", "segx_monai.metrics"}


def test_subpackages_load_on_first_use():
    new = imported_after("import segx_monai; segx_monai.data.datalist")
    assert "segx_monai.data" in new and "segx_monai.handlers" not in new
