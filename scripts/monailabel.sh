#!/usr/bin/env bash
# MONAI Label serving the segx-monai bundles (monailabel_app/) on 127.0.0.1:${SEGX_MONAILABEL_PORT:-8000}.
#
#   bash scripts/monailabel.sh
#       from a fresh clone: set up .venv (make setup) and MONAI Label's own environment (scripts/monailabel_env.sh),
#       prepare the demo bundles with scripts/prepare.sh as `make demo` does (generate the data if missing, train or
#       resume, DEMO_EPOCHS epochs), calibrate their Grad-CAM review threshold on the validation fold unless `make demo`
#       did (models/review_gradcam.json, which the SegX tasks read), write demo studies (dermoscopy JPEG, chest X-ray
#       PNG and DICOM, some labelled) to data/monailabel_studies, and serve them.
#   bash scripts/monailabel.sh serve STUDIES [monailabel start_server options, e.g. --conf ham_segx_overrides '{...}']
#       serve a studies folder, or a DICOMweb server's URL, with the bundles as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

serve() {  # studies [start_server options...]
  local studies=$1 venv
  shift
  venv=$(bash scripts/monailabel_env.sh)
  # not the `monailabel` launcher: it runs whichever `python` comes first on PATH and splits arguments at spaces
  # ($* unquoted), which breaks JSON --conf values
  export PATH="$venv/bin:$PATH"
  # .dcm and .jpeg studies are not listed by MONAI Label's default extensions
  export MONAI_LABEL_DATASTORE_FILE_EXT='["*.png","*.jpg","*.jpeg","*.dcm"]'
  # DICOMweb series stay DICOM files: the bundles read them (VOI LUT, MONOCHROME1) instead of a NIfTI conversion
  export MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI=${MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI:-false}
  # the radiographs' series (MONAI Label lists only CT ones by default), not the results stored beside them
  export MONAI_LABEL_DICOMWEB_SEARCH_FILTER=${MONAI_LABEL_DICOMWEB_SEARCH_FILTER:-'{"Modality": "CR,DX"}'}
  exec "$venv/bin/python" -m monailabel.main start_server --app monailabel_app --studies "$studies" --host 127.0.0.1 \
    --port "${SEGX_MONAILABEL_PORT:-8000}" "$@"
}

demo() {
  make setup
  local python=.venv/bin/python studies=data/monailabel_studies
  local -a bundle_args=()
  for bundle in ham_segx chestx_segx; do
    PYTHON=$python bash scripts/prepare.sh "$bundle"
    local root=bundles/$bundle
    [ -f "$root/models/review_gradcam.json" ] || $python -m monai.bundle run calibrating --bundle_root "$root" \
      --config_file "['$root/configs/inference.yaml','$root/configs/interpret.yaml','$root/configs/calibrate.yaml']" --explainer_name gradcam
    bundle_args+=(--bundle "$bundle" "$root" "$root/data/synthetic")
  done
  [ -f "$studies/segx_studies.json" ] || $python monailabel_app/demo_studies.py --out "$studies" "${bundle_args[@]}"
  serve "$studies" --conf ham_segx_train_studies 'ham_*' --conf chestx_segx_train_studies 'chest_*'
}

case "${1:-demo}" in
  demo) demo ;;
  serve) shift; [ $# -ge 1 ] || { echo "usage: $0 serve STUDIES [start_server options]" >&2; exit 2; }; serve "$@" ;;
  *) echo "usage: $0 [serve STUDIES [start_server options]]" >&2; exit 2 ;;
esac
