r"""
What a comparison runs
^^^^^^^^^^^^^^^^^^^^^^

The vocabulary of ``lightning-balance compare``: :class:`RunSpec` (one strategy: a DataModule setting, and
optionally SALN or an adaptive mixing policy), :func:`default_runs` (the strategies by name, with the same
temperature everywhere), :class:`CompareSettings` (seeds, run length, how results are measured and chosen) and
:class:`ComponentSpec` (a class and its arguments, built afresh for every run).

Every strategy of a comparison trains the same seeds for the same number of optimizer steps, so strategies are
compared seed by seed (:mod:`lightning_balance.experiments.summary`).

============================  =================================================================================
name                          run
============================  =================================================================================
``natural``                   every example equally often (T = 1), plain mean loss
``upsample``                  group *i* drawn with :math:`p_i \propto n_i^{1/T}`
``upweight``                  natural sampling, loss of group *i* times :math:`p_i(T)/p_i(1)`
``cooldown``                  upsample at T, then T = 1 after ``cooldown_at`` of training (Li et al., 2025)
``upsample_t100``             upsample at T = 100 (nearly uniform over groups), the paper's static baseline
``unimax``                    UniMax (Chung et al., 2023): uniform over groups, at most N passes over each
``class_balanced``            class-balanced loss, :math:`\beta = 0.9999` (Cui et al., 2019)
``drw``                       deferred re-weighting: class-balanced weights in the last 20% (Cao et al., 2019)
``logit_adjust``              logit-adjusted loss, :math:`\tau = 1` (Menon et al., 2021)
``logit_adjust_posthoc``      plain training, logits adjusted at prediction, :math:`\tau = 1` (Menon et al.)
``saln``                      natural sampling with SALN batch selection (``saln_keep``)
``overfit_guard``             upsample at T, sampled naturally once a group overfits (:class:`OverfitGuard`)
``online_mixing``             EXP3 over the group probabilities from T = 1 (:class:`OnlineMixing`)
``group_dro``                 natural sampling, Group DRO loss weights (:class:`GroupDRO`)
============================  =================================================================================

The last three are the *adaptive* runs (``--adaptive``): an :class:`~lightning_balance.AdaptiveMixing` callback
applies the policy during training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from lightning_balance.functional.tail_recall import SPLITS, _split_arg_validation
from lightning_balance.schedules import Cooldown, TemperatureLike
from lightning_balance.temperature import _validate_temperature

__all__ = [
    "ADAPTIVE_NAMES",
    "DEFAULT_TASK",
    "EMBEDDED_TASKS",
    "embedded_task",
    "CLASS_COUNT_STRATEGIES",
    "DEFAULT_NAMES",
    "METRICS",
    "PREFERENCES",
    "RUN_NAMES",
    "CompareSettings",
    "ComponentSpec",
    "ConfigurationError",
    "RunSpec",
    "check_run_arguments",
    "default_runs",
    "global_rank",
    "parse_strategies",
]

#: Metrics of every validation point, in the order the files show them.
METRICS = tuple(
    [f"recall_{s}" for s in (*SPLITS, "macro", "worst")]
    + [f"f1_{s}" for s in (*SPLITS, "macro", "worst")]
    + [f"loss_{s}" for s in (*SPLITS, "all")]
)
#: Static strategies, in the order they run and are shown.
STATIC_NAMES = (
    "natural", "upsample", "upweight", "cooldown", "upsample_t100", "unimax", "class_balanced", "drw",
    "logit_adjust", "logit_adjust_posthoc",
)
#: Runs with an adaptive mixing policy (``--adaptive``).
ADAPTIVE_NAMES = ("overfit_guard", "online_mixing", "group_dro")
#: Every run ``compare`` knows, by name.
RUN_NAMES = (*STATIC_NAMES, "saln", *ADAPTIVE_NAMES)
#: The runs of ``lightning-balance compare`` without ``--strategies``: the paper's four, and post-hoc logit
#: adjustment, which trains like natural sampling and is measured from its runs at no extra training. Each of the
#: other baselines costs as much as a strategy (a default run of MNIST-1D takes 10 to 20 s on a shared 2-core
#: machine), so four trainings x 3 seeds keep the default comparison under five minutes; ``--strategies all``
#: adds upsample_t100, unimax, class_balanced, drw and logit_adjust.
DEFAULT_NAMES = ("natural", "upsample", "upweight", "cooldown", "logit_adjust_posthoc")
#: Strategies that weight or shift the loss per class: they need the groups to be the class labels.
CLASS_COUNT_STRATEGIES = ("class_balanced", "drw", "logit_adjust", "logit_adjust_posthoc")
#: What ``--prefer`` can ask for, and the metric each one ranks by.
PREFERENCES = {"balanced": "f1_tail", "tail": "f1_tail", "worst": "recall_worst", "head": "recall_head"}
#: What ``--select`` can report: the last validation of every run, or its best one by the preferred metric.
SELECTIONS = ("final", "best")
#: The embedded long-tailed tasks (``--data``): the DataModule, the model (``None``: an MLP sized from the data),
#: the run length each was chosen for (``max_steps``, ``val_every``, or ``settings``: where to read them) and the
#: tail recall whose first step is reported (``tail_target``). Nothing is downloaded.
#:
#: * ``mnist1d``: long-tailed MNIST-1D with a 1-D CNN (:mod:`lightning_balance.experiments.mnist1d`), chosen by
#:   measurement in ``benchmarks/results/embedded_default.md``: the head pays for balancing there. Its tail recall
#:   stays below 0.2 under every strategy in 600 steps, so the tail target is 0.1.
#: * ``digits``: scikit-learn's 8x8 digits cut to a long tail, with an MLP: every strategy recalls its head
#:   perfectly.
EMBEDDED_TASKS: dict[str, dict[str, Any]] = {
    "mnist1d": {"datamodule": "lightning_balance.experiments.mnist1d.LongTailMNIST1D",
                "model": "lightning_balance.experiments.mnist1d.CNN1DClassifier",
                "settings": "lightning_balance.experiments.mnist1d:COMPARE_SETTINGS", "tail_target": 0.1},
    "digits": {"datamodule": "lightning_balance.experiments.datasets.LongTailDigits", "model": None,
               "max_steps": 1000, "val_every": 20, "tail_target": 0.5},
}
#: The task of ``lightning-balance compare`` and ``paper`` without ``--data``.
DEFAULT_TASK = "mnist1d"
#: Strategies whose processes would not report back to the runner.
_SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_notebook", "ddp_fork", "ddp_spawn_find_unused_parameters_true")
#: Validations over which the tail validation loss is averaged before its rise is measured.
RISE_WINDOW = 5
#: Trainer arguments the runner sets from ``CompareSettings`` (``max_steps``, ``val_every``), never directly.
_RUN_LENGTH_KEYS = ("max_steps", "val_check_interval")
#: Trainer arguments that would end or cut a run other than after ``max_steps`` optimizer steps, with the values
#: that leave the run alone, and the fix.
_RUN_CONFLICTS: dict[str, tuple[tuple[Any, ...], str]] = {
    "max_epochs": ((None, -1), "every run trains for the same number of optimizer steps: give `max_steps`"
                               " (--max-steps) instead"),
    "min_epochs": ((None, 0), "every run trains for exactly `max_steps` optimizer steps: remove it"),
    "max_time": ((None,), "every run trains for the same number of optimizer steps: give `max_steps` (--max-steps)"
                          " instead"),
    "fast_dev_run": ((False, 0), "for a smoke run use --quick (or --max-steps 10)"),
    "overfit_batches": ((0, 0.0), "it replaces the sampler that the strategies differ by: remove it"),
    "limit_train_batches": ((None, 1.0), "it cuts the epochs that the samplers plan: use `samples_per_epoch` of the"
                                         " DataModule instead"),
    "check_val_every_n_epoch": ((None,), "validation follows --val-every optimizer steps across epochs: set it to"
                                         " null"),
}


class ConfigurationError(ValueError):
    """A setting the comparison cannot run with; the message names the argument, the value and the fix."""


def embedded_task(name: str) -> dict[str, Any]:
    """The embedded task ``name`` of :data:`EMBEDDED_TASKS`, its run length read from where it is kept.

    Example:
        >>> task = embedded_task("digits")
        >>> task["max_steps"], task["val_every"], task["tail_target"]
        (1000, 20, 0.5)
    """
    if name not in EMBEDDED_TASKS:
        raise ConfigurationError(
            f"Expected `--data` to be one of {', '.join(sorted(EMBEDDED_TASKS))}, but got {name!r}."
        )
    task = dict(EMBEDDED_TASKS[name])
    source = task.pop("settings", None)
    if source is not None:
        from lightning_balance.experiments.checks import import_object

        task.update({k: v for k, v in import_object(source, "--data").items() if k in ("max_steps", "val_every")})
    return task


def global_rank() -> int:
    """This process's global rank: Lightning reads it from the environment a DDP launch sets, else 0."""
    return int(getattr(rank_zero_only, "rank", 0))


