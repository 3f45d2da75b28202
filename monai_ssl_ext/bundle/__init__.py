"""Bundles: rendered from one definition, run as workflows, checked as the model zoo checks them.

- :mod:`.render`: the shared templates and per-method specifications that every bundle folder is
  rendered from (``monai-ssl render_bundles``).
- :mod:`.trained`: the trained configuration written beside the weights and read by evaluation,
  inference and export.
- :mod:`.runner`: the config stack of each workflow and the ``python -m monai.bundle run`` command.
- :mod:`.checks`: the model-zoo checks of a bundle folder (``monai-ssl check_bundle``).
- :mod:`.literal` and :mod:`.errors`: strings from data kept literal in configs; a failed run's root cause
  as its last line.
"""

from .errors import report_root_cause_last
from .literal import DATA_SETTINGS, inert
from .render import bundle_names, check_rendered, render_bundle, write_bundle
from .runner import (
    WORKFLOWS,
    BundleRunError,
    UnknownSettingError,
    bundle_command,
    check_override_keys,
    config_stack,
    find_bundle,
    root_cause,
    run_workflow,
    workflow_command,
)
from .trained import (
    TRAINED_CONFIG_NAME,
    TrainedConfigError,
    describe_network_io,
    freeze_settings,
    read_trained_config,
    trained_config_path,
    write_trained_config,
)

__all__ = [
    "DATA_SETTINGS",
    "TRAINED_CONFIG_NAME",
    "WORKFLOWS",
    "BundleRunError",
    "TrainedConfigError",
    "UnknownSettingError",
    "bundle_command",
    "bundle_names",
    "check_override_keys",
    "check_rendered",
    "config_stack",
    "describe_network_io",
    "find_bundle",
    "freeze_settings",
    "inert",
    "read_trained_config",
    "render_bundle",
    "report_root_cause_last",
    "root_cause",
    "run_workflow",
    "trained_config_path",
    "workflow_command",
    "write_bundle",
    "write_trained_config",
]
