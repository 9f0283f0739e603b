#!/usr/bin/env bash
# The built-in demo, on synthetic data in the real data sets' layouts: generate the data and train the classifier and
# the segmenter (scripts/prepare.sh), evaluate both on the test fold, interpret the classifier with SegX/SegU (Grad-CAM
# and GradientSHAP, each after calibrating its review threshold on the validation fold), run the standalone inference config from the bundle's own folder, and print where the reports are. Usage: scripts/demo.sh [ham|chest|all]. Re-running resumes finished work.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

bundle_demo() {  # bundle gradient-shap-draws grad-cam-layer
  local bundle=$1 shap_samples=$2 gradcam_layer=$3
  local root=bundles/$bundle
  local configs=$root/configs
  bash scripts/prepare.sh "$bundle"
  for network in classifier segmenter; do
    python -m monai.bundle run evaluating --bundle_root "$root" \
      --config_file "['$configs/inference.yaml','$configs/train_$network.yaml','$configs/evaluate.yaml']"
  done
  for explainer in gradcam gradient_shap; do  # the review threshold on the validation fold, then the test fold's report
    python -m monai.bundle run calibrating --bundle_root "$root" \
      --config_file "['$configs/inference.yaml','$configs/interpret.yaml','$configs/calibrate.yaml']" \
      --explainer_name "$explainer" --shap_samples "$shap_samples" --gradcam_layer "$gradcam_layer"
    python -m monai.bundle run interpreting --bundle_root "$root" --config_file "['$configs/inference.yaml','$configs/interpret.yaml']" \
      --explainer_name "$explainer" --shap_samples "$shap_samples" --gradcam_layer "$gradcam_layer"
  done
  (cd "$root" && python -m monai.bundle run inferring --config_file configs/inference.yaml --gradcam_layer "$gradcam_layer")  # the Model Zoo's way
}

# GradientSHAP draws per explanation: the published 50 for the skin bundle; the chest bundle explains every predicted
# finding (1.3 per image) at twice the skin demo's size, four times the cost per draw: its demo takes 10 (run.json says so)
# Grad-CAM on the block whose map is 8x8 at the demo's size (64 px skin, 128 px chest): the final one would be 2x2 / 4x4
ham() { bundle_demo ham_segx 50 features.denseblock2; }
chest() { bundle_demo chestx_segx 10 features.denseblock3; }

case "${1:-ham}" in
  ham) ham ;;
  chest) chest ;;
  all) ham && chest ;;
  *) echo "usage: $0 [ham|chest|all]" >&2; exit 2 ;;
esac
echo
echo "Demo finished. Test metrics: bundles/*/runs/*/eval/metrics.csv; SegX reports:"
ls -1 "$PWD"/bundles/*/interpret/*/report.html
