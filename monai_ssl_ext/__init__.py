"""monai_ssl_ext: semi-supervised medical image models for MONAI.

Subpackages: ``data`` (manifests, label budgets, streams), ``io`` (clinical readers), ``transforms``
(modality profiles), ``networks``, ``losses``, ``algorithms`` (one class per method), ``engines`` (the
semi-supervised trainer and its handlers), ``metrics``, ``benchmark`` and ``deploy``.
"""

__version__ = "0.1.0"
