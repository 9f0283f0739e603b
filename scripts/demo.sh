#!/usr/bin/env bash
# The built-in demo, on synthetic data in the real data sets' layouts: generate the data and train the classifier and
# the segmenter (scripts/prepare.sh), evaluate both on the test fold, interpret the classifier with SegX/SegU (Grad-CAM
# and GradientSHAP, each after calibrating its review threshold on the validation fold), run the standalone inference
# config from the bundle's own folder, and print where the reports are. Re-running resumes finished work.
# Beside the demo data it also writes a small reversed test set (data/reversed: another seed, every artefact or
# confounder disagreeing with the class), for evaluating and interpreting the trained models where the shortcut breaks
# (--test_dataset_dir, see the bundles' docs/README.md); the demo itself does not run them.
# Usage: [CLASSIFIER=patchnet] [COUNTERFACTUAL=1] scripts/demo.sh [ham|chest|all]. CLASSIFIER (default densenet121) other than DenseNet121:
# also train that classifier on the same split and compare its explanations with DenseNet121's Grad-CAM, Grad-CAM++ and
# Eigen-CAM, raw and with SegX (interpret/comparison.html). COUNTERFACTUAL=1: also train COIN's counterfactual generator
# against DenseNet121 and compare its explanations with Grad-CAM's and GradientSHAP's (the same table).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
CLASSIFIER=${CLASSIFIER:-densenet121}
COUNTERFACTUAL=${COUNTERFACTUAL:-0}

explain() {  # bundle-root explainer [overrides...]: the review threshold on the validation fold, then the test fold's report
  local root=$1 explainer=$2
  shift 2
  local configs=$root/configs
  python -m monai.bundle run calibrating --bundle_root "$root" \
    --config_file "['$configs/inference.yaml','$configs/interpret.yaml','$configs/calibrate.yaml']" --explainer_name "$explainer" "$@"
  python -m monai.bundle run interpreting --bundle_root "$root" \
    --config_file "['$configs/inference.yaml','$configs/interpret.yaml']" --explainer_name "$explainer" "$@"
}

evaluate() {  # bundle-root network [overrides...]: test-fold metrics of a trained network
  local root=$1 network=$2
  shift 2
  python -m monai.bundle run evaluating --bundle_root "$root" \
    --config_file "['$root/configs/inference.yaml','$root/configs/train_$network.yaml','$root/configs/evaluate.yaml']" "$@"
}

reversed_set() {  # bundle generator [generator options...]: a small reversed test set beside the demo data, once
  local data=bundles/$1/data/reversed generator=$2
  shift 2
  if [ ! -d "$data" ]; then
    rm -rf "$data.partial"
    python -m "$generator" --out "$data.partial" --reversed --seed 1 "$@"
    mv "$data.partial" "$data"
  fi
}

bundle_demo() {  # bundle gradient-shap-draws
  local bundle=$1 shap_samples=$2
  local root=bundles/$bundle
  bash scripts/prepare.sh "$bundle"
  evaluate "$root" classifier
  evaluate "$root" segmenter
  explain "$root" gradcam
  explain "$root" gradient_shap --shap_samples "$shap_samples"
  (cd "$root" && python -m monai.bundle run inferring --config_file configs/inference.yaml)  # the Model Zoo's way
  [ "$CLASSIFIER" = densenet121 ] || compare "$bundle" "$CLASSIFIER"
  [ "$COUNTERFACTUAL" = 0 ] || counterfactual "$bundle"
  if [ "$CLASSIFIER" != densenet121 ] || [ "$COUNTERFACTUAL" != 0 ]; then python -m segx_monai.report.comparison "$root"; fi
}

compare() {  # bundle classifier: another classifier trained beside DenseNet121 on the same split, the other CAMs of
  # DenseNet121 and the other classifier's own explanations (a PatchNet's patch logits, raw and scaled; else Grad-CAM),
  # for one table of them all (interpret/comparison.html)
  local bundle=$1 classifier=$2
  local root=bundles/$bundle
  explain "$root" gradcampp
  explain "$root" eigencam
  bash scripts/prepare.sh "$bundle" --classifier_name "$classifier"
  evaluate "$root" classifier --classifier_name "$classifier"
  if [ "$classifier" = patchnet ]; then
    for patch_map in raw scaled; do explain "$root" patch_logits --classifier_name patchnet --patch_map "$patch_map"; done
  else
    explain "$root" gradcam --classifier_name "$classifier"
  fi
}

counterfactual() {  # bundle: COIN's generator trained against the frozen DenseNet121, then its explanations
  local root=bundles/$1
  python -m monai.bundle run training --bundle_root "$root" \
    --config_file "['$root/configs/inference.yaml','$root/configs/train_counterfactual.yaml']"
  explain "$root" counterfactual
}

# GradientSHAP draws per explanation: the published 50 for the skin bundle; the chest bundle explains every predicted
# finding (1.3 per image) at twice the skin demo's size, four times the cost per draw: its demo takes 10 (run.json says so)
# Grad-CAM explains the bundles' default layer, whose map is 8x8 at their default size (64 px skin, 128 px chest)
# the reversed sets are as large as the demo sets' test folds
ham() { reversed_set ham_segx segx_monai.data.synthetic_derm --n-images 140 && bundle_demo ham_segx 50; }
chest() { reversed_set chestx_segx segx_monai.data.synthetic_chest --n-test 80 --no-dicom && bundle_demo chestx_segx 10; }

case "${1:-ham}" in
  ham) ham ;;
  chest) chest ;;
  all) ham && chest ;;
  *) echo "usage: $0 [ham|chest|all]" >&2; exit 2 ;;
esac
echo
echo "Demo finished. Test metrics: bundles/*/runs/*/eval/metrics.csv; SegX reports:"
ls -1 "$PWD"/bundles/*/interpret/*/report.html
echo "Reversed test sets (artefacts against the training association): bundles/*/data/reversed; to evaluate on one,"
echo "add --test_dataset_dir bundles/<bundle>/data/reversed --eval_dir <folder> (see the bundle's docs/README.md)"
