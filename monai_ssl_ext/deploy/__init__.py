"""Export and deployment: TorchScript export of a trained bundle model, and results as DICOM.

- :mod:`.export`: ``model.ts`` described by the trained settings (``monai-ssl export``).
- :mod:`.dicom_results`: a classification as DICOM SR, a lesion mask as DICOM SEG (needs the ``dicom`` extra,
  highdicom; imported on use).
"""

from .export import export_bundle, merged_metadata

__all__ = ["export_bundle", "merged_metadata"]
