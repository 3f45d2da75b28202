"""Run a bundle's workflows (``python -m monai.bundle run ...``) as subprocesses.

One process per workflow keeps runs independent (no state leaks between algorithms or seeds) and
makes the peak memory a process measures its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import monai_ssl_ext
from monai_ssl_ext.bundle.errors import WRAPPER_MESSAGES
from monai_ssl_ext.bundle.literal import DATA_SETTINGS, inert

__all__ = [
    "WORKFLOWS",
    "BundleRunError",
    "UnknownSettingError",
    "bundle_command",
    "check_override_keys",
    "config_stack",
    "find_bundle",
    "root_cause",
    "run_workflow",
    "workflow_command",
]

# workflow name -> the run id its configs define
WORKFLOWS = {"training": "training", "evaluating": "evaluating", "inference": "run"}


class BundleRunError(RuntimeError):
    """A bundle workflow exited with an error; the message names the log file and its last lines.

    Attributes:
        cause: the original error's line(s) from the log (see :func:`root_cause`), ``None`` when none was found.
        log_file: the full log.
        code: the exit status.
    """

    def __init__(self, message: str, cause: str | None = None, log_file: str | os.PathLike = "", code: int = 1):
        super().__init__(message)
        self.cause = cause
        self.log_file = str(log_file)
        self.code = code

    def one_line(self) -> str:
        """The cause without its exception class, and where the full log is: what a user reads first."""
        lines = (self.cause or f"the workflow failed with exit code {self.code}").strip().splitlines()
        # a message that lists files goes on over indented lines: the first of them names one
        first = _EXCEPTION_LINE.sub(lambda m: m.group(2), lines[0])
        if len(first) > 1 and first[0] == first[-1] and first[0] in "\"'":  # a KeyError's message comes quoted
            first = first[1:-1]
        cause = " ".join([first, *(x.strip() for x in lines[1:3])])
        return f"{cause} (full log: {self.log_file})"


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder: an existing path, or a name under the repository's ``bundles/``."""
    path = Path(name_or_path).expanduser()
    if (path / "configs").is_dir():
        return path.resolve()
    for root in (Path.cwd() / "bundles", Path(monai_ssl_ext.__file__).resolve().parents[1] / "bundles"):
        candidate = root / str(name_or_path)
        if (candidate / "configs").is_dir():
            return candidate.resolve()
    raise FileNotFoundError(
        f"Bundle '{name_or_path}' not found: give a bundle folder (with configs/) or the name of one in bundles/."
    )


def _override_value(value: Any) -> str:
    """A config value as ``monai.bundle run`` reads it back.

    ``monai.bundle`` parses command-line values with Fire, which reads Python literals: ``True``, ``[1, None]``.
    JSON's ``true``/``null`` would arrive as the strings ``"true"``/``"null"`` (and a string ``"false"`` is true
    in a condition). A top-level ``None`` is ignored as "no override" by ``monai.bundle``, so it is passed as the
    expression ``$None``.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "$None"
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):  # repr(np.float64(0.5)) is "np.float64(0.5)", not a literal
        value = value.item()
    return repr(value)


class UnknownSettingError(KeyError):
    """An override names a setting that none of the merged configs has (a misspelling would be ignored)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def check_override_keys(config_files: Sequence[str | os.PathLike], overrides: Mapping[str, Any]) -> None:
    """Refuse an override whose first component is not a key of the merged configs, naming the closest one.

    ``monai.bundle`` adds an unknown key silently, so ``--algoritm_name flexmatch`` would train the default
    algorithm. Only the first component of ``a#b#c`` is checked: deeper ones may name a class argument the
    config leaves at its Python default (``algorithms#semise#alpha``).
    """
    import difflib
    import inspect

    from monai.bundle.scripts import run
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    # the arguments of ``monai.bundle run`` itself (``--tracking mlflow``...) are no config keys, and
    # tracking adds the settings of its handlers (``experiment_name``...)
    known = {n for n, p in inspect.signature(run).parameters.items() if p.kind is not p.VAR_KEYWORD}
    tracking = overrides.get("tracking")
    if tracking == "mlflow":
        known.update(DEFAULT_MLFLOW_SETTINGS["configs"])
    elif isinstance(tracking, (str, os.PathLike)) and Path(tracking).is_file():
        known.update(json.loads(Path(tracking).read_text(encoding="utf-8")).get("configs", {}))
    for f in config_files:
        content = json.loads(Path(f).read_text(encoding="utf-8"))
        known.update(content if isinstance(content, dict) else ())
    for key in overrides:
        top = str(key).split("#", 1)[0]
        if top in known:
            continue
        close = difflib.get_close_matches(top, sorted(known), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UnknownSettingError(
            f"unknown setting '{key}': no config of the run ({', '.join(Path(f).name for f in config_files)}) "
            f"has '{top}'{hint}"
        )


def bundle_command(
    bundle: str | os.PathLike,
    run_id: str,
    configs: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    python: str = sys.executable,
    nproc: int = 1,
) -> list[str]:
    """The command line of ``python -m monai.bundle run <run_id>`` with ``configs`` merged left to right.

    Args:
        bundle: bundle folder.
        run_id: workflow id in the configs (``training``, ``evaluating``, ``run``...).
        configs: config files relative to the bundle's ``configs/`` (``["train.json", "profiles/smoke.json"]``).
        overrides: ``{"key#sub": value}`` pairs passed as ``--key#sub value``; the values of
            :data:`~monai_ssl_ext.bundle.literal.DATA_SETTINGS` (paths, class names) are always literal.
        python: interpreter.
        nproc: processes; above 1 the command goes through ``torchrun --standalone``.
    """
    bundle = Path(bundle)
    files = [str(bundle / "configs" / c) for c in configs]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"Bundle config not found: {f}")
    check_override_keys(files, overrides or {})
    launcher = [python, "-m", "monai.bundle"]
    if nproc > 1:
        launcher = [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "monai.bundle",
        ]
    cmd = [*launcher, "run", run_id, "--config_file", json.dumps(files), "--bundle_root", str(bundle)]
    logging_conf = bundle / "configs" / "logging.conf"
    if logging_conf.is_file():
        cmd += ["--logging_file", str(logging_conf)]
    for key, value in (overrides or {}).items():
        # a path or class name is data: one beginning with "$" must not reach MONAI as Python to evaluate
        cmd += [f"--{key}", _override_value(inert(value) if key.split("#")[0] in DATA_SETTINGS else value)]
    return cmd


