r"""
Running a comparison
^^^^^^^^^^^^^^^^^^^^

:func:`compare` trains the same model on the same data under every strategy of the comparison, over several
seeds, and returns a :class:`CompareResult`; :func:`run_once` trains one (strategy, seed).

What a DataModule and a model must provide
------------------------------------------
* The DataModule is a :class:`~lightning_balance.BalancedDataModule` whose ``__init__`` accepts (and passes on)
  ``strategy``, ``temperature`` and ``seed`` (and ``beta``, ``tau``, ``drw_start``, ``max_group_epochs``,
  ``order`` for the baselines that set them); ``setup('fit')`` gives a training set with at least two non-empty
  groups and a validation set. When the groups are the class labels, head/medium/tail are the classes split by
  training count; otherwise (domains, languages) the validation set has a ``groups`` attribute, accuracy and loss
  are measured per group, and the strategies that weight the loss per class are refused.
* The model's ``training_step`` reduces a per-sample loss with :func:`~lightning_balance.balanced_loss` (or
  computes it with :func:`~lightning_balance.balanced_cross_entropy`, which ``logit_adjust`` needs). That call is
  the only place where ``upweight`` applies its weights, so a model that bypasses it would silently train
  ``upweight`` exactly like ``natural``. The runner checks it on the first training batch.
* ``validation_step`` returns ``{"preds": logits, "target": labels}`` or the logits; what it does not return is
  read from the batch (see :func:`~lightning_balance.experiments.recorder.logits_and_target`).

A run whose training loss or validation loss becomes NaN or infinite is **diverged**: it stops at the next
validation, is flagged in its :class:`RunResult`, and the summary statistics leave it out.

Only rank 0 records: every rank computes the synchronised metrics, rank 0 keeps the curve points and builds the
results; the other ranks return an empty result.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule

from lightning_balance.datamodule import BalancedDataModule
from lightning_balance.experiments.checks import (
    _check_optimizers,
    apply_optimizer,
    build_config_value,
    check_datamodule,
    check_datamodule_class,
    check_model_class,
    check_trainer_arguments,
)
from lightning_balance.experiments.progress import RunProgress, load_average, quiet_lightning
from lightning_balance.experiments.recorder import LOGIT_STRATEGIES, Recorder
from lightning_balance.experiments.settings import (
    CLASS_COUNT_STRATEGIES,
    METRICS,
    RISE_WINDOW,
    CompareSettings,
    ComponentSpec,
    ConfigurationError,
    RunSpec,
    default_runs,
    jsonable,
    unimax_cap,
)
from lightning_balance.functional.tail_recall import SPLITS, _split_masks

__all__ = [
    "CompareResult",
    "RunResult",
    "best_point",
    "compare",
    "default_model",
    "resolve_split",
    "run_once",
    "smoothed_rise",
]

#: Settings that define what a comparison measures: a resumed comparison must agree on every one of them.
CONFIGURATION_KEYS = (
    "datamodule", "datamodule_args", "model", "model_args", "runs", "group_counts", "seeds", "max_steps",
    "val_every", "tail_target", "many", "few", "split", "trainer_kwargs", "optimizer", "lr_scheduler",
)


# ----------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one (strategy, seed) run measured; ``curve`` holds one point per validation.

    ``final`` holds the metrics of the last validation, ``best`` those of the validation with the highest
    ``best_metric`` (and its ``step``). ``diverged`` is true when the training loss or the validation loss became
    NaN or infinite; ``diverged_at`` is the step of the validation that found it (the run stopped there).
    ``tail_loss_rise`` is :func:`smoothed_rise` of the tail validation loss. ``epochs_per_group`` is how many passes
    over every group's training data the run made, ``load_average`` the machine's one-minute load average when the
    run started and ended.
    """

    name: str
    label: str
    strategy: str
    seed: int
    steps: int
    samples_seen: int
    wall_time_s: float
    world_size: int
    final: dict[str, float]
    steps_to_tail_target: Optional[int]
    tail_loss_min: float
    tail_loss_min_step: Optional[int]
    curve: list[dict[str, Any]]
    diverged: bool = False
    diverged_at: Optional[int] = None
    tail_loss_rise: Optional[float] = None
    best: dict[str, float] = field(default_factory=dict)
    best_metric: Optional[str] = None
    epochs_per_group: Optional[list[float]] = None
    load_average: Optional[list[Optional[float]]] = None
    mixing: Optional[list[dict[str, Any]]] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        """A run read back from ``results.json`` (``null`` read as NaN where a number is expected)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("final", "best"):
            values[key] = {k: (math.nan if v is None else v) for k, v in (values.get(key) or {}).items()}
        values["curve"] = [{k: (math.nan if v is None and k in METRICS else v) for k, v in p.items()}
                           for p in values.get("curve") or []]
        if values.get("tail_loss_min") is None:
            values["tail_loss_min"] = math.nan
        return cls(**values)

    def metrics(self, select: str = "final") -> dict[str, float]:
        """The metrics the summary reports: ``final`` or ``best`` (the final ones when no best was recorded)."""
        return self.best if select == "best" and self.best else self.final


def smoothed_rise(values: Sequence[float], window: int = RISE_WINDOW) -> float:
    """How far a curve ends above its minimum, after a trailing mean over ``window`` points (NaN points skipped).

    A noisy curve always ends above its lowest point; the mean takes most of that noise out, so what is left is
    the trend (e.g. the tail overfitting). NaN for a curve without finite points.

    Example:
        >>> noisy = [3.0, 2.0, 1.0, 1.2, 0.8, 1.2, 0.8, 1.2]  # flat after step 3, with noise
        >>> round(smoothed_rise(noisy, window=1), 3)  # raw: ends 0.4 above its lowest point
        0.4
        >>> round(smoothed_rise(noisy, window=2), 3)  # the wiggle averages out
        0.0
        >>> round(smoothed_rise([3.0, 2.0, 1.0, 1.5, 2.0, 2.5], window=2), 3)  # a real rise stays
        1.0
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan
    window = max(1, int(window))
    smooth = [float(np.mean(finite[max(0, i - window + 1) : i + 1])) for i in range(len(finite))]
    return smooth[-1] - min(smooth)


