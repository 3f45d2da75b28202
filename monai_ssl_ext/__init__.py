"""monai_ssl_ext: semi-supervised medical image models for MONAI.

Subpackages: ``data`` (manifests, label budgets, streams), ``io`` (clinical readers), ``transforms``
(modality profiles), ``networks``, ``losses``, ``algorithms`` (one class per method), ``engines`` (the
semi-supervised trainer and its handlers), ``metrics``, ``benchmark`` and ``deploy``.
"""

__version__ = "0.1.0"

import warnings as _warnings

#: With the MONAI Deploy App SDK installed (the ``deploy`` extra), ``import monai`` imports it too (MONAI loads
#: every ``monai.*`` module) and Holoscan warns, at import, that the stack is smaller than its applications want.
#: Only the MONAI Deploy application runs Holoscan, and Holoscan says so again when it starts one; at import the
#: two lines would follow every command, and break the one line a command prints on a user error.
HOLOSCAN_IMPORT_WARNING = "ignore:Current stack size:RuntimeWarning"
_warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning, module="holoscan")
