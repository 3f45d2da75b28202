"""Data set builders: turn a public data set's own layout into a :class:`~monai_ssl_ext.data.Manifest`.

Each builder reads a data set as it is distributed, checks it (missing files, unknown classes,
duplicates stop with a message naming the file, or are skipped and recorded in a
:class:`BuildReport` with ``on_error="skip"``), splits it into ``training``/``validation``/``test``
(70/10/20, stratified by class, whole groups on one side, a pure function of the seed) unless the
data set ships official splits, and returns a manifest whose paths are relative to the data root.
Group ids taken from the data are stored as salted hashes (:mod:`monai_ssl_ext.data.anonymise`).

- :func:`build_busi`: BUSI breast ultrasound (``benign/``, ``malignant/``, ``normal/`` with ``*_mask*.png``).
- :func:`build_medmnist`: a MedMNIST ``.npz`` file of any image size (official splits kept), written
  out as PNG files.
- :func:`build_ham10000`: HAM10000 dermoscopy (metadata table, images, lesion masks), split by lesion.
- :func:`build_chest_xray`: Kermany paediatric chest X-rays (``labels.csv``), normal vs pneumonia; official
  test split kept, official train split 90/10 into training/validation by patient, duplicates dropped.
- :func:`build_nct_crc`: NCT-CRC-HE histology patches (class folders, class-prefixed names or labels.csv).
- :func:`build_folder`: any folder with one sub-folder per class.
- :func:`build_csv_list`: any CSV of ``path,label[,mask][,group]``.
- :func:`build_dicom_dir`: a directory of DICOM files with labels keyed by SOP Instance UID or accession number.

:func:`build_manifest` runs any of them by name (:data:`BUILDERS`), writes the manifest and its skip report.
"""

from .busi import BUSI_CLASSES, build_busi
from .chest_xray import CHEST_XRAY_CLASSES, build_chest_xray
from .cli_support import BUILDERS, build_manifest, default_report_path
from .common import DEFAULT_FRACTIONS, IMAGE_SUFFIXES, BuildReport, SkippedFile, split_entries, write_report
from .csv_list import build_csv_list
from .dicom_dir import DICOM_KEYS, build_dicom_dir
from .folder import build_folder
from .ham10000 import HAM10000_CLASSES, build_ham10000
from .medmnist import MEDMNIST_CLASSES, build_medmnist
from .nct_crc import NCT_CLASSES, build_nct_crc

__all__ = [
    "BUILDERS",
    "BUSI_CLASSES",
    "CHEST_XRAY_CLASSES",
    "DEFAULT_FRACTIONS",
    "DICOM_KEYS",
    "HAM10000_CLASSES",
    "IMAGE_SUFFIXES",
    "MEDMNIST_CLASSES",
    "NCT_CLASSES",
    "BuildReport",
    "SkippedFile",
    "build_busi",
    "build_chest_xray",
    "build_csv_list",
    "build_dicom_dir",
    "build_folder",
    "build_ham10000",
    "build_manifest",
    "build_medmnist",
    "build_nct_crc",
    "default_report_path",
    "split_entries",
    "write_report",
]