def best_point(curve: Sequence[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """The metrics of the validation point with the highest ``metric`` (the earliest of ties), with its ``step``.

    Example:
        >>> best_point([{"step": 10, "f1_tail": 0.5}, {"step": 20, "f1_tail": 0.7}, {"step": 30, "f1_tail": 0.7}],
        ...            "f1_tail")
        {'step': 20, 'f1_tail': 0.7}
    """
    scored = [(float(p[metric]), -int(p["step"]), i) for i, p in enumerate(curve)
              if p.get(metric) is not None and math.isfinite(p[metric])]
    if not scored:
        return {}
    point = curve[max(scored)[2]]
    return {"step": int(point["step"]), **{k: float(point[k]) for k in METRICS if k in point}}


@dataclass
class CompareResult:
    """All runs of a comparison, their per-strategy summary and the settings that produced them.

    ``complete`` is false for a comparison interrupted before its last run (or still running, in the files
    written after each run): ``runs`` then holds the finished runs only.
    """

    settings: dict[str, Any]
    runs: list[RunResult]
    summary: list[dict[str, Any]]
    complete: bool = True

    @property
    def is_empty(self) -> bool:
        """True on ranks other than 0, which record nothing."""
        return not self.runs

    @property
    def all_diverged(self) -> bool:
        """True when there are runs and every one of them diverged."""
        return bool(self.runs) and all(run.diverged for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "settings": self.settings, "summary": self.summary,
                "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareResult:
        """A comparison read back from ``results.json``."""
        return cls(dict(data.get("settings") or {}), [RunResult.from_dict(r) for r in data.get("runs") or []],
                   list(data.get("summary") or []), bool(data.get("complete", False)))


# ----------------------------------------------------------------------------------------------------------
# The model and the Trainer of a run
# ----------------------------------------------------------------------------------------------------------
def _data_sizes(datamodule: BalancedDataModule) -> dict[str, int]:
    """``num_features`` and ``num_classes`` of the DataModule's data, for a model sized from it."""
    sample = datamodule.train_dataset[0]  # type: ignore[index]
    if isinstance(sample, Mapping):
        raise ConfigurationError(
            f"`--datamodule` {type(datamodule).__name__} yields mappings (keys {sorted(map(str, sample))}), but"
            " the default model (MLPClassifier) trains on (inputs, labels) tuples. Give your own model with"
            " --model (its training_step reads the mapping), or make the dataset return (x, y)."
        )
    num_features = getattr(datamodule, "num_features", None)
    if num_features is None:
        num_features = int(torch.as_tensor(sample[0]).numel())
    num_classes = getattr(datamodule, "num_classes", None)
    if num_classes is None:
        labels = sample[1] if isinstance(sample, (list, tuple)) and len(sample) > 1 else None
        num_classes = datamodule.num_groups if datamodule.label_groups is not False or labels is None else None
    if num_classes is None:
        raise ConfigurationError(
            f"`--datamodule` {type(datamodule).__name__}: its groups are not the labels, so the number of classes"
            " of the default model cannot be read from them. Give the DataModule a `num_classes` attribute, or"
            " --model-args num_classes=N."
        )
    return {"num_features": int(num_features), "num_classes": int(num_classes)}


def _default_model_spec() -> ComponentSpec:
    from lightning_balance.experiments.models import MLPClassifier

    return ComponentSpec(MLPClassifier, {}, "--model", size_from_data=True)


def default_model(datamodule: BalancedDataModule, **kwargs: Any) -> LightningModule:
    """An :class:`~lightning_balance.experiments.models.MLPClassifier` sized from the DataModule's data.

    ``kwargs`` (``hidden``, ``lr``...) go to the model and win over the sizes read from the data.
    """
    spec = _default_model_spec()
    spec.kwargs.update(kwargs)
    return build_model(spec, datamodule)[0]


def build_model(model: Optional[ComponentSpec], datamodule: BalancedDataModule) -> tuple[LightningModule, str]:
    """The model of a run and its name; ``datamodule`` must be set up when the model is sized from the data."""
    spec = model if model is not None else _default_model_spec()
    sizes = _data_sizes(datamodule) if spec.size_from_data else {}
    module = spec.build(**{k: v for k, v in sizes.items() if k not in spec.kwargs})
    return module, f"{spec.cls.__module__}.{spec.cls.__qualname__}"


def _loggers(log_dir: Optional[Path], spec: RunSpec, seed: int) -> Any:
    """A CSV logger (and a TensorBoard one when it is installed) writing ``log_dir/<name>/seed_<seed>``."""
    if log_dir is None:
        return False
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.loggers.tensorboard import _TENSORBOARD_AVAILABLE

    loggers: list[Any] = [CSVLogger(log_dir, name=spec.name, version=f"seed_{seed}")]
    if _TENSORBOARD_AVAILABLE:
        loggers.append(TensorBoardLogger(log_dir, name=spec.name, version=f"seed_{seed}", default_hp_metric=False))
    return loggers


def _trainer_kwargs(
    settings: CompareSettings, callbacks: Sequence[Callback], logger: Any = False
) -> dict[str, Any]:
    """Keyword arguments of one run's Trainer: the runner's defaults, then ``settings.trainer_kwargs``, built afresh."""
    user = {key: build_config_value(value, f"trainer.{key}") for key, value in settings.trainer_kwargs.items()}
    accumulate = int(user.get("accumulate_grad_batches", 1))
    kwargs: dict[str, Any] = dict(
        max_steps=settings.max_steps,
        # Lightning counts validation intervals in batches; `val_every` is in optimizer steps.
        val_check_interval=settings.val_every * accumulate,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=max(1, settings.val_every),
        deterministic=False,
    )
    kwargs.update(user)
    extra = user.get("callbacks") or []
    kwargs["callbacks"] = [*callbacks, *(extra if isinstance(extra, (list, tuple)) else [extra])]
    return kwargs


def _policy_callback(spec: RunSpec, settings: CompareSettings) -> Optional[Callback]:
    """The :class:`~lightning_balance.AdaptiveMixing` callback of an adaptive run."""
    if spec.policy is None:
        return None
    from lightning_balance.callbacks.adaptive_mixing import AdaptiveMixing
    from lightning_balance.policies import GroupDRO, OnlineMixing, OverfitGuard

    args = dict(spec.policy_args)
    if spec.policy == "overfit_guard":
        return AdaptiveMixing(OverfitGuard(**args), on="validation")
    if spec.policy == "online_mixing":
        # EXP3 explores uniformly until its rate sqrt(ln K / (K t)) falls below 1/K, after K ln K updates (23 for
        # ten groups): updating five times per validation interval lets it leave uniform sampling within the run.
        return AdaptiveMixing(OnlineMixing(**args), every_n_steps=max(1, settings.val_every // 5))
    if spec.policy == "group_dro":
        # Group DRO updates its group weights at every step (Sagawa et al.).
        return AdaptiveMixing(GroupDRO(**args), every_n_steps=1)
    raise ConfigurationError(f"Unknown mixing policy {spec.policy!r} of run {spec.name!r}.")


# ----------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------
def run_once(
    spec: RunSpec,
    seed: int,
    data: ComponentSpec,
    model: Optional[ComponentSpec],
    settings: CompareSettings,
    on_step: Optional[Callable[[int], None]] = None,
    log_dir: Optional[Union[str, Path]] = None,
) -> Optional[RunResult]:
    """Train one strategy with one seed and return its measurements (``None`` on ranks other than 0).

    ``settings.split`` must be ``"absolute"`` or ``"quantile"`` (:func:`compare` resolves ``"auto"``).

    Raises:
        KeyboardInterrupt: training was interrupted (Ctrl-C); Lightning's own ``SystemExit`` is turned back into it.
    """
    results = _train(spec, seed, data, model, settings, on_step, log_dir)
    return results[0] if results else None


def is_twin(spec: RunSpec, of: RunSpec) -> bool:
    r"""Whether ``spec`` trains exactly like ``of`` and differs only in how it predicts.

    Post-hoc logit adjustment trains like natural sampling (the same sample stream, a plain mean loss) and
    subtracts :math:`\tau \log \pi` from the logits at prediction, so it is measured from the natural run.
    """
    plain = of.saln_keep is None and of.policy is None and not of.options
    return spec.strategy == "logit_adjust_posthoc" and of.strategy == "natural" and plain and spec.policy is None


def _posthoc(tau: float) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    def transform(datamodule: Any, logits: torch.Tensor) -> torch.Tensor:
        from lightning_balance.losses import class_priors, posthoc_logit_adjustment

        return posthoc_logit_adjustment(logits, class_priors(datamodule.group_counts), tau)

    return transform


def _train(
    spec: RunSpec,
    seed: int,
    data: ComponentSpec,
    model: Optional[ComponentSpec],
    settings: CompareSettings,
    on_step: Optional[Callable[[int], None]] = None,
    log_dir: Optional[Union[str, Path]] = None,
    twins: Sequence[RunSpec] = (),
    check_logits: bool = False,
) -> list[RunResult]:
    """Train ``spec`` with ``seed``; its result first, then one per twin measured from the same training."""
    pl.seed_everything(seed, verbose=False)
    datamodule = data.build(**spec.datamodule_kwargs, seed=seed)
    if model is None or model.size_from_data:
        datamodule.setup("fit")
    module, model_name = build_model(model, datamodule)
    apply_optimizer(module, settings)
    policy = _policy_callback(spec, settings)
    feed = policy is not None and spec.policy == "overfit_guard"
    transforms = {twin.name: _posthoc(float(dict(twin.options).get("tau", 1.0))) for twin in twins}
    recorder = Recorder(settings, model_name, on_step, feed_policy=feed, twins=transforms, check_logits=check_logits)
    callbacks: list[Callback] = [recorder] + ([policy] if policy is not None else [])
    saln = None
    if spec.saln_keep is not None:
        from lightning_balance.callbacks.saln import SALN

        saln = SALN(keep=spec.saln_keep, method=spec.saln_method, seed=seed)  # type: ignore[arg-type]
        callbacks.append(saln)
    logger = _loggers(Path(log_dir), spec, seed) if log_dir is not None else False
    if "logger" in settings.trainer_kwargs:
        logger = False  # the user's own, from trainer_kwargs
    trainer = pl.Trainer(**_trainer_kwargs(settings, callbacks, logger))
    load = [load_average()]
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule)
        if trainer.global_step % settings.val_every:
            # The last validation came before the end; every rank validates again, as the metrics sync.
            trainer.validate(module, datamodule=datamodule, verbose=False)
    except SystemExit:
        if recorder.interrupted:
            raise KeyboardInterrupt from None
        raise
    wall = time.perf_counter() - start
    load.append(load_average())
    if not trainer.is_global_zero:
        return []
    samples = recorder.samples_seen if saln is None else int(saln.samples_kept) * trainer.world_size
    results = []
    for run, curve in [(spec, recorder.curve), *((twin, recorder.twin_curve(twin.name)) for twin in twins)]:
        result = _run_result(run, seed, recorder, curve, trainer, samples, wall, settings)
        result.load_average = load
        if policy is not None:
            result.mixing = [dict(entry) for entry in policy.history]  # type: ignore[attr-defined]
        results.append(result)
    return results


def _run_result(
    spec: RunSpec, seed: int, recorder: Recorder, curve: list[dict[str, Any]], trainer: pl.Trainer, samples: int,
    wall: float, settings: CompareSettings,
) -> RunResult:
    final = {name: curve[-1][name] for name in METRICS} if curve else {name: math.nan for name in METRICS}
    reached = next((p["step"] for p in curve if p["recall_tail"] >= settings.tail_target), None)
    tail_losses = [(p["loss_tail"], p["step"]) for p in curve if math.isfinite(p["loss_tail"])]
    tail_min, tail_min_step = min(tail_losses) if tail_losses else (math.nan, None)
    metric = ranking_metric(settings.preferred_metric, curve)
    diverged = recorder.diverged_at is not None
    return RunResult(
        name=spec.name, label=spec.label, strategy=spec.strategy, seed=seed, steps=int(trainer.global_step),
        samples_seen=int(samples), wall_time_s=wall, world_size=trainer.world_size, final=final,
        steps_to_tail_target=reached, tail_loss_min=tail_min, tail_loss_min_step=tail_min_step, curve=curve,
        diverged=diverged, diverged_at=recorder.diverged_at,
        tail_loss_rise=smoothed_rise([p["loss_tail"] for p in curve]),
        best={} if diverged else best_point(curve, metric), best_metric=metric,
        epochs_per_group=recorder.epochs_per_group,
    )


def ranking_metric(metric: str, curve: Sequence[Mapping[str, Any]]) -> str:
    """``metric``, or tail recall in place of tail F1 when F1 was not measured (groups that are not the labels)."""
    if metric.startswith("f1_") and curve and all(not math.isfinite(p.get(metric, math.nan)) for p in curve):
        return "recall_" + metric[3:]
    return metric


# ----------------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------------
def resolve_split(counts: Sequence[int], settings: CompareSettings) -> tuple[str, Optional[str]]:
    """The split to measure with, and a warning when it leaves head, medium or tail without groups.

    ``"auto"`` is the absolute split (``many``/``few``) when it gives every part a group, else the quantile split.

    Example:
        >>> resolve_split([500, 300, 60, 10], CompareSettings(split="auto"))
        ('absolute', None)
        >>> resolve_split([90, 60, 40, 30], CompareSettings(split="auto"))[0]
        'quantile'
        >>> print(resolve_split([90, 60, 40, 30], CompareSettings(split="absolute"))[1])
        The absolute split (head: more than 100 training examples, tail: fewer than 20) leaves the head and the tail
        without groups (training counts [90, 60, 40, 30]): their metrics are NaN. Use --split quantile (thirds of the
        groups by count), or --many / --few.
    """
    counts_t = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    absolute = _split_masks(counts_t, settings.many, settings.few, "absolute")
    empty = [name for name in SPLITS if not bool(absolute[name].any())]
    if settings.split == "auto":
        return ("absolute", None) if not empty else ("quantile", None)
    if settings.split == "quantile":
        masks = _split_masks(counts_t, settings.many, settings.few, "quantile")
        empty = [name for name in SPLITS if not bool(masks[name].any())]
        if not empty:
            return "quantile", None
        return "quantile", (f"The quantile split leaves the {' and the '.join(empty)} without groups (training counts"
                            f" {[int(c) for c in counts]}): their metrics are NaN.")
    if not empty:
        return "absolute", None
    return "absolute", (
        f"The absolute split (head: more than {settings.many:g} training examples, tail: fewer than"
        f" {settings.few:g}) leaves the {' and the '.join(empty)} without groups (training counts"
        f" {[int(c) for c in counts]}): their metrics are NaN. Use --split quantile (thirds of the groups by"
        " count), or --many / --few."
    )


def _probe_trainer(settings: CompareSettings) -> pl.Trainer:
    """One Trainer with the runs' arguments, so that a setting it refuses fails before anything is written."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return pl.Trainer(**_trainer_kwargs(settings, []))
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        given = {k: v for k, v in settings.trainer_kwargs.items() if k != "callbacks"}
        raise ConfigurationError(
            f"The Trainer refuses the settings {given!r}: {str(err).rstrip('.')}. Check --accelerator, --devices,"
            " --strategy, --num-nodes, --precision and the `trainer:` section of --config."
        ) from err


@contextlib.contextmanager
def _keep_sigint_handler() -> Iterator[None]:
    """Restore the Ctrl-C handler afterwards: Lightning ignores Ctrl-C once it has caught one."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _check_runs(runs: Sequence[RunSpec], probe: BalancedDataModule, settings: CompareSettings,
                argument: str, strict: bool = True) -> tuple[list[RunSpec], list[str]]:
    """The runs that can be compared on this data, and the names of those left out (only when not ``strict``)."""
    dropped: list[str] = []
    if probe.label_groups is False:
        needs = [run.name for run in runs if run.strategy in CLASS_COUNT_STRATEGIES]
        if needs and not strict:
            dropped = needs
            runs = [run for run in runs if run.name not in needs]
        elif needs:
            keep = [run.name for run in runs if run.strategy not in CLASS_COUNT_STRATEGIES]
            raise ConfigurationError(
                f"`--strategies` includes {', '.join(needs)}, which weight or shift the loss by per-class counts,"
                f" but `{argument}` {type(probe).__name__} balances groups that are not the class labels"
                f" (domains, languages: {probe.num_groups} groups). Leave them out, e.g. --strategies"
                f" {','.join(keep) or 'natural,upsample,upweight,cooldown'}."
            )
    if not runs:
        raise ConfigurationError(
            f"No strategy of the comparison can run on `{argument}` {type(probe).__name__}: {', '.join(dropped)} need"
            " the groups to be the class labels. Give --strategies natural,upsample,upweight,cooldown."
        )
    return list(runs), dropped


def _resolve_runs(runs: Sequence[RunSpec], probe: BalancedDataModule, settings: CompareSettings,
                  world_size: int) -> list[RunSpec]:
    """The runs with UniMax's cap set from the run's budget where it was left to the runner."""
    accumulate = int(settings.trainer_kwargs.get("accumulate_grad_batches", 1))
    budget = settings.max_steps * probe.batch_size * world_size * accumulate
    resolved = []
    for run in runs:
        options = dict(run.options)
        if run.strategy == "unimax" and options.get("max_group_epochs") is None:
            options["max_group_epochs"] = unimax_cap(budget, int(probe.group_counts.sum()))
            run = replace(run, options=tuple(options.items()))
        resolved.append(run)
    return resolved


def _check_resume(previous: CompareResult, described: Mapping[str, Any]) -> None:
    saved = previous.settings
    differ = [key for key in CONFIGURATION_KEYS if jsonable(saved.get(key)) != jsonable(described.get(key))]
    if differ:
        shown = "; ".join(f"{key}: {saved.get(key)!r} there, {described.get(key)!r} now" for key in differ[:4])
        raise ConfigurationError(
            f"`--resume` {saved.get('out', 'the folder')!s} holds a comparison of another configuration ({shown}). Give"
            " the same arguments as the interrupted comparison (they are in the `settings` of its results.json), or"
            " start a new comparison with --out."
        )


def compare(
    data: ComponentSpec,
    model: Optional[ComponentSpec] = None,
    runs: Optional[Sequence[RunSpec]] = None,
    settings: Optional[CompareSettings] = None,
    progress: bool = True,
    on_checked: Optional[Callable[[CompareResult], None]] = None,
    on_run: Optional[Callable[[CompareResult], None]] = None,
    log_dir: Optional[Union[str, Path]] = None,
    previous: Optional[CompareResult] = None,
    strict_runs: bool = True,
) -> CompareResult:
    """Train every run of ``runs`` with every seed of ``settings`` and summarise them.

    Args:
        data: the DataModule class (a :class:`~lightning_balance.BalancedDataModule` subclass) and its arguments;
            ``strategy``, ``temperature`` and ``seed`` are set per run.
        model: the LightningModule class and its arguments; ``None`` sizes an
            :class:`~lightning_balance.experiments.models.MLPClassifier` from the data (so does a spec with
            ``size_from_data=True``, with its arguments).
        runs: the strategies; defaults to :func:`~lightning_balance.experiments.settings.default_runs`.
        settings: steps, seeds and measurement; defaults to :class:`CompareSettings`.
        progress: show one rich progress bar over all runs (on rank 0).
        on_checked: called with the (empty) result once the data, the model, the optimizer and the Trainer
            settings have passed their checks, before any training (e.g. to create the output directory only for a
            comparison that can run).
        on_run: called on rank 0 after every finished run with the results so far (``complete=False`` until the
            last one), e.g. to write them, so that an interrupted comparison keeps its finished runs.
        log_dir: every run logs through a Lightning ``CSVLogger`` (and a ``TensorBoardLogger`` when TensorBoard
            is installed) into ``log_dir/<name>/seed_<seed>``; ``None`` logs nothing (unless ``trainer_kwargs``
            names a logger).
        previous: a comparison of the same configuration that was interrupted (``CompareResult.from_dict`` of its
            ``results.json``): its finished runs are kept and not trained again.
        strict_runs: refuse runs that weight the loss per class when the groups are not the labels; with
            ``False`` they are left out (and named in ``settings["dropped_runs"]``).

    Returns:
        The results; ``complete`` is false when the comparison was interrupted (Ctrl-C): it holds the runs that
        finished before, and ``settings["interrupted"]`` names the run that was cut.

    Raises:
        ConfigurationError: the data, the model or the settings do not meet the contract in the module docstring,
            or ``previous`` is a comparison of another configuration.

    Example:
        >>> from lightning_balance.experiments.datasets import LongTailDigits
        >>> result = compare(ComponentSpec(LongTailDigits), runs=default_runs(only=["upweight"]),
        ...                  settings=CompareSettings(seeds=[0], max_steps=8, val_every=4), progress=False)
        >>> [(p["step"], round(p["recall_macro"], 2) >= 0) for p in result.runs[0].curve]
        [(4, True), (8, True)]
        >>> result.summary[0]["samples_seen_mean"]  # 8 steps of 32 samples
        256.0
        >>> result.complete, result.runs[0].diverged
        (True, False)
    """
    from lightning_balance.experiments.summary import summarize

    settings = settings or CompareSettings()
    runs = list(runs) if runs is not None else default_runs()
    if not runs:
        raise ConfigurationError("Expected at least one run to compare, but got none.")
    check_datamodule_class(data.cls, data.argument)
    if model is not None:
        check_model_class(model.cls, model.argument)
    check_trainer_arguments(settings.trainer_kwargs)
    with quiet_lightning():
        probe = data.build(strategy="natural", temperature=1.0, seed=int(settings.seeds[0]))
        check_datamodule(probe, data.argument)
        counts = [int(c) for c in probe.group_counts]
        requested_split = settings.split
        split, split_warning = resolve_split(counts, settings)
        settings = replace(settings, split=split)
        runs, dropped = _check_runs(runs, probe, settings, data.argument, strict_runs)
        # A wrong --model-args or optimizer setting fails here, before any training.
        module, _ = build_model(model, probe)
        _check_optimizers(module, settings, model.argument if model is not None else "--model")
        world_size = _probe_trainer(settings).world_size
        runs = _resolve_runs(runs, probe, settings, world_size)
        described: dict[str, Any] = {
            "datamodule": data.name,
            "datamodule_args": jsonable(data.kwargs),
            "model": model.name if model is not None else _default_model_spec().name,
            "model_args": jsonable(model.kwargs) if model is not None else {},
            "runs": [r.describe() for r in runs],
            "group_counts": counts,
            "group_names": list(probe.group_names),
            "label_groups": probe.label_groups is not False,
            **jsonable(asdict(settings)),
            "split_requested": requested_split,
            "split_warning": split_warning,
            "preferred_metric": settings.preferred_metric,
            "dropped_runs": dropped,
        }
        if previous is not None:
            _check_resume(previous, described)
        finished = {(r.name, r.seed): r for r in (previous.runs if previous is not None else [])}
        results: list[RunResult] = []
        # A run that trains like another one is measured from it (see `is_twin`).
        twins = {run.name: [t for t in runs if t is not run and is_twin(t, run)] for run in runs}
        measured_by = {t.name for ts in twins.values() for t in ts}
        plan = [(spec, seed) for spec in runs if spec.name not in measured_by for seed in settings.seeds]
        described["runs_planned"] = len(runs) * len(settings.seeds)
        order = {run.name: i for i, run in enumerate(runs)}
        interrupted: Optional[str] = None

        def current(complete: bool) -> CompareResult:
            settings_now = {**described, "runs_finished": len(results)}
            if interrupted is not None:
                settings_now["interrupted"] = interrupted
            ordered = sorted(results, key=lambda r: (order.get(r.name, len(order)), settings.seeds.index(r.seed)))
            return CompareResult(settings_now, ordered,
                                 summarize(ordered, settings.tail_target, settings.select) if ordered else [],
                                 complete)

        if on_checked is not None:
            on_checked(current(complete=False))
        needs_logits = any(run.strategy in LOGIT_STRATEGIES for run in runs)
        with _keep_sigint_handler(), RunProgress(len(plan), settings.max_steps, progress) as bar:
            for i, (spec, seed) in enumerate(plan):
                pending = [t for t in twins.get(spec.name, []) if (t.name, seed) not in finished]
                results += [finished[(t.name, seed)] for t in twins.get(spec.name, []) if (t.name, seed) in finished]
                if (spec.name, seed) in finished:
                    results.append(finished[(spec.name, seed)])
                    if not pending:
                        continue
                    spec, pending = pending[0], []  # the twin trains on its own
                bar.start_run(f"{spec.name} seed {seed} [{i + 1}/{len(plan)}]", i)
                try:
                    measured = _train(spec, seed, data, model, settings, bar.at_step, log_dir, pending,
                                      check_logits=needs_logits and i == 0)
                except KeyboardInterrupt:
                    interrupted = f"{spec.name} seed {seed}"
                    break
                if measured:
                    results += measured
                    if on_run is not None:
                        on_run(current(complete=False))
            if interrupted is None:
                bar.start_run(f"{len(plan)} trainings done", len(plan))
    return current(complete=interrupted is None)
