#!/usr/bin/env bash
# Make a bundle ready to run on its built-in data: generate the synthetic set if it is missing (into a temporary
# folder renamed when whole, so a killed generation is never taken for a data set) and train the classifier and the
# segmenter (resumable: a finished training returns at once). Shared by scripts/demo.sh and scripts/monailabel.sh.
# Usage: scripts/prepare.sh ham_segx|chestx_segx [classifier overrides, e.g. --classifier_name patchnet]
#   (PYTHON: the environment's python; DEMO_EPOCHS: demo epochs)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
bundle=${1:?usage: $0 ham_segx|chestx_segx [classifier overrides]}
shift
# demo-sized training: the segmenters and the skin classifier learn the synthetic sets in a few epochs, the chest
# classifier (six findings, 240 images) needs 15 (the configs' defaults suit the real data)
epochs=${DEMO_EPOCHS:-5}
case "$bundle" in
  ham_segx) generator=segx_monai.data.synthetic_derm classifier_epochs=$epochs ;;
  chestx_segx) generator=segx_monai.data.synthetic_chest classifier_epochs=15 ;;
  *) echo "prepare.sh: unknown bundle '$bundle'; expected ham_segx or chestx_segx" >&2; exit 2 ;;
esac
root=bundles/$bundle data=bundles/$bundle/data/synthetic
if [ ! -d "$data" ]; then
  rm -rf "$data.partial"
  "$python" -m "$generator" --out "$data.partial"
  mv "$data.partial" "$data"
fi
for network in classifier segmenter; do
  n=$epochs overrides=()
  [ "$network" = classifier ] && n=$classifier_epochs overrides=("$@")
  "$python" -m monai.bundle run training --config_file "['$root/configs/inference.yaml','$root/configs/train_$network.yaml']" \
    --bundle_root "$root" --max_epochs "$n" "${overrides[@]}"
done
