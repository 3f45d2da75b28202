"""Data set builders: turn a public data set's own layout into a :class:`~monai_ssl_ext.data.Manifest`.

Each builder reads a data set as it is distributed, checks it (missing masks, unknown classes, empty
folders stop with a message naming the file), splits it into ``training``/``validation``/``test``
(stratified by class, whole groups on one side, a pure function of the seed) unless the data set
ships official splits, and returns a manifest whose paths are relative to the data root.

- :func:`build_busi`: BUSI breast ultrasound (``benign/``, ``malignant/``, ``normal/`` with ``*_mask*.png``).
- :func:`build_medmnist`: a MedMNIST ``.npz`` file of any image size (official splits kept), written
  out as PNG files.

``monai-ssl manifest <builder> ...`` runs them from the command line.
"""

from .busi import BUSI_CLASSES, build_busi
from .common import split_entries
from .medmnist import MEDMNIST_CLASSES, build_medmnist

BUILDERS = {"busi": build_busi, "medmnist": build_medmnist}

__all__ = ["BUILDERS", "BUSI_CLASSES", "MEDMNIST_CLASSES", "build_busi", "build_medmnist", "split_entries"]
