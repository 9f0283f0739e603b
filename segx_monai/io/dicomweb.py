"""DICOM studies in and out of a DICOMweb server (a PACS, Orthanc) with ``dicomweb-client``: QIDO-RS + WADO-RS into a
folder the bundles read as a folder of DICOM studies, and STOW-RS of result files back, one request per study.

Every fetched instance is checked as the bundles read it (:func:`segx_monai.io.dicom.read_dicom`: pixel data, one
frame, a decodable image); a bad study is an error naming it and its series, or, with ``skip_bad``, listed and left
out while the others are fetched or stored.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from segx_monai.io.dicom import DicomReadError, is_dicom, read_dicom
from segx_monai.utils.staging import StagedDirectory

__all__ = ["DicomwebError", "DicomwebUnreachable", "FetchedStudies", "StoredStudies", "fetch_studies", "store_studies"]

logger = logging.getLogger(__name__)

ORTHANC_DICOMWEB_ROOT = "/dicom-web"  # the Orthanc DICOMweb plugin's default root, below Orthanc's REST API root
IMAGE_MODALITIES = ("CR", "DX")  # radiographs; the results stored back are SEG, SR and OT (Parametric Map, Secondary Capture)
# WADO-RS in the transfer syntax the server holds (the bundles decode them all): by default dicomweb-client asks for
# Explicit VR Little Endian, which a server that cannot transcode (Orthanc without JPEG 2000) refuses with HTTP 500
AS_STORED = (("application/dicom", "*"),)
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class DicomwebError(ValueError):
    """A study could not be fetched or stored; the message names the server's URL, the study (and series) and why."""


class DicomwebUnreachable(DicomwebError):
    """The DICOMweb server did not answer: an error for every study, never skipped; the message names its URL."""


@dataclass
class FetchedStudies:
    """The studies fetched to ``folder`` (``<folder>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``)
    and those left out with ``skip_bad`` (``skipped``: dicts ``file``, ``cause``, as the bundles' ``skipped.csv``)."""

    folder: str | None = None
    studies: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


@dataclass
class StoredStudies:
    """The studies stored by :func:`store_studies`, and those left out with ``skip_bad`` (dicts ``file``, ``cause``)."""

    studies: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def fetch_studies(url: str | None, folder: str | os.PathLike, study_uids: Sequence[str] | None = None, skip_bad: bool = False,
                  modalities: Sequence[str] | None = IMAGE_MODALITIES) -> FetchedStudies:
    """Fetch every instance of the series of ``modalities`` (None: all) of the studies at the DICOMweb root ``url``
    (all it lists, or ``study_uids``) into ``folder``, replacing it whole when done (a failed fetch leaves the
    previous folder); ``url`` None fetches nothing. The default leaves out the results stored beside the radiographs.

    A study with an instance the bundles cannot read (no pixel data, several frames, no decoder) raises a
    :class:`DicomwebError` naming the study and series, or is left out and listed in ``skipped`` with ``skip_bad``.
    """
    if url is None:
        return FetchedStudies()
    client = _client(url)
    uids = list(study_uids) if study_uids is not None else [
        _uid(found, "StudyInstanceUID") for found in _ask(url, None, client.search_for_studies, fields=["StudyInstanceUID"], get_remaining=True)
    ]
    if not uids:
        raise DicomwebError(f"{url}: no studies to fetch; expected a server holding at least one study")
    fetched = FetchedStudies(folder=str(folder))
    with StagedDirectory(folder) as staged:
        for study in uids:
            try:
                _fetch_study(client, url, study, staged.staging_path / study, modalities)
                fetched.studies.append(study)
            except DicomwebError as err:
                shutil.rmtree(staged.staging_path / study, ignore_errors=True)
                if not skip_bad or isinstance(err, DicomwebUnreachable):
                    raise
                logger.warning("Skipping %s", err)
                fetched.skipped.append({"file": f"{url} study {study}", "cause": str(err)})
        if not fetched.studies:
            raise DicomwebError(f"{url}: none of the {len(uids)} studies could be fetched; the first: {fetched.skipped[0]['cause']}")
    if fetched.skipped:
        logger.warning("%s: %d of %d studies skipped, fetched the others to %s", url, len(fetched.skipped), len(uids), folder)
    return fetched