def config_stack(workflow: str, profile: str | None = None, overlays: Sequence[str] = (), nproc: int = 1) -> list[str]:
    """The config files (under a bundle's ``configs/``) a workflow merges, in order.

    - ``training``: ``train.json``, the profile, the overlays, and ``multi_gpu_train.json`` for
      several processes.
    - ``evaluating``: ``train.json``, the profile, the overlays, then ``evaluate.json``, which reads the
      trained configuration beside the checkpoint (so the profile and overlays are optional).
    - ``inference``: ``inference.json`` and the overlays.

    Args:
        workflow: ``training``, ``evaluating`` or ``inference``.
        profile: ``smoke``, ``full`` or ``None`` (the bundle's own settings).
        overlays: further config files (``ham10000.json``).
        nproc: processes of a training run.
    """
    profiles = [f"profiles/{profile}.json"] if profile else []
    if workflow == "training":
        return ["train.json", *profiles, *overlays, *(["multi_gpu_train.json"] if nproc > 1 else [])]
    if workflow == "evaluating":
        return ["train.json", *profiles, *overlays, "evaluate.json"]
    if workflow == "inference":
        return ["inference.json", *overlays]
    raise ValueError(f"unknown workflow '{workflow}'; choose one of {sorted(WORKFLOWS)}")


def workflow_command(
    bundle: str | os.PathLike,
    workflow: str,
    profile: str | None = None,
    overlays: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    nproc: int = 1,
) -> list[str]:
    """The command line that runs ``workflow`` of ``bundle`` (see :func:`config_stack` and :func:`bundle_command`)."""
    configs = config_stack(workflow, profile, overlays, nproc if workflow == "training" else 1)
    return bundle_command(bundle, WORKFLOWS[workflow], configs, overrides, nproc=nproc if workflow == "training" else 1)


def run_workflow(
    cmd: Sequence[str],
    log_file: str | os.PathLike,
    echo: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    append: bool = False,
) -> float:
    """Run ``cmd``, writing its output to ``log_file`` (and passing each line to ``echo``); return seconds taken.

    With ``append`` the log goes after what ``log_file`` holds (a resumed run keeps the log of the cut-off one).

    Raises:
        BundleRunError: non-zero exit; the message quotes the end of the log.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    from monai_ssl_ext import HOLOSCAN_IMPORT_WARNING

    python_warnings = ",".join(w for w in (os.environ.get("PYTHONWARNINGS"), HOLOSCAN_IMPORT_WARNING) if w)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": python_warnings, **(env or {})}
    start = time.perf_counter()
    with open(log_file, "a" if append else "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if echo is not None:
                    echo(line.rstrip("\n"))
            code = proc.wait()
    elapsed = time.perf_counter() - start
    if code != 0:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        cause = root_cause(lines)
        tail = "\n".join(lines[-25:])
        headline = f"{cause}\n" if cause else ""
        raise BundleRunError(
            f"{headline}workflow failed with exit code {code}; full log: {log_file}\n{tail}", cause, log_file, code
        )
    return elapsed


_EXCEPTION_LINE = re.compile(r"^(?:error: )?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): (.*)$")


def root_cause(log_lines: Sequence[str]) -> str | None:
    """The first exception of a (chained) traceback in ``log_lines``, with its message lines.

    A config expression that raises is reported by ``monai.bundle`` as ``RuntimeError: Failed to
    evaluate ...`` *after* the original error; the original (a missing file, an impossible label
    budget, an unknown algorithm) is the line a user needs, so it is the one returned.
    """
    for i, line in enumerate(log_lines):
        match = _EXCEPTION_LINE.match(line)
        if match is None or match.group(2).startswith(WRAPPER_MESSAGES):
            continue
        message = [line]
        for following in log_lines[i + 1 :]:
            if not following.strip() or following.startswith(("The above exception", "Traceback", "During handling")):
                break
            message.append(following)
        return "\n".join(message)
    return None
