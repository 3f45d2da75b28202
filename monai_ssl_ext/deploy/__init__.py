"""Export and deployment: model-zoo bundle checks and TorchScript export."""

from .bundle_checks import BundleCheckError, check_bundle
from .export import export_bundle, merged_metadata

__all__ = ["BundleCheckError", "check_bundle", "export_bundle", "merged_metadata"]