def _fetch_study(client: DICOMwebClient, url: str, study: str, folder: Path, modalities: Sequence[str] | None) -> None:
    """The series of ``modalities`` of one study (QIDO-RS), retrieved (WADO-RS) and written one file per instance,
    each read back as the bundles read it."""
    found = [Dataset.from_json(series) for series in _ask(url, study, client.search_for_series, study_instance_uid=study,
                                                          fields=["Modality"], get_remaining=True)]
    if not found:
        raise DicomwebError(f"{url}: study {study}: not found; expected a StudyInstanceUID the server lists (QIDO-RS)")
    series_uids = [str(s.SeriesInstanceUID) for s in found if modalities is None or s.get("Modality") in modalities]
    if not series_uids:
        raise DicomwebError(f"{url}: study {study}: no series of modality {', '.join(modalities)}; it has "
                            f"{', '.join(sorted({str(s.get('Modality', '?')) for s in found}))}")
    for series in series_uids:
        where = f"{url}: study {study}, series {series}"
        for ds in _ask(url, study, client.retrieve_series, study_instance_uid=study, series_instance_uid=series, media_types=AS_STORED):
            path = folder / series / f"{ds.SOPInstanceUID}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            try:
                read_dicom(path)
            except DicomReadError as err:
                raise DicomwebError(f"{where}, instance {ds.SOPInstanceUID}: {str(err).removeprefix(f'{path}: ')}") from err


def store_studies(url: str | None, folder: str | os.PathLike, study_uids: Sequence[str] | None = None, skip_bad: bool = False) -> StoredStudies:
    """Store the DICOM files under ``folder`` (of ``study_uids`` only, if given) at the DICOMweb root ``url`` with
    STOW-RS, one request per study.

    All or nothing per study: every file is read and checked first (UIDs and transfer syntax present, no SOP Instance
    UID twice), and when the server refuses part of a study, what it stored of it in this request is deleted again through
    Orthanc's REST API (``POST /tools/lookup``, ``DELETE /instances/{id}``; ``url`` an Orthanc ``.../dicom-web`` root).
    A bad study raises a :class:`DicomwebError` naming it, or is listed in ``skipped`` with ``skip_bad``; no files
    (a run that wrote no DICOM results) store nothing, with a warning.
    """
    if url is None:
        raise DicomwebError(f"{folder}: no DICOMweb server to store the results to; set dicomweb_url to its root URL")
    studies, stored = _studies_in(Path(folder), study_uids), StoredStudies()
    if not studies:
        logger.warning("%s: no DICOM files to store%s", folder, f" of studies {list(study_uids)}" if study_uids is not None else "")
        return stored
    client = _client(url)
    for study, datasets in studies.items():
        try:
            _store_study(client, url, study, datasets)
            stored.studies.append(study)
        except DicomwebError as err:
            if not skip_bad or isinstance(err, DicomwebUnreachable):
                raise
            logger.warning("Not stored: %s", err)
            stored.skipped.append({"file": f"{url} study {study}", "cause": str(err)})
    logger.info("%s: stored %d studies from %s (%d skipped)", url, len(stored.studies), folder, len(stored.skipped))
    return stored


def _studies_in(folder: Path, study_uids: Sequence[str] | None) -> dict[str, list[Dataset] | DicomwebError]:
    """The DICOM files under ``folder`` read and grouped by study; a study whose files fail the checks maps to the
    error naming the file."""
    if folder.is_file():
        raise DicomwebError(f"{folder}: a file; expected the folder of DICOM files to store")
    studies: dict[str, list[Dataset] | DicomwebError] = defaultdict(list)
    # hidden files are the partial writes a killed run may leave (segx_monai.utils.staging), not results
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and is_dicom(p)):
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:  # pydicom reports malformed files with many exception types
            raise DicomwebError(f"{path}: not a readable DICOM file ({err}); expected a DICOM Part 10 file to store") from err
        study = str(ds.get("StudyInstanceUID", ""))
        if study_uids is not None and study not in study_uids:
            continue
        missing = [k for k in UID_KEYWORDS if not ds.get(k)] + [k for k in ("TransferSyntaxUID",) if k not in getattr(ds, "file_meta", {})]
        if missing and not isinstance(studies[study], DicomwebError):
            studies[study] = DicomwebError(f"study {study or '(none)'}: {path} has no {', '.join(missing)}; expected a complete DICOM instance")
        elif not isinstance(studies[study], DicomwebError):
            studies[study].append(ds)
    for study, datasets in studies.items():
        uids = [ds.SOPInstanceUID for ds in datasets] if isinstance(datasets, list) else []
        if len(set(uids)) < len(uids):
            twice = sorted({u for u in uids if uids.count(u) > 1})
            studies[study] = DicomwebError(f"study {study}: SOP Instance UID {twice[0]} in {uids.count(twice[0])} files; expected one file per instance")
    return dict(studies)


