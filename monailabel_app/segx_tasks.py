"""MONAI Label tasks built from the segx-monai bundles' own configs: region segmentation, SegX/SegU, segmenter training.

Nothing here re-implements the bundles: pre-processing, networks, checkpoints, the SegX and SegU handlers and the
training workflow are the ones the bundle configs define, parsed with MONAI's ``ConfigParser``. What is added is the
MONAI Label side: the label image at the study's size, a JSON result, studies that are DICOMweb series folders, errors
that name the study, and studies read only from the datastore's own folder.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Lambdad, MapTransform
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask

from segx_monai.core.maps import resize_maps
from segx_monai.handlers.contract import CERTAINTY_SCORES, Columns, OutputKeys
from segx_monai.handlers.segx import ExplainPredictions, SegUScores
from segx_monai.io.dicom import is_dicom
from study_paths import StudyRefused, inside_datastore

# the clinical region each bundle's segmenter finds (channel 1 of its background/region softmax)
REGIONS = {"ham_segx": "lesion", "chestx_segx": "lungs"}
REGION_CHANNEL = 1
INFERENCE_CONFIG = "inference.yaml"  # every bundle's standalone base; the train configs compose after it
SEGMENTER_CONFIG = "train_segmenter.yaml"
# the handlers of the bundle's inference evaluator that work in memory (the others write files: CSV, PNG, DICOM)
IN_MEMORY_HANDLERS = "$@model_loaders + @explanation_handlers"
# label images as 8-bit PNG whatever the study's format (MONAI Label would otherwise write the study's own format)
LABEL_OUTPUT = {"result_extension": ".png", "result_dtype": "uint8"}


class StudyReadError(ValueError):
    """A study could not be read as the bundle's input image; the message names the study and the cause."""


@dataclass(frozen=True)
class Bundle:
    """One bundle as the app serves it: its configs folder, the config overrides (``bundle_root``, where its models
    are, always among them) and the studies of the datastore its segmenter trains on (a file-name pattern)."""

    name: str
    configs_dir: Path
    overrides: dict
    train_studies: str = "*"

    @classmethod
    def from_conf(cls, name: str, bundles_dir: Path, conf: dict[str, str]) -> Bundle:
        """The bundle ``name`` of ``bundles_dir`` with ``--conf <name>_overrides '<JSON object>'`` and
        ``--conf <name>_train_studies '<pattern>'`` from the app's conf."""
        if name not in REGIONS:
            raise ValueError(f"--conf bundles: unknown bundle {name!r}; this app serves {', '.join(REGIONS)}")
        key = f"{name}_overrides"
        try:
            overrides = json.loads(conf.get(key, "{}"))
        except json.JSONDecodeError as err:
            raise ValueError(f"--conf {key}: not JSON ({err})") from err
        if not isinstance(overrides, dict):
            raise ValueError(f"--conf {key}: expected a JSON object of config overrides, got {overrides!r}")
        root = Path(overrides.get("bundle_root", bundles_dir / name)).resolve()
        return cls(name, bundles_dir / name / "configs", {**overrides, "bundle_root": str(root)},
                   conf.get(f"{name}_train_studies", "*"))

    @property
    def region(self) -> str:
        return REGIONS[self.name]

    @property
    def root(self) -> Path:
        return Path(self.overrides["bundle_root"])

    def parser(self, configs: tuple[str, ...], **overrides: Any) -> ConfigParser:
        """The bundle's ``configs`` merged, with its overrides and then ``overrides``."""
        parser = ConfigParser()
        parser.read_meta(str(self.configs_dir / "metadata.json"))
        parser.read_config([str(self.configs_dir / name) for name in configs])
        parser.update({**self.overrides, **overrides})
        return parser

    def model_file(self, parser: ConfigParser, key: str) -> str:
        """The checkpoint path at config ``key``, which must exist."""
        path = parser.get_parsed_content(key)
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{self.name}: {key} {path} not found; train the bundle first (scripts/monailabel.sh trains the demo "
                f"bundles) or point --conf {self.name}_overrides '{{\"bundle_root\": ...}}' at a trained bundle root"
            )
        return path


