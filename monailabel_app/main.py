"""MONAI Label app serving the segx-monai bundles to viewers (OHIF, 3D Slicer): region segmentation, SegX maps with
SegU certainty and review flag, and segmenter training from the datastore's labels.

Models, per bundle ``<b>`` (``ham_segx``: dermoscopy, ``chestx_segx``: chest X-ray):

- ``<b>_segmenter``: infer task, the lesion or lung mask (label 1); train task, fine-tunes that segmenter;
- ``<b>_segx``: infer task, the SegX map (label 1) and a JSON result with the prediction, class probabilities, SegU
  scores and review flag.

Conf (``--conf key value``): ``bundles`` (default ``ham_segx,chestx_segx``); ``<b>_overrides``, a JSON object of
bundle config overrides, e.g. ``{"bundle_root": "/models/ham", "image_size": 224}`` (``bundle_root`` defaults to
``bundles/<b>`` of this repository); ``<b>_train_studies``, the file-name pattern of the studies whose final labels
train ``<b>_segmenter`` (default ``*``). See scripts/monailabel.sh and the README.

Studies are the datastore's only: a study given as a server path (absolute, with ``..``), or one whose file lies outside
the datastore's folder (a symlink to elsewhere), is refused with HTTP 403; an upload, which MONAI Label passes on as a
temporary file outside the datastore, as well.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from segx_tasks import REGIONS, Bundle, RegionTask, SegmenterTrainTask, SegXTask, StudyReadError, datastore_dir
from study_paths import StudyRefused, check_study_id, inside_datastore

logger = logging.getLogger(__name__)

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


class SegXApp(MONAILabelApp):
    """The app: one segmenter and one SegX infer task, and one segmenter train task, per configured bundle."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        names = [name.strip() for name in conf.get("bundles", ",".join(REGIONS)).split(",") if name.strip()]
        self.bundles = [Bundle.from_conf(name, BUNDLES_DIR, conf) for name in names]
        for bundle in self.bundles:
            logger.info("bundle %s: configs %s, overrides %s", bundle.name, bundle.configs_dir, bundle.overrides)
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="segx-monai",
            description="Lesion/lung segmentation, SegX explanations and SegU certainty from the segx-monai bundles",
            version="0.1.0",
        )

    def init_infers(self) -> dict:
        infers, folder = {}, datastore_dir(self.datastore())
        for bundle in self.bundles:
            infers[f"{bundle.name}_segmenter"] = RegionTask(bundle, folder)
            infers[f"{bundle.name}_segx"] = SegXTask(bundle, folder)
        return infers

    def init_trainers(self) -> dict:
        return {f"{bundle.name}_segmenter": SegmenterTrainTask(bundle, self.conf) for bundle in self.bundles}

    def infer(self, request: dict, datastore=None) -> dict:
        """MONAI Label's inference, with an HTTP error that says what went wrong instead of a bare 500: 404 for an
        unknown model or study, 403 for a study outside the datastore, 422 for a study the bundle cannot read, 500 with
        the cause otherwise."""
        model, image = request.get("model"), request.get("image")
        if model not in self._infers:
            raise HTTPException(404, f"unknown model {model!r}; this server has: {', '.join(sorted(self._infers))}")
        datastore = datastore or self.datastore()
        try:
            if isinstance(image, str):
                check_study_id(image, self.studies)
                if not (uri := datastore.get_image_uri(image)):
                    raise HTTPException(404, f"unknown study {image!r}: not in the datastore {self.studies}")
                inside_datastore(image, uri, datastore_dir(datastore))
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except StudyRefused as err:
            raise HTTPException(403, str(err)) from err
        except StudyReadError as err:
            raise HTTPException(422, str(err)) from err
        except Exception as err:  # anything else is the server's fault; say which model and study
            logger.exception("%s failed on %s", model, request.get("image"))
            raise HTTPException(500, f"{model} failed on {request.get('image')!r}: {type(err).__name__}: {err}") from err
