#!/usr/bin/env bash
# The built-in demo, on synthetic data in the real data sets' layouts: generate the data, train the classifier and
# the segmenter, evaluate both on the test fold, interpret the classifier with SegX/SegU (Grad-CAM and GradientSHAP)
# and print where the reports are. Usage: scripts/demo.sh [ham|chest|all]. Re-running resumes finished work.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

# demo-sized training: the segmenters and the skin classifier learn the synthetic sets in a few epochs, the chest
# classifier (six findings, 240 images) needs its config's 15 (the configs' defaults suit the real data)
DEMO_EPOCHS=${DEMO_EPOCHS:-5}

bundle_demo() {  # bundle generator classifier-epochs gradient-shap-draws
  local bundle=bundles/$1 generator=$2 classifier_epochs=$3 shap_samples=$4
  local configs=$bundle/configs
  [ -d "$bundle/data/synthetic" ] || segx-monai "$generator" --out "$bundle/data/synthetic"
  for network in classifier segmenter; do
    local epochs=$DEMO_EPOCHS; [ "$network" = classifier ] && epochs=$classifier_epochs
    python -m monai.bundle run training --config_file "$configs/train_$network.yaml" --max_epochs "$epochs"
    python -m monai.bundle run evaluating --config_file "['$configs/train_$network.yaml','$configs/evaluate.yaml']"
  done
  for explainer in gradcam gradient_shap; do
    python -m monai.bundle run interpreting --config_file "['$configs/train_classifier.yaml','$configs/interpret.yaml']" \
      --explainer_name "$explainer" --shap_samples "$shap_samples"
  done
}

# GradientSHAP draws per explanation: the published 50 for the skin bundle; the chest bundle explains every predicted
# finding (1.3 per image) at twice the skin demo's size, four times the cost per draw: its demo takes 10 (run.json says so)
ham() { bundle_demo ham_segx generate-ham "$DEMO_EPOCHS" 50; }
chest() { bundle_demo chestx_segx generate-chest 15 10; }

case "${1:-ham}" in
  ham) ham ;;
  chest) chest ;;
  all) ham && chest ;;
  *) echo "usage: $0 [ham|chest|all]" >&2; exit 2 ;;
esac
echo
echo "Demo finished. Test metrics: bundles/*/runs/*/eval/metrics.csv; SegX reports:"
ls -1 "$PWD"/bundles/*/interpret/*/report.html