def root_cause(err: BaseException) -> str:
    """The innermost exception of a chain (MONAI wraps transform errors), as ``Type: first line of its message``
    (MONAI's image loader appends every fallback reader's traceback to its own)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"


def datastore_dir(datastore) -> Path:
    """The folder a datastore keeps its images and labels in: the studies folder, or the local cache of a DICOMweb
    server (MONAI Label gives it no public name)."""
    if not isinstance(datastore, LocalDatastore):
        raise ValueError(f"{type(datastore).__name__}: this app serves a studies folder or a DICOMweb server")
    return Path(datastore._datastore_path).resolve()


class StudyImage(MapTransform):
    """A study as the one image file the bundle reads: the file, or the one DICOM image of a folder (a DICOMweb series
    as MONAI Label downloads it), with symlinks resolved; :class:`StudyRefused` when it lies outside the datastore."""

    def __init__(self, keys: str, datastore_dir: Path) -> None:
        super().__init__(keys)
        self.datastore_dir = datastore_dir

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = inside_datastore(d[key], d[key], self.datastore_dir)
            if path.is_dir():
                images = sorted(p for p in path.iterdir() if p.is_file() and is_dicom(p))
                if len(images) != 1:
                    raise StudyReadError(f"{path}: a series of {len(images)} DICOM images; expected one 2D image")
                path = inside_datastore(d[key], images[0], self.datastore_dir)
            d[key] = str(path)
        return d


class LabelImage(MapTransform):
    """A ``(1, h, w)`` map on the network's grid as the label image MONAI Label writes: resized to the study's size
    (``size_key``, stored by the bundle's pre-processing) with bilinear interpolation and thresholded, as the bundle's
    mask writer does, without channel, uint8, and with its axes swapped: MONAI Label's writer swaps them back, since
    it expects MONAI's default (x, y) order while the bundles keep the (rows, columns) order of the image files.

    (MONAI Label's own ``Restored`` cannot be used: it takes the size from ``spatial_shape``, which MONAI's PIL reader
    gives as (width, height) whatever the axis order of the array.)
    """

    def __init__(self, keys: str, threshold: float, size_key: str = "original_size") -> None:
        super().__init__(keys)
        self.threshold, self.size_key = threshold, size_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = resize_maps(torch.as_tensor(d[key]).float().cpu()[None], d[self.size_key])[0]
            d[key] = (prob[0] > self.threshold).to(torch.uint8).T.contiguous().numpy()
        return d


class _BundleInferTask(BasicInferTask):
    """An infer task on the pre-processing of the bundle's inference config, for studies in ``datastore_dir`` only,
    whose label image is a thresholded map at the study's size; read errors of the study become
    :class:`StudyReadError`."""

    def __init__(self, bundle: Bundle, parser: ConfigParser, model_key: str, network, labels: dict, description: str,
                 datastore_dir: Path):
        self.bundle, self.parser = bundle, parser
        super().__init__(
            path=bundle.model_file(parser, model_key), network=network, type=InferType.SEGMENTATION, labels=labels,
            dimension=2, description=description, config=dict(LABEL_OUTPUT),
        )
        self.preprocessing = [StudyImage("image", datastore_dir), *parser.get_parsed_content("preprocessing").transforms]

    def pre_transforms(self, data=None) -> list:
        return self.preprocessing

    def run_pre_transforms(self, data: dict, transforms) -> dict:
        try:
            return super().run_pre_transforms(data, transforms)
        except (StudyReadError, StudyRefused):
            raise
        except Exception as err:  # readers and transforms raise many types; the study is the user's to fix
            raise StudyReadError(
                f"{data.get('image_path', data.get('image'))}: not readable as an image by the {self.bundle.name} "
                f"bundle ({root_cause(err)})"
            ) from err

    def inferer(self, data=None):
        return self.parser.get_parsed_content("inferer")


class RegionTask(_BundleInferTask):
    """The bundle's segmenter: the clinical region (lesion, lungs) as label 1, as the bundle's inference finds it."""

    def __init__(self, bundle: Bundle, datastore_dir: Path) -> None:
        parser = bundle.parser((INFERENCE_CONFIG,))
        super().__init__(
            bundle, parser, "segmenter_file", parser.get_parsed_content("segmenter_def"), {bundle.region: 1},
            f"{bundle.name}: {bundle.region} segmentation (the bundle's segmenter)", datastore_dir,
        )
        self.threshold = float(parser.get_parsed_content("region_threshold"))

    def post_transforms(self, data=None) -> list:
        return [
            Lambdad(keys="pred", func=lambda logits: logits.softmax(0)[REGION_CHANNEL : REGION_CHANNEL + 1]),
            LabelImage(keys="pred", threshold=self.threshold),
        ]


class SegXTask(_BundleInferTask):
    """SegX and SegU of the bundle's classifier on one study, by the bundle's own inference evaluator and handlers.

    The label image is the SegX map (binary, label 1) of the most probable explained class; the JSON result has the
    class probabilities, the prediction, each explained class's SegU scores, review flag (score below the bundle's
    ``review_threshold``, calibrated on validation: models/review_<explainer>.json) and combined score when that file
    has one, and ``review`` when any is flagged.
    """

    def __init__(self, bundle: Bundle, datastore_dir: Path) -> None:
        parser = bundle.parser((INFERENCE_CONFIG,))
        parser.update({"handlers": IN_MEMORY_HANDLERS, "dataloader": "$[]"})  # the study comes in per request
        settings = {key: parser.get_parsed_content(key) for key in (
            "classifier_name", "explainer_name", "explainer_label", "segx_variant", "top_fraction")}
        super().__init__(
            bundle, parser, "classifier_file", None, {"segx": 1},
            f"{bundle.name}: classification by {settings['classifier_name']} with SegX map of {settings['explainer_label']} "
            f"(explanation restricted to the {bundle.region}) and SegU certainty with review flag", datastore_dir,
        )
        self.settings = settings
        self.evaluator = parser.get_parsed_content("evaluator")
        handlers = parser.get_parsed_content("handlers")
        self.explain = next(h for h in handlers if isinstance(h, ExplainPredictions))
        self.segu = next(h for h in handlers if isinstance(h, SegUScores))
        self._lock = threading.Lock()  # one evaluator, one study at a time

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cpu") -> dict:
        with self._lock:
            self.evaluator.data_loader = [{"image": torch.as_tensor(data["image"])[None]}]
            self.evaluator.state.epoch_length = 1
            self.evaluator.run()
            item = self.evaluator.state.output[0]
        data["result"], shown = self.summary(item)
        data["pred"] = item[OutputKeys.SEGX_BINARY][shown].float() if shown is not None else torch.zeros_like(item[OutputKeys.REGION_PROB])
        return data

    def summary(self, item: dict) -> tuple[dict, int | None]:
        """The JSON result of one evaluated study (see the class docstring) and the explained pair the label shows."""
        names = self.explain.class_names
        probs = item[OutputKeys.PRED].detach().float().cpu()
        explained = [names[c] for c in item[OutputKeys.EXPLAINED_CLASSES]]
        scores = [
            {"class": name, "probability": float(probs[names.index(name)]), **{score: row[score] for score in CERTAINTY_SCORES},
             "review": bool(row[Columns.REVIEW]), "empty_region": bool(row[Columns.EMPTY_REGION]),
             **({Columns.COMBINED: row[Columns.COMBINED]} if Columns.COMBINED in row else {})}
            for name, row in zip(explained, item[OutputKeys.ROWS] if explained else [])
        ]
        shown = max(range(len(scores)), key=lambda i: scores[i]["probability"]) if scores else None
        result = {
            "bundle": self.bundle.name,
            "multi_label": self.explain.multi_label,
            "probabilities": dict(zip(names, probs.tolist())),
            "prediction": explained if self.explain.multi_label else explained[0],
            "segu": scores,
            "certainty_score": self.segu.score,
            "review_threshold": self.segu.review_threshold,
            "review": any(s["review"] for s in scores),
            "label_class": scores[shown]["class"] if scores else None,
            "region": self.bundle.region,
            **self.settings,
        }
        if self.explain.multi_label:
            result["thresholds"] = dict(zip(names, torch.as_tensor(self.explain.thresholds).float().tolist()))
        return result, shown

    def post_transforms(self, data=None) -> list:
        return [LabelImage(keys="pred", threshold=0.5)]


class _SegmenterConstants(BundleConstants):
    """MONAI Label's bundle training conventions, read from the bundle's segmenter train config."""

    def configs(self) -> list[str]:
        return [SEGMENTER_CONFIG]


class SegmenterTrainTask(BundleTrainTask):
    """Fine-tunes the bundle's segmenter on the final labels of the datastore's studies matching the bundle's pattern,
    by the bundle's train config (``train#trainer#max_epochs``, ``train#dataset#data``, ``validate#dataset#data``,
    ``train#handlers``, ``network``, ``run``); the best validation Dice overwrites the served checkpoint."""

    def __init__(self, bundle: Bundle, conf: dict[str, str]) -> None:
        self.bundle = bundle
        super().__init__(str(bundle.configs_dir.parent), conf, const=_SegmenterConstants())
        if not self.valid:
            raise FileNotFoundError(f"{bundle.name}: no {SEGMENTER_CONFIG} in {bundle.configs_dir}")
        self.checkpoint = Path(self.bundle_config.get_parsed_content("ckpt_file"))
        self.bundle_path = str(bundle.root)  # the models are under the bundle root, which may differ from the configs'
        # what MONAI Label's single-process run reads: the train config composed after the bundle's inference.yaml
        self.bundle_config_path = [str(bundle.configs_dir / name) for name in (INFERENCE_CONFIG, SEGMENTER_CONFIG)]

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        return self.bundle.parser((INFERENCE_CONFIG, Path(config).name))

    def config(self) -> dict:
        return {**super().config(), "model_filename": [self.checkpoint.name]}

    def _fetch_datalist(self, request: dict, datastore) -> list[dict]:
        """The labelled studies matching the bundle's pattern; refused when a labelled study's image or label lies
        outside the datastore (a symlink to elsewhere)."""
        folder = datastore_dir(datastore)
        for study in datastore.get_labeled_images(DefaultLabelTag.FINAL):
            inside_datastore(study, datastore.get_image_uri(study), folder)
            inside_datastore(study, datastore.get_label_uri(study, DefaultLabelTag.FINAL), folder)
        items = [i for i in super()._fetch_datalist(request, datastore) if fnmatch.fnmatch(Path(i["image"]).name, self.bundle.train_studies)]
        if len(items) < 2:
            raise ValueError(
                f"{self.bundle.name}: {len(items)} labelled studies match {self.bundle.train_studies!r}; training needs "
                "at least 2 (one for validation): save final labels first"
            )
        return items

    def _update_overrides(self, overrides: dict) -> dict:
        for key, value in self.bundle.overrides.items():
            overrides.setdefault(key, value)
        overrides.update(
            resume=False,  # a fresh run on the datastore's labels, never the resume state of the bundle's own run
            output_dir=str(self.bundle.root / "runs" / "monailabel_segmenter"),
            # the checkpoint records that it was trained on no saved split, so the bundle's evaluation refuses it
            split_record="$segx_monai.data.fingerprint.SplitRecord(None, 'the labels of the MONAI Label datastore')",
        )
        return overrides

    def __call__(self, request: dict, datastore):
        """Train in one process (MONAI Label's multi-GPU run ignores its workers' exit status, so a failed training
        would be reported done), starting from a checkpoint of the bundle's ``models`` folder."""
        request = {"model_filename": self.checkpoint.name, **request, "multi_gpu": False}
        if request.get("force_multi_gpu"):
            raise ValueError(f"{self.bundle.name}: force_multi_gpu: this task trains in one process only")
        name = request["model_filename"] if isinstance(request["model_filename"], str) else request["model_filename"][0]
        if Path(name).name != name or name in ("", ".."):
            raise ValueError(f"{self.bundle.name}: model_filename {name!r}: expected a file name in {self.bundle.root / 'models'}")
        return super().__call__(request, datastore)

