"""The MONAI Label app reads only the studies of its datastore: a study given as a server path, or a datastore file that
is a symlink to elsewhere, is refused by name (the app answers HTTP 403 with the message)."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "monailabel_app"))
from study_paths import StudyRefused, check_study_id, inside_datastore  # noqa: E402


@pytest.mark.parametrize("study, why", [
    ("/etc/passwd", "an absolute path"),
    ("C:\\Windows\\win.ini", "an absolute path"),
    ("~/.ssh/id_rsa", "a path"),
    ("../secrets/scan", "a path with a '..' component"),
    ("ham_1/../../../etc/passwd", "a path with a '..' component"),
    ("..\\..\\scan", "a path with a '..' component"),
    ("bundles/ham_segx/configs/inference.yaml", "a path"),
])
def test_a_study_given_as_a_server_path_is_refused(study, why, tmp_path):
    with pytest.raises(StudyRefused) as refused:
        check_study_id(study, tmp_path)
    assert str(refused.value) == f"study {study!r} is {why}, not a study id of the datastore {tmp_path}; refused"


@pytest.mark.parametrize("study", ["ham_ISIC_0024306", "chest_36199_dicom", "1.2.826.0.1.3680043.8.498.1", "a..b"])
def test_datastore_ids_pass(study, tmp_path):
    check_study_id(study, tmp_path)


def test_a_datastore_file_linking_outside_is_refused(tmp_path):
    """A study file of the datastore that is a symlink to a file elsewhere is refused, naming the study and its target;
    studies inside, also through a datastore folder that is itself a symlink, and links within it are read."""
    studies, outside = tmp_path / "studies", tmp_path / "private"
    (studies / "series").mkdir(parents=True)
    outside.mkdir()
    (outside / "scan.png").write_bytes(b"not for the server")
    (studies / "ham_1.png").write_bytes(b"a study")
    (studies / "linked.png").symlink_to(outside / "scan.png")
    (studies / "series" / "image.dcm").symlink_to(outside / "scan.png")
    (studies / "alias.png").symlink_to(studies / "ham_1.png")
    (tmp_path / "studies_link").symlink_to(studies)

    with pytest.raises(StudyRefused) as refused:
        inside_datastore("linked", studies / "linked.png", studies)
    assert str(refused.value) == f"study 'linked' ({outside / 'scan.png'}) lies outside the datastore {studies}; refused"
    with pytest.raises(StudyRefused, match="series/image.dcm' .* lies outside the datastore"):
        inside_datastore(str(studies / "series" / "image.dcm"), studies / "series" / "image.dcm", studies)
    with pytest.raises(StudyRefused, match="lies outside the datastore"):
        inside_datastore("x", studies / ".." / "private" / "scan.png", studies)
    assert inside_datastore("ham_1", studies / "ham_1.png", studies) == studies / "ham_1.png"
    assert inside_datastore("alias", studies / "alias.png", studies) == studies / "ham_1.png"
    assert inside_datastore("ham_1", tmp_path / "studies_link" / "ham_1.png", tmp_path / "studies_link") == studies / "ham_1.png"
