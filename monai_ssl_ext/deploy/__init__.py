"""Export and deployment: model-zoo bundle checks and TorchScript export."""

from .bundle_checks import BundleCheckError, check_bundle

__all__ = ["BundleCheckError", "check_bundle"]
