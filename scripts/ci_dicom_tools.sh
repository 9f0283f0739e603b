#!/usr/bin/env bash
# The DICOM validator the result tests run on every object they write (dciodvfy, Debian's dicom3tools): installed as
# root when missing. Run before the tests:  bash scripts/ci_dicom_tools.sh
set -euo pipefail

if ! command -v dciodvfy >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >&2
fi
command -v dciodvfy >&2
