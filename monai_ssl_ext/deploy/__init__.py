"""Export and deployment: TorchScript export of a trained bundle model."""

from .export import export_bundle, merged_metadata

__all__ = ["export_bundle", "merged_metadata"]
