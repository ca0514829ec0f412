"""The comparison runner: it lives in :mod:`lightning_balance.experiments`.

Kept so that ``from lightning_balance.compare import compare, CompareSettings, ComponentSpec, default_runs`` (and
every name below) keeps working. The runner's concerns each have their own module there: ``settings``, ``checks``,
``recorder``, ``progress``, ``runner`` and ``summary``.
"""

from lightning_balance.experiments.checks import (
    build_config_value,
    check_datamodule,
    check_datamodule_class,
    check_model_class,
    check_output_dir,
    check_trainer_arguments,
    check_validation_labels,
    ensure_cwd_importable,
    import_object,
)
from lightning_balance.experiments.progress import quiet_lightning
from lightning_balance.experiments.runner import (
    CompareResult,
    RunResult,
    best_point,
    compare,
    default_model,
    run_once,
    smoothed_rise,
)
from lightning_balance.experiments.settings import (
    METRICS,
    RISE_WINDOW,
    RUN_NAMES,
    CompareSettings,
    ComponentSpec,
    ConfigurationError,
    RunSpec,
    check_run_arguments,
    default_runs,
    global_rank,
)
from lightning_balance.experiments.summary import summarize

__all__ = [
    "METRICS",
    "RISE_WINDOW",
    "RUN_NAMES",
    "CompareResult",
    "CompareSettings",
    "ComponentSpec",
    "ConfigurationError",
    "RunResult",
    "RunSpec",
    "best_point",
    "build_config_value",
    "check_datamodule",
    "check_datamodule_class",
    "check_model_class",
    "check_output_dir",
    "check_run_arguments",
    "check_trainer_arguments",
    "check_validation_labels",
    "compare",
    "default_model",
    "default_runs",
    "ensure_cwd_importable",
    "global_rank",
    "import_object",
    "quiet_lightning",
    "run_once",
    "smoothed_rise",
    "summarize",
]