def _store_study(client: DICOMwebClient, url: str, study: str, datasets: list[Dataset] | DicomwebError) -> None:
    """One STOW-RS request for one study's instances, then a QIDO-RS query of what the server holds (Orthanc 1.10's
    DICOMweb plugin answers "stored" for an instance its filters refuse); undone on the server if any is missing."""
    if isinstance(datasets, DicomwebError):
        raise DicomwebError(f"{url}: {datasets}")
    sent = {ds.SOPInstanceUID for ds in datasets}
    before, refusal = _instances_of(client, url, study), None
    try:
        answer = client.store_instances(datasets, study_instance_uid=study)
    except requests.HTTPError as err:  # refused whole, or in part with the status of each instance in the body
        refusal, answer = err, _stow_answer(err.response)
    except requests.ConnectionError as err:
        raise DicomwebUnreachable(f"{url}: the DICOMweb server cannot be reached ({err}); expected a server answering there") from err
    held = _instances_of(client, url, study)
    failed = {str(item.get("ReferencedSOPInstanceUID", "?")): item.get("FailureReason") for item in answer.get("FailedSOPSequence", [])}
    if sent <= held and not failed and refusal is None:
        return
    refused = sorted((sent - held) | set(failed))
    reasons = sorted({f"{int(reason):04X}" for reason in failed.values() if reason is not None})
    undone = _delete_from_orthanc(url, sorted((sent & held) - before))
    raise DicomwebError(f"{url}: study {study}: the server refused {len(refused)} of its {len(sent)} instances ({refusal or 'HTTP 200'}; "
                        f"failure reason {', '.join(reasons) or 'not given'}; the first: {refused[0] if refused else 'none'}); {undone}")


def _instances_of(client: DICOMwebClient, url: str, study: str) -> set[str]:
    """The SOP Instance UIDs the server lists in ``study`` (QIDO-RS)."""
    found = _ask(url, study, client.search_for_instances, study_instance_uid=study, fields=["SOPInstanceUID"], get_remaining=True)
    return {_uid(instance, "SOPInstanceUID") for instance in found}


def _stow_answer(response: requests.Response | None) -> Dataset:
    """The STOW-RS status body (DICOM JSON) of an error response; empty if it has none."""
    try:
        return Dataset.from_json(response.json())
    except Exception:  # no body, or not DICOM JSON: the HTTP status is all there is
        return Dataset()


def _delete_from_orthanc(url: str, sop_uids: list[str]) -> str:
    """Delete instances stored at an Orthanc DICOMweb root ``url`` through Orthanc's REST API; says what was done.
    DICOMweb has no delete: Orthanc's documented ``/tools/lookup`` and ``/instances/{id}`` are used."""
    if not sop_uids:
        return "nothing of it was stored"
    if not url.rstrip("/").endswith(ORTHANC_DICOMWEB_ROOT):
        return f"{len(sop_uids)} instances of it stay stored (not an Orthanc {ORTHANC_DICOMWEB_ROOT} root, cannot delete): {sop_uids}"
    orthanc = url.rstrip("/").removesuffix(ORTHANC_DICOMWEB_ROOT)
    try:
        for uid in sop_uids:
            lookup = requests.post(f"{orthanc}/tools/lookup", data=uid, timeout=20)
            lookup.raise_for_status()
            for found in (f for f in lookup.json() if f["Type"] == "Instance"):
                requests.delete(f"{orthanc}/instances/{found['ID']}", timeout=20).raise_for_status()
    except requests.RequestException as err:
        return f"the {len(sop_uids)} instances it stored could not all be deleted again ({err}): {sop_uids}"
    return f"the {len(sop_uids)} instances it stored were deleted again"


def _ask(url: str, study: str | None, request, *args, **kwargs):
    """``request(*args, **kwargs)`` of the DICOMweb client, its failures as a :class:`DicomwebError` naming ``url``
    and ``study``; a server that cannot be reached is always an error (no study can be fetched or stored)."""
    try:
        return request(*args, **kwargs)
    except requests.ConnectionError as err:
        raise DicomwebUnreachable(f"{url}: the DICOMweb server cannot be reached ({err}); expected a server answering there") from err
    except requests.RequestException as err:
        raise DicomwebError(f"{url}: {f'study {study}: ' if study else ''}{request.__name__} failed ({err})") from err


def _client(url: str) -> DICOMwebClient:
    """A DICOMweb client of ``url`` that does not retry (dicomweb-client retries a refused connection for 30 s)."""
    client = DICOMwebClient(url)
    client.set_http_retry_params(retry=False)
    return client


def _uid(found: dict, keyword: str) -> str:
    """A UID of a QIDO-RS result (DICOM JSON)."""
    return str(Dataset.from_json(found).get(keyword, ""))