# ----------------------------------------------------------------------------------------------------------
# What to run
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One strategy of the comparison.

    Args:
        name: label in tables and files (``"upsample"``, ``"cooldown"``...).
        strategy: the :class:`~lightning_balance.BalancedDataModule` strategy.
        temperature: fixed temperature or schedule.
        saln_keep: when set, train with :class:`~lightning_balance.callbacks.SALN` keeping this fraction.
        saln_method: the SALN ``method``: ``"spectral"`` (SALN itself) or a baseline at the same kept fraction
            (``"random"``, ``"loss"``).
        options: further DataModule arguments of this run, as ``(name, value)`` pairs (``beta``, ``tau``,
            ``drw_start``, ``max_group_epochs``, ``order``).
        policy: an adaptive mixing policy, ``"overfit_guard"``, ``"online_mixing"`` or ``"group_dro"``, applied by
            :class:`~lightning_balance.AdaptiveMixing`.
        policy_args: the policy's arguments as ``(name, value)`` pairs.

    Example:
        >>> RunSpec("drw", "drw", options=(("drw_start", 0.8),)).label
        'CB β=0.9999 last 20%'
    """

    name: str
    strategy: str
    temperature: TemperatureLike = 1.0
    saln_keep: Optional[float] = None
    saln_method: str = "spectral"
    options: tuple[tuple[str, Any], ...] = ()
    policy: Optional[str] = None
    policy_args: tuple[tuple[str, Any], ...] = ()

    @property
    def datamodule_kwargs(self) -> dict[str, Any]:
        """The DataModule arguments of this run: strategy, temperature and the options."""
        return {"strategy": self.strategy, "temperature": self.temperature, **dict(self.options)}

    @property
    def needs_class_counts(self) -> bool:
        """Whether the strategy weights or shifts the loss per class (the groups must be the labels)."""
        return self.strategy in CLASS_COUNT_STRATEGIES

    @property
    def label(self) -> str:
        """The setting in words, e.g. ``"T=5"``, ``"T=5→1 at 50%"`` or ``"LA loss τ=1"``."""
        options = dict(self.options)
        t = self.temperature
        if self.policy is not None:
            args = dict(self.policy_args)
            base = "T=1" if not isinstance(t, (int, float)) or float(t) == 1.0 else f"T={_num(float(t))}"
            if self.policy == "overfit_guard":
                return f"guard p={args.get('patience', 3)} s={args.get('smoothing', 0.5):g}, {base}"
            if self.policy == "online_mixing":
                return f"EXP3 from {base}"
            return f"DRO η={args.get('step_size', 0.01):g}"
        if isinstance(t, Cooldown):
            return f"T={_num(t.start)}→{_num(t.end)} at {t.at:.0%}"
        if callable(t):
            return repr(t)
        if self.strategy == "unimax":
            cap = options.get("max_group_epochs")
            return "UniMax N=auto" if cap is None else f"UniMax N={cap:.3g}"
        if self.strategy == "class_balanced":
            return f"CB β={options.get('beta', 0.9999):g}"
        if self.strategy == "drw":
            return f"CB β={options.get('beta', 0.9999):g} last {1 - options.get('drw_start', 0.8):.0%}"
        if self.strategy == "logit_adjust":
            return f"LA loss τ={options.get('tau', 1.0):g}"
        if self.strategy == "logit_adjust_posthoc":
            return f"LA post hoc τ={options.get('tau', 1.0):g}"
        label = f"T={_num(float(t))}" if self.strategy != "natural" else "T=1"
        if self.saln_keep is None:
            return label
        method = "SALN" if self.saln_method == "spectral" else f"{self.saln_method} selection"
        return label + f", {method} keep {self.saln_keep:g}"

    def describe(self) -> dict[str, Any]:
        """The run as plain values, for ``results.json`` and for checking a resumed comparison."""
        return {"name": self.name, "strategy": self.strategy, "temperature": self.label,
                "saln_keep": self.saln_keep, "saln_method": self.saln_method if self.saln_keep is not None else None,
                "options": {k: _plain(v) for k, v in self.options},
                "policy": self.policy, "policy_args": {k: _plain(v) for k, v in self.policy_args}}


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def _num(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def check_run_arguments(temperature: Any, cooldown_at: Any) -> tuple[float, float]:
    """Return ``(temperature, cooldown_at)`` as floats, or raise :class:`ConfigurationError` saying how to fix them.

    Example:
        >>> check_run_arguments(5, 0.5)
        (5.0, 0.5)
        >>> check_run_arguments(0, 0.5)
        Traceback (most recent call last):
        ...
        lightning_balance.experiments.settings.ConfigurationError: Expected argument `temperature` to be > 0 ...
    """
    try:
        temperature = _validate_temperature(temperature, "temperature")
    except (TypeError, ValueError) as err:
        raise ConfigurationError(
            f"{err} Give a positive temperature (or inf), e.g. --temperature 5."
        ) from err
    if (isinstance(cooldown_at, bool) or not isinstance(cooldown_at, (int, float, np.integer, np.floating))
            or math.isnan(cooldown_at) or not 0.0 <= cooldown_at <= 1.0):
        raise ConfigurationError(
            f"Expected argument `cooldown_at` to be the fraction of training in [0, 1] after which Cooldown samples"
            f" at T=1, but got {cooldown_at!r}. Give a fraction, e.g. --cooldown-at 0.5."
        )
    return temperature, float(cooldown_at)


def parse_strategies(text: Optional[str], argument: str = "--strategies") -> Optional[list[str]]:
    """The run names of a ``--strategies`` value: comma-separated names, ``all`` (every static strategy) or
    ``default``; ``None`` for no value.

    Example:
        >>> parse_strategies("natural, cooldown")
        ['natural', 'cooldown']
        >>> parse_strategies("all") == list(STATIC_NAMES)
        True
    """
    if text is None:
        return None
    names: list[str] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        expanded = {"all": STATIC_NAMES, "default": DEFAULT_NAMES, "adaptive": ADAPTIVE_NAMES}.get(word, (word,))
        names += [name for name in expanded if name not in names]
    unknown = [name for name in names if name not in RUN_NAMES]
    if unknown or not names:
        raise ConfigurationError(
            f"Expected `{argument}` to name runs among {', '.join(RUN_NAMES)} (or `all`, `default`, `adaptive`),"
            f" but got {text!r}. Separate several with commas, e.g. {argument} natural,upsample,cooldown."
        )
    return names


#: UniMax's cap when none is given, in multiples of the passes natural sampling makes over the data in the run.
UNIMAX_CAP_FACTOR = 5.0


def unimax_cap(budget: int, num_examples: int, factor: float = UNIMAX_CAP_FACTOR) -> float:
    """UniMax's cap N for a run of ``budget`` samples over ``num_examples``: ``factor`` times the natural passes.

    UniMax (Chung et al., 2023) was made for budgets smaller than the data, where a cap of one pass binds. A
    comparison trains many epochs, and a cap below the natural number of passes caps every group, which is natural
    sampling again. Five times the natural passes binds on the small groups and leaves the large ones uniform.

    Example:
        >>> unimax_cap(budget=38400, num_examples=1236)  # 31 natural passes
        155.34
    """
    return round(factor * budget / max(num_examples, 1), 2)


def default_runs(
    temperature: float = 5.0,
    cooldown_at: float = 0.5,
    *,
    saln_keep: Optional[float] = None,
    saln_method: str = "spectral",
    only: Optional[Sequence[str]] = None,
    adaptive: bool = False,
    unimax_epochs: Optional[float] = None,
    overfit_patience: int = 3,
    overfit_smoothing: float = 0.5,
) -> list[RunSpec]:
    """The strategies of a comparison, every one at the same temperature ``T`` where it has one.

    Without ``only`` these are the paper's comparison, natural, upsample (T), upweight (T) and Cooldown (T → 1);
    ``only`` names any runs of :data:`RUN_NAMES` (see the module docstring), ``adaptive`` adds the adaptive runs.

    Args:
        temperature: ``T`` of upsampling, upweighting, the start of Cooldown and of OverfitGuard.
        cooldown_at: fraction of training after which Cooldown samples at ``T = 1``.
        saln_keep: add a natural-sampling run with SALN keeping this fraction of every batch.
        saln_method: the selection ``method`` of that run (``"spectral"`` is SALN).
        only: names of the runs, in any order (they run in the order of :data:`RUN_NAMES`).
        adaptive: add ``overfit_guard``, ``online_mixing`` and ``group_dro``.
        unimax_epochs: UniMax's cap N, in passes over a group's data; ``None`` lets :func:`compare` set it to
            five times the passes natural sampling makes over the data in the run (see :func:`unimax_cap`).
        overfit_patience: ``patience`` of :class:`~lightning_balance.policies.OverfitGuard`.
        overfit_smoothing: ``smoothing`` of :class:`~lightning_balance.policies.OverfitGuard`.

    Example:
        >>> [(r.name, r.label) for r in default_runs(5.0)]
        [('natural', 'T=1'), ('upsample', 'T=5'), ('upweight', 'T=5'), ('cooldown', 'T=5→1 at 50%')]
        >>> [r.label for r in default_runs(only=["logit_adjust_posthoc", "upsample_t100"])]
        ['T=100', 'LA post hoc τ=1']
    """
    temperature, cooldown_at = check_run_arguments(temperature, cooldown_at)
    if unimax_epochs is not None and (isinstance(unimax_epochs, bool) or not isinstance(unimax_epochs, (int, float))
                                      or not math.isfinite(unimax_epochs) or unimax_epochs <= 0):
        raise ConfigurationError(
            f"Expected `unimax_epochs` to be UniMax's cap, a positive number of passes over a group's data, but got"
            f" {unimax_epochs!r}. Try --unimax-epochs 10."
        )
    if isinstance(overfit_patience, bool) or not isinstance(overfit_patience, int) or overfit_patience < 1:
        raise ConfigurationError(
            f"Expected `overfit_patience` to be a positive number of validations, but got {overfit_patience!r}."
            " Try --overfit-patience 3."
        )
    if (isinstance(overfit_smoothing, bool) or not isinstance(overfit_smoothing, (int, float))
            or not 0 < overfit_smoothing <= 1):
        raise ConfigurationError(
            f"Expected `overfit_smoothing` to be the weight of the newest validation in (0, 1], but got"
            f" {overfit_smoothing!r}. Try --overfit-smoothing 0.5."
        )
    catalog = {
        "natural": RunSpec("natural", "natural", 1.0),
        "upsample": RunSpec("upsample", "upsample", temperature),
        "upweight": RunSpec("upweight", "upweight", temperature),
        "cooldown": RunSpec("cooldown", "upsample", Cooldown(temperature, 1.0, cooldown_at)),
        "upsample_t100": RunSpec("upsample_t100", "upsample", 100.0),
        "unimax": RunSpec("unimax", "unimax", 1.0, options=(("max_group_epochs", unimax_epochs),)),
        "class_balanced": RunSpec("class_balanced", "class_balanced", options=(("beta", 0.9999),)),
        "drw": RunSpec("drw", "drw", options=(("beta", 0.9999), ("drw_start", 0.8))),
        "logit_adjust": RunSpec("logit_adjust", "logit_adjust", options=(("tau", 1.0),)),
        "logit_adjust_posthoc": RunSpec("logit_adjust_posthoc", "logit_adjust_posthoc", options=(("tau", 1.0),)),
        "overfit_guard": RunSpec("overfit_guard", "upsample", temperature, policy="overfit_guard",
                                 policy_args=(("patience", overfit_patience), ("smoothing", float(overfit_smoothing)))),
        "online_mixing": RunSpec("online_mixing", "upsample", 1.0, policy="online_mixing"),
        "group_dro": RunSpec("group_dro", "natural", 1.0, policy="group_dro", policy_args=(("step_size", 0.01),)),
    }
    if saln_keep is not None:
        if isinstance(saln_keep, bool) or not isinstance(saln_keep, (int, float)) or not 0.0 < saln_keep <= 1.0:
            raise ConfigurationError(
                f"Expected `saln_keep` to be the fraction of each batch SALN trains on, in (0, 1], but got"
                f" {saln_keep!r}. Try --saln-keep 0.5."
            )
        catalog["saln"] = RunSpec("saln", "natural", 1.0, saln_keep=saln_keep, saln_method=saln_method)
    if only is None:
        names = ["natural", "upsample", "upweight", "cooldown"] + (["saln"] if saln_keep is not None else [])
    else:
        names = list(only)
        unknown = [name for name in names if name not in RUN_NAMES]
        if unknown or not names:
            raise ConfigurationError(
                f"Expected `only` to name runs among {RUN_NAMES}, but got {list(only)!r}."
                " Separate several with commas, e.g. --strategies natural,upsample."
            )
        if "saln" in names and saln_keep is None:
            raise ConfigurationError("`only` names 'saln' but SALN is off: add --saln (and --saln-keep) to run it.")
    if adaptive:
        names += [name for name in ADAPTIVE_NAMES if name not in names]
    return [catalog[name] for name in RUN_NAMES if name in names]


@dataclass
class CompareSettings:
    """How long and how each run trains, and how it is measured.

    Args:
        seeds: seeds of the runs; each seed fixes the model's initialisation and the sampling plan, and is
            shared by all strategies so that they are compared pairwise.
        max_steps: optimizer steps per run.
        val_every: validate every this many optimizer steps (and always at the end).
        tail_target: report the first step at which tail recall reached this value.
        many: head threshold of the group split (head: more than ``many`` training examples).
        few: tail threshold (tail: fewer than ``few`` training examples).
        split: ``"absolute"`` (thresholds above), ``"quantile"`` (thirds of the groups by count) or ``"auto"``
            (absolute when it leaves head, medium and tail each non-empty, else quantile).
        prefer: what the recommendation ranks by: ``"balanced"`` (the best tail F1 among the strategies whose head
            recall is within 1 point of natural sampling's), ``"tail"`` (tail F1), ``"worst"`` (worst-group
            recall) or ``"head"`` (head recall).
        select: ``"final"`` reports every run's last validation; ``"best"`` its best validation by the preferred
            metric (measured on the same validation set: an optimistic estimate).
        trainer_kwargs: passed to every ``Trainer`` (``accelerator``, ``devices``, ``strategy``,
            ``gradient_clip_val``, ``accumulate_grad_batches``, ``callbacks``...). Entries written as in a
            LightningCLI config, ``{"class_path": ..., "init_args": ...}``, are built afresh for every run. The run
            length is ``max_steps`` and ``val_every``; arguments that would end a run otherwise (``max_epochs``,
            ``max_time``, ``limit_train_batches``...) are refused.
        optimizer: the optimizer of every run as a LightningCLI ``optimizer:`` section (``{"class_path":
            "torch.optim.Adam", "init_args": {"lr": 0.01}}`` or a class name); it replaces the model's
            ``configure_optimizers`` as LightningCLI does. ``None`` keeps the model's own.
        lr_scheduler: a LightningCLI ``lr_scheduler:`` section, used with ``optimizer``.
    """

    seeds: Sequence[int] = (0, 1, 2)
    max_steps: int = 1500
    val_every: int = 50
    tail_target: float = 0.5
    many: float = 100
    few: float = 20
    split: str = "absolute"
    prefer: str = "balanced"
    select: str = "final"
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: Optional[Any] = None
    lr_scheduler: Optional[Any] = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "val_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Expected `{name}` to be a positive integer, but got {value!r}.")
        self.trainer_kwargs = dict(self.trainer_kwargs)
        for key in _RUN_LENGTH_KEYS:
            if key in self.trainer_kwargs:
                own = "max_steps" if key == "max_steps" else "val_every"
                raise ConfigurationError(
                    f"`trainer_kwargs` sets `{key}`={self.trainer_kwargs[key]!r}: the runner sets it from"
                    f" `{own}` of the settings. Give `{own}` instead (--{own.replace('_', '-')})."
                )
        for key, (neutral, fix) in _RUN_CONFLICTS.items():
            if key in self.trainer_kwargs and not _is_one_of(self.trainer_kwargs[key], neutral):
                raise ConfigurationError(
                    f"Cannot honour the Trainer argument `trainer.{key}`={self.trainer_kwargs[key]!r} in a"
                    f" comparison: {fix}."
                )
        accumulate = self.trainer_kwargs.get("accumulate_grad_batches", 1)
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ConfigurationError(
                f"Expected the Trainer argument `accumulate_grad_batches` to be a positive integer, but got"
                f" {accumulate!r}."
            )
        if self.lr_scheduler is not None and self.optimizer is None:
            raise ConfigurationError(
                f"`lr_scheduler` {self.lr_scheduler!r} is given without `optimizer`: a LightningCLI scheduler"
                " section needs an `optimizer:` section beside it (e.g. `optimizer: {class_path: torch.optim.SGD,"
                " init_args: {lr: 0.05}}`)."
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigurationError(f"Expected `seeds` to be distinct integers, at least one, but got {self.seeds!r}.")
        if not 0.0 <= float(self.tail_target) <= 1.0:
            raise ConfigurationError(
                f"Expected `tail_target` to be a recall in [0, 1], but got {self.tail_target!r}. Try 0.5."
            )
        try:
            _split_arg_validation(self.many, self.few, "absolute" if self.split == "auto" else self.split)
        except ValueError as err:
            raise ConfigurationError(
                f"{err} Head groups have more than `many` (--many) training examples and tail groups fewer than"
                " `few` (--few): give non-negative counts with few <= many, e.g. --many 100 --few 20; or"
                " --split quantile."
            ) from err
        if self.prefer not in PREFERENCES:
            raise ConfigurationError(
                f"Expected `--prefer` to be one of {', '.join(PREFERENCES)}, but got {self.prefer!r}. Give e.g."
                " --prefer balanced (the best tail F1 with head recall within 1 point of natural sampling's)."
            )
        if self.select not in SELECTIONS:
            raise ConfigurationError(
                f"Expected `--select` to be `final` or `best`, but got {self.select!r}. Give --select final (the last"
                " validation of every run) or --select best (its best validation by the --prefer metric)."
            )
        if self.select == "best" and self.val_every >= self.max_steps:
            raise ConfigurationError(
                f"`--select best` picks every run's best validation during training, but with `--val-every`"
                f" {self.val_every} and `--max-steps` {self.max_steps} it validates only at the end. Give a"
                f" --val-every below --max-steps (e.g. --val-every {max(1, self.max_steps // 20)}), or --select final."
            )
        strategy = self.trainer_kwargs.get("strategy")
        if isinstance(strategy, str) and strategy in _SPAWNING_STRATEGIES:
            raise ConfigurationError(
                f"`strategy={strategy!r}` trains in spawned processes that do not report back to the runner. Use"
                " --strategy ddp (it re-launches the command on every device and rank 0 writes the results)."
            )
        self.seeds = [int(s) for s in self.seeds]

    @property
    def preferred_metric(self) -> str:
        """The metric ``prefer`` ranks by (``f1_tail``, ``recall_worst`` or ``recall_head``)."""
        return PREFERENCES[self.prefer]


def _is_one_of(value: Any, allowed: Sequence[Any]) -> bool:
    # `False == 0` in Python: compare types too, so that `fast_dev_run: 1` is not taken for `False`.
    return any(value is a or (type(value) is type(a) and value == a) for a in allowed)


@dataclass
class ComponentSpec:
    """A class to build with keyword arguments, e.g. a DataModule class and its ``init_args``.

    With ``size_from_data=True`` (a model), the arguments ``num_features`` and ``num_classes`` that ``kwargs``
    leaves out are read from the DataModule when the runner builds it.

    Example:
        >>> from lightning_balance.experiments.datasets import LongTailDigits
        >>> spec = ComponentSpec(LongTailDigits, {"batch_size": 16})
        >>> spec.build(strategy="upweight").batch_size
        16
    """

    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    argument: str = "--datamodule"
    size_from_data: bool = False

    @property
    def name(self) -> str:
        name = f"{self.cls.__module__}.{self.cls.__qualname__}"
        return name + " (sized from the data)" if self.size_from_data else name

    def build(self, **overrides: Any) -> Any:
        """An instance with ``kwargs`` updated by ``overrides``; a bad argument raises :class:`ConfigurationError`."""
        kwargs = {**self.kwargs, **overrides}
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as err:
            args_flag = f"{self.argument}-args"
            hint = (
                " The class must accept `strategy`, `temperature` and `seed` and pass them on to"
                " BalancedDataModule.__init__ (e.g. through **kwargs)."
                if self.argument == "--datamodule" and isinstance(err, TypeError) else ""
            )
            raise ConfigurationError(
                f"Cannot build `{self.argument}` {self.cls.__module__}.{self.cls.__qualname__}(**{kwargs!r}):"
                f" {str(err).rstrip('.')}. Check {args_flag}.{hint}"
            ) from err


def jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold replaced by its ``repr``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
