"""Image input/output beyond MONAI's readers: 2D DICOM (chest X-ray, dermoscopy) in and out."""

from segx_monai.io.dicom import DicomReader, DicomReadError, dicom_datalist, is_dicom, read_dicom
from segx_monai.io.dicom_writer import write_dicom_variant

__all__ = [
    "DicomReadError",
    "DicomReader",
    "dicom_datalist",
    "is_dicom",
    "read_dicom",
    "write_dicom_variant",
]
