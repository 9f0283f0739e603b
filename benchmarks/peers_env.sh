#!/usr/bin/env bash
# Install pytorch-grad-cam (PyPI grad-cam) for benchmarks/bench_peers.py, or reuse it when installed, and print the
# python that runs it.
#
# pytorch-grad-cam imports torchvision, of which the registry has CUDA builds only (about 8 GB), so it stays out of this
# package's environment: it runs in the MONAI Label one (scripts/monailabel_env.sh, which has torch, torchvision, monai,
# scipy, scikit-learn and matplotlib), with grad-cam and the two imports it adds (ttach; cv2, headless, from a release
# that takes numpy 1) installed without dependencies into a folder of their own,
# ${SEGX_GRADCAM_DIR:-$HOME/.cache/segx-monai/grad-cam}, leaving both environments untouched. The printed python is a
# wrapper in that folder: the MONAI Label environment's interpreter with the folder on its path.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${SEGX_GRADCAM_DIR:-$HOME/.cache/segx-monai/grad-cam}
pins=(grad-cam==1.5.7 ttach==0.0.3 opencv-python-headless==4.10.0.84)
venv=$("$repo/scripts/monailabel_env.sh")
want=$(printf '%s\n' "$venv" "${pins[@]}" | sha256sum | cut -c1-16)

if [[ "$(cat "$target/.segx-requirements" 2>/dev/null)" != "$want" ]]; then
  echo "peers_env: installing ${pins[*]} into $target" >&2
  rm -rf "$target"
  "$venv/bin/pip" install -q --no-deps --target "$target/site" "${pins[@]}" >&2
  printf '#!/usr/bin/env bash\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' "$target/site" "$venv/bin/python" >"$target/python"
  chmod +x "$target/python"
  "$target/python" -c "import pytorch_grad_cam" >&2
  echo "$want" >"$target/.segx-requirements"
fi
echo "$target/python"
