#!/usr/bin/env bash
# Create, or reuse when already built, the virtual environment MONAI Label runs in, and print its path.
#
# MONAI Label needs torchvision, and the package registry only has CUDA builds of torch/torchvision, so it gets its own
# environment (about 8 GB; the CUDA build runs on CPU) outside the clone, where a fresh clone on the same machine finds
# it: ${SEGX_MONAILABEL_VENV:-$HOME/.cache/segx-monai/monailabel-venv}. MONAI Label's DICOM stack breaks with pydicom 3,
# hence the pins below. This package is installed into it, without dependencies, on every call (a few seconds), so the
# server always runs the code of the clone that starts it; its dependencies come from pyproject.toml.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${SEGX_MONAILABEL_VENV:-$HOME/.cache/segx-monai/monailabel-venv}
python=${PYTHON:-python3}
# MONAI Label 0.8.5 needs pydicom 2 (pydicom-seg imports a module pydicom 3 removed), numpy 1 (numpymaxflow,
# pydicom-seg) and jsonschema 3 (pydicom-seg); the DICOM decoder plugins this package pins for pydicom 3 need numpy 2,
# so here they are the pydicom 2 ones (RLE by pydicom's own decoder: pylibjpeg-rle 1 has no wheel), and jsonschema (only the bundle conformance check uses it) is MONAI Label's.
# dicomweb-client: MONAI Label pins 0.59.1, which meets this package's >=0.59. highdicom (DICOM results) needs pydicom 3: left
# out, the MONAI Label tasks do not write DICOM results. pylibjpeg 1 imports pkg_resources, gone from setuptools 81. torch/torchvision: the registry's pair (CUDA builds, they run on CPU).
pins=(monailabel==0.8.5 torch==2.14.1 torchvision==0.29.2 "pydicom<3" "pynetdicom<3" dicomweb-client==0.59.1
  "pylibjpeg<2" "pylibjpeg-libjpeg<2" "pylibjpeg-openjpeg<2" "setuptools<81")
mapfile -t deps < <("$python" -c 'import re, sys, tomllib
for dep in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    if not re.match(r"(pydicom|pylibjpeg|pyjpegls|jsonschema|dicomweb-client|highdicom)\b", dep): print(dep)' "$repo/pyproject.toml")
want=$(printf '%s\n' "${pins[@]}" "${deps[@]}" | sha256sum | cut -c1-16)

if [[ "$(cat "$venv/.segx-requirements" 2>/dev/null)" != "$want" ]]; then
  echo "monailabel_env: building $venv (about 8 GB, a few minutes)" >&2
  start=$SECONDS
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --prefer-binary "${pins[@]}" "${deps[@]}" >&2
  echo "$want" >"$venv/.segx-requirements"
  echo "monailabel_env: built in $((SECONDS - start)) s" >&2
fi
# dcmqi's itkimage2segimage, which MONAI Label downloads from GitHub when it serves a DICOMweb server unless found on PATH
[ -x "$venv/bin/itkimage2segimage" ] || "$venv/bin/pip" install -q dcmqi==1.5.7 >&2
"$venv/bin/pip" install -q --no-deps --force-reinstall "$repo" >&2
echo "$venv"
