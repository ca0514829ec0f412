r"""
Command line
^^^^^^^^^^^^

``lightning-balance`` (or ``python -m lightning_balance``) has three jobs:

* ``compare``: answer "which balancing strategy, for my data?". Trains the same model under natural sampling,
  upsampling, upweighting, Cooldown and the loss-side baselines (``--strategies``; ``--adaptive`` adds the
  adaptive mixing policies, ``--saln`` SALN) over several seeds, prints a table, a recommendation for what
  ``--prefer`` asks and how sure it is, and writes CSV, JSON, markdown, Lightning logs and plots. Without
  arguments it runs on the embedded long-tailed data (``--data``).
* ``paper``: reproduce the checks of Li et al. (2025) on the embedded data and write a report.
* ``fit`` / ``validate`` / ``test``: single runs through Lightning's ``LightningCLI``, configured by YAML
  (see ``configs/``), without Lightning's advertisements and deprecation warnings; ``fit`` ends with the final
  head, medium and tail recall. ``--threads N`` sets torch's CPU threads there too.

Every subcommand imports user classes from the current directory first, as ``python -m`` does. Values of
``--model-args``, ``--datamodule-args`` and ``--config`` are read as LightningCLI (jsonargparse) reads them:
``1e-3`` is a float. A bad setting stops the command with exit status 2 and a message, before anything is
written; a comparison where every run diverged exits with 1, an interrupted one (Ctrl-C) with 130 after writing
the finished runs (``--resume DIR`` continues it).

Examples::

    lightning-balance compare
    lightning-balance compare --strategies all --adaptive --prefer worst
    lightning-balance compare --datamodule my_project.data.MyData --datamodule-args root=/data batch_size=64 \
        --model my_project.model.MyModel --model-args '{"lr": 0.01}' --devices 4 --strategy ddp --accelerator gpu
    lightning-balance compare --resume balance_runs/compare-20260101-120000
    lightning-balance paper --out paper_run
    lightning-balance fit --config configs/digits_cooldown.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from lightning_balance.experiments.checks import (
    build_config_value,
    check_datamodule_class,
    check_model_class,
    check_output_dir,
    check_trainer_arguments,
    ensure_cwd_importable,
    import_object,
)
from lightning_balance.experiments.settings import (
    DEFAULT_TASK,
    EMBEDDED_TASKS,
    PREFERENCES,
    CompareSettings,
    ComponentSpec,
    ConfigurationError,
    check_run_arguments,
    default_runs,
    embedded_task,
    global_rank,
    parse_strategies,
)

__all__ = ["build_parser", "lightning_cli", "main", "parse_kwargs"]

PROG = "lightning-balance"
EMBEDDED = EMBEDDED_TASKS
DEFAULT_DATA = DEFAULT_TASK
DEFAULT_DATAMODULE = EMBEDDED[DEFAULT_DATA]["datamodule"]
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
#: Trainer settings that have their own command-line flag, which wins over ``--config``.
_HARDWARE_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision")
#: DataModule arguments that ``compare`` sets itself, run by run.
_PER_RUN_KEYS = ("strategy", "temperature", "seed")
#: Sections of a LightningCLI config that ``compare`` reads.
_CONFIG_SECTIONS = ("data", "model", "trainer", "optimizer", "lr_scheduler", "seed_everything", "ckpt_path")
#: Exit status of a comparison where every run diverged, and of an interrupted one (128 + SIGINT).
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130
#: Run length of a DataModule given by --datamodule or --config without its own.
_DEFAULT_STEPS, _DEFAULT_VAL_EVERY = 1000, 20


# ----------------------------------------------------------------------------------------------------------
# Argument helpers
# ----------------------------------------------------------------------------------------------------------
def _load_value(text: str) -> Any:
    """``text`` read as LightningCLI reads a value: jsonargparse's YAML loader, where ``1e-3`` is a float."""
    from jsonargparse import get_loader

    return get_loader("yaml")(text)


def parse_kwargs(values: Optional[Sequence[str]], argument: str) -> dict[str, Any]:
    """Keyword arguments from a JSON object or from ``key=value`` words (values read as LightningCLI reads them).

    Example:
        >>> parse_kwargs(['{"lr": 0.01, "hidden": 32}'], "--model-args")
        {'lr': 0.01, 'hidden': 32}
        >>> parse_kwargs(["lr=1e-3", "name=digits", "flags=[1, 2]", "on=true"], "--model-args")
        {'lr': 0.001, 'name': 'digits', 'flags': [1, 2], 'on': True}
        >>> parse_kwargs(["lr"], "--model-args")
        Traceback (most recent call last):
        ...
        lightning_balance.experiments.settings.ConfigurationError: Cannot read `--model-args` 'lr': expected ...
    """
    import yaml

    if not values:
        return {}
    fix = "expected key=value (e.g. lr=0.01) or one JSON object (e.g. '{\"lr\": 0.01}')"
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            parsed = json.loads(values[0])
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"Cannot read `{argument}` {values[0]!r}: invalid JSON ({err}); {fix}.") from err
        if not isinstance(parsed, dict):
            raise ConfigurationError(f"Cannot read `{argument}` {values[0]!r}: {fix}.")
        return parsed
    kwargs: dict[str, Any] = {}
    for word in values:
        key, sep, raw = word.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigurationError(f"Cannot read `{argument}` {word!r}: {fix}.")
        try:
            kwargs[key.strip()] = _load_value(raw) if raw.strip() else ""
        except yaml.YAMLError:
            kwargs[key.strip()] = raw
    return kwargs


def _read_config(path: str) -> dict[str, Any]:
    """The sections of a LightningCLI YAML, values read as LightningCLI reads them."""
    import yaml

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        config = _load_value(text) if text.strip() else {}
    except OSError as err:
        raise ConfigurationError(
            f"Cannot read `--config` {path!r}: {err.strerror}. Give the path of a YAML file."
        ) from err
    except yaml.YAMLError as err:
        raise ConfigurationError(f"Cannot read `--config` {path!r}: invalid YAML ({err}).") from err
    if not isinstance(config, dict):
        raise ConfigurationError(
            f"`--config` {path!r} is not a mapping with `data:`, `model:` and `trainer:` sections."
        )
    unknown = [key for key in config if key not in _CONFIG_SECTIONS]
    if unknown:
        raise ConfigurationError(
            f"`--config` {path!r} has sections that `compare` cannot use: {', '.join(f'`{k}:`' for k in unknown)}."
            f" It reads {', '.join(f'`{k}:`' for k in _CONFIG_SECTIONS)}; remove the others (or run the file with"
            f" `{PROG} fit`)."
        )
    for section in ("data", "model"):
        entry = config.get(section)
        if entry is not None and not (isinstance(entry, dict) and "class_path" in entry):
            raise ConfigurationError(
                f"`--config` {path!r}: the `{section}:` section needs a `class_path` (and `init_args`), as"
                f" `lightning-balance fit` configs write it; got {entry!r}."
            )
    trainer = config.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):
        raise ConfigurationError(f"`--config` {path!r}: the `trainer:` section must be a mapping, but got {trainer!r}.")
    if config.get("ckpt_path") is not None:
        raise ConfigurationError(
            f"`--config` {path!r} sets `ckpt_path: {config['ckpt_path']}`, but every run of a comparison trains from"
            " its seed's initialisation. Remove `ckpt_path`."
        )
    return config


def _int_or_str(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def _config_trainer(
    config: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, str], Optional[int], Optional[int]]:
    """Trainer arguments of every run from ``--config`` and the hardware flags (which win).

    Returns:
        The Trainer arguments, where each came from (for messages), and the run length and validation interval
        the config sets (``trainer.max_steps``; ``trainer.val_check_interval`` in optimizer steps), or ``None``.
    """
    trainer = dict(config.get("trainer") or {})
    sources = {key: f"trainer.{key} in --config" for key in trainer}
    max_steps = trainer.pop("max_steps", None)
    interval = trainer.pop("val_check_interval", None)
    accumulate = trainer.get("accumulate_grad_batches", 1)
    val_every = None
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConfigurationError(
                f"`trainer.val_check_interval` {interval!r} in --config: a comparison validates every so many"
                " optimizer steps, so it needs a positive integer (a fraction of an epoch cannot be honoured). Give"
                " an integer, or --val-every."
            )
        if isinstance(accumulate, int) and accumulate >= 1 and interval % accumulate:
            raise ConfigurationError(
                f"`trainer.val_check_interval` {interval} in --config counts batches, which is not a whole number of"
                f" optimizer steps with `accumulate_grad_batches` {accumulate}. Give a multiple of {accumulate}, or"
                " --val-every."
            )
        val_every = interval // accumulate if isinstance(accumulate, int) and accumulate >= 1 else interval
    if max_steps is not None and max_steps != -1 and (
            isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigurationError(
            f"Expected `trainer.max_steps` in --config to be a positive integer, but got {max_steps!r}."
        )
    if max_steps == -1:
        max_steps = None
    for key in _HARDWARE_KEYS:
        if getattr(args, key) is not None:
            trainer[key] = getattr(args, key)
            sources[key] = f"--{key.replace('_', '-')}"
    return trainer, sources, max_steps, val_every



# ----------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------
def _add_run_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    runs = parser.add_argument_group("runs")
    runs.add_argument("--temperature", type=float, default=5.0,
                      help="T of upsample, upweight and the start of Cooldown (default: %(default)s)")
    runs.add_argument("--cooldown-at", type=float, default=0.5,
                      help="fraction of training after which Cooldown samples at T=1 (default: %(default)s)")
    runs.add_argument("--seeds", type=int, default=3, help="seeds per strategy: 0..N-1 (default: %(default)s)")
    runs.add_argument("--max-steps", type=int, default=None,
                      help="optimizer steps per run (default: trainer.max_steps of --config, else the embedded"
                           f" task's, else {_DEFAULT_STEPS})")
    runs.add_argument("--val-every", type=int, default=None,
                      help="validate every N optimizer steps (default: trainer.val_check_interval of --config, else"
                           f" the embedded task's, else {_DEFAULT_VAL_EVERY})")
    runs.add_argument("--tail-target", type=float, default=None,
                      help="report the first step at which tail recall reached this (default: the embedded task's,"
                           " 0.1 for mnist1d and 0.5 for digits; else 0.5)")
    runs.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default: the DataModule's)")
    runs.add_argument("--quick", action="store_true", help="a smoke test: 1 seed, 200 steps, validate every 20")
    split = parser.add_argument_group("head / medium / tail groups (by training count)")
    split.add_argument("--split", choices=("auto", "absolute", "quantile"), default="auto",
                       help="absolute thresholds (--many, --few), thirds of the groups by count, or auto: absolute"
                            " when it leaves no part empty, else quantile (default: %(default)s)")
    split.add_argument("--many", type=float, default=100, help="head: more than this many examples (default: 100)")
    split.add_argument("--few", type=float, default=20, help="tail: fewer than this many examples (default: 20)")
    hardware = parser.add_argument_group("hardware (passed to the Trainer)")
    hardware.add_argument("--accelerator", default=None, help="cpu, gpu, auto... (default: Lightning's)")
    hardware.add_argument("--devices", type=_int_or_str, default=None, help="e.g. 4, '0,1' or auto")
    hardware.add_argument("--strategy", default=None, help="e.g. ddp (one process per device)")
    hardware.add_argument("--num-nodes", type=int, default=None)
    hardware.add_argument("--precision", default=None, help="e.g. bf16-mixed")
    hardware.add_argument("--threads", type=_int_or_str, default=None,
                          help="CPU threads for torch, in every run (default: 1 for the embedded data, whose small"
                               " model trains fastest on one thread; torch's default otherwise)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=None, help=f"output directory (default: ./balance_runs/{command}-<time>)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-balance`` parser with its ``compare`` and ``paper`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Balanced training on long-tailed data: which balancing strategy, for your data?",
        epilog=f"`{PROG} fit|validate|test --config cfg.yaml` runs Lightning's LightningCLI (see `{PROG} fit --help`);"
               " `--threads N` sets torch's CPU threads there too.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{compare,paper,fit,validate,test}")

    cmp = commands.add_parser(
        "compare", help="train the balancing strategies over seeds, compare them and recommend one",
        description="Train the same model under natural sampling, upsampling (T), upweighting (T), Cooldown"
                    " (T, then 1) and the loss-side baselines over several seeds, with the same budget; print a"
                    " table and a recommendation, and write CSV, JSON, markdown, Lightning logs and plots.",
    )
    source = cmp.add_argument_group("data and model")
    source.add_argument("--data", choices=sorted(EMBEDDED), default=None,
                        help=f"an embedded long-tailed task (default: {DEFAULT_DATA}, when neither --datamodule nor"
                             " --config names one)")
    source.add_argument("--datamodule", default=None, help="import path of a BalancedDataModule subclass")
    source.add_argument("--datamodule-args", nargs="*", default=None, metavar="KEY=VALUE",
                        help="its arguments: key=value words or one JSON object")
    source.add_argument("--model", default=None,
                        help="import path of a LightningModule whose training_step returns balanced_loss(...) or"
                             " balanced_cross_entropy(...) (default: the embedded task's, else an MLP sized from"
                             " the data)")
    source.add_argument("--model-args", nargs="*", default=None, metavar="KEY=VALUE",
                        help="its arguments: key=value words or one JSON object")
    source.add_argument("--config", default=None,
                        help="a LightningCLI YAML (as for `fit`): its data, model, trainer and optimizer sections are"
                             " used; settings a comparison cannot honour are refused by name")
    which = cmp.add_argument_group("strategies")
    which.add_argument("--strategies", default=None, metavar="NAMES",
                       help="comma-separated runs among natural, upsample, upweight, cooldown, upsample_t100,"
                            " unimax, class_balanced, drw, logit_adjust, logit_adjust_posthoc, or `all` of them"
                            " (default: natural,upsample,upweight,cooldown,logit_adjust_posthoc); saln with --saln;"
                            " overfit_guard, online_mixing, group_dro (or `adaptive`)")
    which.add_argument("--only", default=None, help=argparse.SUPPRESS)  # the name of --strategies until 0.2
    which.add_argument("--adaptive", action="store_true",
                       help="add the adaptive mixing runs: overfit_guard (OverfitGuard on validation, from T),"
                            " online_mixing (EXP3) and group_dro (Group DRO)")
    which.add_argument("--overfit-patience", type=int, default=3,
                       help="OverfitGuard: validations in a row a group's loss must rise (default: %(default)s)")
    which.add_argument("--overfit-smoothing", type=float, default=0.5,
                       help="OverfitGuard: weight of the newest validation in its moving averages (default:"
                            " %(default)s)")
    which.add_argument("--unimax-epochs", type=float, default=None,
                       help="UniMax's cap N in passes over a group's data (default: 5 x the natural passes of the"
                            " run)")
    which.add_argument("--saln", action="store_true", help="add SALN batch selection (natural sampling)")
    which.add_argument("--saln-keep", type=float, default=None,
                       help="with --saln: fraction of each batch SALN keeps (default: 0.5)")
    which.add_argument("--saln-method", choices=("spectral", "random", "loss"), default=None,
                       help="with --saln: selection score, spectral (SALN, the default) or a baseline at the same kept"
                            " fraction")
    answer = cmp.add_argument_group("the answer")
    answer.add_argument("--prefer", default="balanced", metavar="{" + ",".join(PREFERENCES) + "}",
                        help="what the recommendation optimises: balanced (the best tail F1 among the strategies whose"
                             " head recall is within 1 point of natural's), tail (tail F1), worst (worst-group"
                             " recall), head (head recall) (default: %(default)s)")
    answer.add_argument("--select", default="final", metavar="{final,best}",
                        help="report every run's final validation, or its best one by the --prefer metric (default:"
                             " %(default)s)")
    answer.add_argument("--resume", default=None, metavar="DIR",
                        help="continue the interrupted comparison in DIR (same arguments), skipping finished runs")
    _add_run_arguments(cmp, "compare")

    paper = commands.add_parser(
        "paper", help="reproduce the paper's checks on the embedded data and write a report",
        description="Theorem 1 (full-batch equivalence), Theorem 2 (gradient variance vs F(T)), tail convergence"
                    " and overfitting, and Cooldown, on the embedded long-tailed data.",
    )
    paper.add_argument("--num-batches", type=int, default=4000,
                       help="mini-batches drawn per sampler to measure gradient variance (default: %(default)s)")
    paper.add_argument("--data", choices=sorted(EMBEDDED), default=DEFAULT_DATA,
                       help="the embedded task of checks (c) and (d) (default: %(default)s)")
    _add_run_arguments(paper, "paper")
    for name in LIGHTNING_COMMANDS[:3]:
        commands.add_parser(name, help=f"LightningCLI `{name}` with a BalancedDataModule (see `{PROG} {name} --help`)",
                            add_help=False)
    return parser


# ----------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------
def _check_arguments(args: argparse.Namespace) -> None:
    """Reject values that cannot run before anything is built or written."""
    check_run_arguments(args.temperature, args.cooldown_at)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigurationError(
            f"Expected `--batch-size` to be a positive number of samples per process, but got {args.batch_size}."
            " Give e.g. --batch-size 32, or leave it out to use the DataModule's."
        )
    _check_threads(args.threads)


def _settings(
    args: argparse.Namespace,
    trainer_kwargs: dict[str, Any],
    *,
    steps: int = _DEFAULT_STEPS,
    val_every: int = _DEFAULT_VAL_EVERY,
    tail_target: float = 0.5,
    optimizer: Any = None,
    lr_scheduler: Any = None,
) -> CompareSettings:
    """The run settings: command-line flags first, then ``steps`` and ``val_every`` (the config's or the task's)."""
    if args.max_steps is None:
        args.max_steps = steps
    if args.val_every is None:
        args.val_every = val_every
    if args.tail_target is None:
        args.tail_target = tail_target
    if args.quick:
        args.seeds, args.max_steps, args.val_every = 1, min(args.max_steps, 200), min(args.val_every, 20)
    if args.seeds < 1:
        raise ConfigurationError(f"Expected `--seeds` to be a positive number of seeds, but got {args.seeds}.")
    for name in ("max_steps", "val_every"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigurationError(
                f"Expected `{flag}` to be a positive number of optimizer steps, but got {getattr(args, name)}."
            )
    for name in _HARDWARE_KEYS:
        if getattr(args, name) is not None:
            trainer_kwargs[name] = getattr(args, name)
    return CompareSettings(
        seeds=list(range(args.seeds)), max_steps=args.max_steps, val_every=args.val_every,
        tail_target=args.tail_target, many=args.many, few=args.few, split=args.split,
        prefer=getattr(args, "prefer", "balanced"), select=getattr(args, "select", "final"),
        trainer_kwargs=trainer_kwargs, optimizer=optimizer, lr_scheduler=lr_scheduler,
    )


def _output_dir(args: argparse.Namespace, command: str, create: bool = True) -> Optional[Path]:
    """The output directory, checked (and created unless ``create=False``) on rank 0.

    ``None`` on the other ranks: they write nothing.
    """
    if global_rank() != 0:
        return None
    out = args.out or Path("balance_runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    return check_output_dir(out, "--out", create=create)


def _check_threads(threads: Any) -> Optional[int]:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigurationError(
            f"Expected `--threads` to be a positive number of CPU threads, but got {threads!r}. Give e.g."
            " --threads 1."
        )
    return threads


def _set_threads(threads: Optional[int], embedded: bool = False) -> int:
    """Set torch's intra-op threads (``threads``, else 1 for the embedded tasks); returns the number in force."""
    import torch

    threads = threads if threads is not None else (1 if embedded else None)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _check_saln(args: argparse.Namespace) -> None:
    given = [flag for flag, value in (("--saln-keep", args.saln_keep), ("--saln-method", args.saln_method))
             if value is not None]
    if given and not args.saln:
        raise ConfigurationError(
            f"{' and '.join(f'`{flag}`' for flag in given)} {'was' if len(given) == 1 else 'were'} given without"
            " `--saln`, so no SALN run would use it. Add --saln to run SALN, or leave it out."
        )


def _check_answer(args: argparse.Namespace) -> None:
    if args.prefer not in PREFERENCES:
        raise ConfigurationError(
            f"Expected `--prefer` to be one of {', '.join(PREFERENCES)}, but got {args.prefer!r}. Give e.g. --prefer"
            " balanced (the best tail F1 among the strategies whose head recall is within 1 point of natural's)."
        )
    if args.select not in ("final", "best"):
        raise ConfigurationError(
            f"Expected `--select` to be `final` or `best`, but got {args.select!r}. Give --select final (the last"
            " validation of every run) or --select best (its best validation by the --prefer metric)."
        )


def _previous(args: argparse.Namespace) -> Any:
    """The interrupted comparison that ``--resume DIR`` continues (``None`` without ``--resume``)."""
    from lightning_balance.experiments.runner import CompareResult

    if args.resume is None:
        return None
    folder = Path(args.resume)
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise ConfigurationError(
            f"`--resume` {str(folder)!r} and `--out` {args.out!r} name different folders: a resumed comparison"
            " writes into the folder it continues. Leave --out out."
        )
    file = folder / "results.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(
            f"`--resume` {str(folder)!r} holds no comparison (no results.json). Give the --out folder of an"
            " interrupted `lightning-balance compare`, or leave --resume out to start one."
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigurationError(
            f"Cannot read `--resume` {str(file)!r}: {err}. Start a new comparison with --out."
        ) from err
    previous = CompareResult.from_dict(data)
    previous.settings["out"] = str(folder)
    args.out = str(folder)
    return previous


def _data_and_model(
    args: argparse.Namespace, config: dict[str, Any]
) -> tuple[ComponentSpec, ComponentSpec, dict[str, Any], list[str]]:
    """The DataModule and the model of the comparison, from --data, --datamodule, --model and --config."""
    explicit = args.datamodule is not None or (config.get("data") or {}).get("class_path") is not None
    if args.data is not None and explicit:
        raise ConfigurationError(
            f"`--data {args.data}` names an embedded task, but {'--datamodule' if args.datamodule else '--config'}"
            " names a DataModule too. Give one of them."
        )
    task = embedded_task(args.data or DEFAULT_DATA) if not explicit else None
    if args.datamodule is not None:
        data_path = args.datamodule
    else:
        data_path = (config.get("data") or {}).get("class_path") or task["datamodule"]  # type: ignore[index]
    data_cls = check_datamodule_class(import_object(data_path, "--datamodule"), "--datamodule")
    data_kwargs: dict[str, Any] = {}
    if config.get("data") and args.datamodule is None:
        data_kwargs = build_config_value(dict(config["data"].get("init_args") or {}), "--config data")
    data_kwargs.update(parse_kwargs(args.datamodule_args, "--datamodule-args"))
    ignored = [k for k in _PER_RUN_KEYS if k in data_kwargs]
    for key in ignored:
        del data_kwargs[key]
    if "seed_everything" in config:
        ignored.append("seed_everything")
    if args.batch_size is not None:
        data_kwargs["batch_size"] = args.batch_size
    data = ComponentSpec(data_cls, data_kwargs, "--datamodule")

    model_path = args.model if args.model is not None else (config.get("model") or {}).get("class_path")
    from_task = model_path is None and task is not None and task["model"] is not None
    if from_task:
        model_path = task["model"]  # type: ignore[index]
    if model_path is not None:
        model_cls = check_model_class(import_object(model_path, "--model"), "--model")
        model_kwargs: dict[str, Any] = {}
        if config.get("model") and args.model is None:
            model_kwargs = build_config_value(dict(config["model"].get("init_args") or {}), "--config model")
        model_kwargs.update(parse_kwargs(args.model_args, "--model-args"))
        model = ComponentSpec(model_cls, model_kwargs, "--model", size_from_data=from_task)
    else:
        from lightning_balance.experiments.models import MLPClassifier

        model = ComponentSpec(MLPClassifier, parse_kwargs(args.model_args, "--model-args"), "--model",
                              size_from_data=True)
    return data, model, (task or {}), ignored


def _compare_command(args: argparse.Namespace) -> int:
    from lightning_balance.experiments.report import console as make_console
    from lightning_balance.experiments.report import write_compare_outputs
    from lightning_balance.experiments.runner import compare

    _check_arguments(args)
    _check_saln(args)
    _check_answer(args)
    ensure_cwd_importable()
    config = _read_config(args.config) if args.config else {}
    trainer_kwargs, sources, config_steps, config_val_every = _config_trainer(config, args)
    check_trainer_arguments(trainer_kwargs, sources)
    data, model, task, ignored = _data_and_model(args, config)

    if args.only is not None and args.strategies is None:
        args.strategies = args.only
    only = parse_strategies(args.strategies, "--strategies")
    if args.saln:
        try:
            import lightning_balance.callbacks.saln  # noqa: F401
        except ImportError as err:
            raise ConfigurationError(f"`--saln` needs the SALN callback, which cannot be imported: {err}.") from err
        if only is not None and "saln" not in only:
            only.append("saln")
    saln_keep = (args.saln_keep if args.saln_keep is not None else 0.5) if args.saln else None
    from lightning_balance.experiments.settings import DEFAULT_NAMES

    names = only if only is not None else [*DEFAULT_NAMES, *(["saln"] if args.saln else [])]
    runs = default_runs(args.temperature, args.cooldown_at, saln_keep=saln_keep,
                        saln_method=args.saln_method or "spectral", only=names, adaptive=args.adaptive,
                        unimax_epochs=args.unimax_epochs, overfit_patience=args.overfit_patience,
                        overfit_smoothing=args.overfit_smoothing)
    steps = config_steps if config_steps is not None else task.get("max_steps", _DEFAULT_STEPS)
    val_every = config_val_every if config_val_every is not None else task.get("val_every", _DEFAULT_VAL_EVERY)
    settings = _settings(args, trainer_kwargs, steps=steps, val_every=val_every,
                         tail_target=task.get("tail_target", 0.5), optimizer=config.get("optimizer"),
                         lr_scheduler=config.get("lr_scheduler"))
    previous = _previous(args)
    # Checked now, created only once the data and the model have passed their checks.
    out = _output_dir(args, "compare", create=False)
    threads = _set_threads(args.threads, embedded=bool(task))
    console = make_console()
    start = time.perf_counter()
    started_load = _load()

    def stamp(partial: Any) -> None:
        partial.settings.update(total_wall_time_s=time.perf_counter() - start, torch_threads=threads,
                                cpus=_cpus(), load_average_start=started_load, load_average_end=_load(), out=str(out))

    def create_output(empty: Any) -> None:
        if out is None:
            return
        check_output_dir(out, "--out")
        reused = len(previous.runs) if previous is not None else 0
        console.print(f"[bold]{PROG} compare[/]: {data.name} · {len(runs)} strategies × {len(settings.seeds)} seeds"
                      f" × {settings.max_steps} steps · output {out}"
                      + (f" · resuming: {reused} runs finished" if previous is not None else ""))
        if ignored:
            console.print(f"Ignoring {', '.join(ignored)} from the configuration: compare sets them per run.")
        if empty.settings.get("split_warning"):
            console.print(f"[yellow]Warning[/]: {empty.settings['split_warning']}")
        if previous is None:
            stamp(empty)
            write_compare_outputs(empty, out, plots=False)  # a folder --resume can continue from the start

    def write_partial(partial: Any) -> None:
        if out is not None:
            stamp(partial)
            write_compare_outputs(partial, out, plots=False)

    result = compare(data, model, runs, settings, progress=not args.no_progress, on_checked=create_output,
                     on_run=write_partial, log_dir=(out / "logs") if out is not None else None, previous=previous,
                     strict_runs=only is not None)
    if out is None:
        return 0  # ranks other than 0 write nothing
    stamp(result)
    if result.is_empty:
        write_compare_outputs(result, out, plots=False)
        if not result.complete:
            console.print("Interrupted before the first run finished; nothing was measured. Wrote"
                          f' {out / "results.json"} ("complete": false); `--resume {out}` continues.')
            return EXIT_INTERRUPTED
        return 0
    lines = _answer_lines(result)
    files = write_compare_outputs(result, out, lines=lines)
    _print_result(console, result, lines)
    s = result.settings
    load = (f"load average {s['load_average_start']:.1f} at the start, {s['load_average_end']:.1f} at the end"
            if s.get("load_average_start") is not None else "load average unknown")
    console.print(f"Total wall time {s['total_wall_time_s']:.1f} s on {s['cpus']} CPUs ({load}; torch threads"
                  f" {threads}). Wrote to {out}: " + ", ".join(p.name for p in files.values()) + ", logs/.")
    if not result.complete:
        console.print(f"[bold]Incomplete[/]: interrupted during {s['interrupted']}; {s['runs_finished']} of"
                      f" {s['runs_planned']} runs finished and are in the files (\"complete\": false in"
                      f" results.json). `{PROG} compare --resume {out}` with the same arguments continues.")
        return EXIT_INTERRUPTED
    if result.all_diverged:
        print(f"{PROG} compare: every run diverged (its training or validation loss became NaN or infinite): nothing"
              " was learned. Lower the learning rate (e.g. --model-args lr=0.01) or clip the gradients"
              " (trainer.gradient_clip_val in --config).", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def _answer_lines(result: Any) -> list[str]:
    """The recommendation, the upsample-or-upweight verdict and the adaptive goal, in words."""
    from lightning_balance.experiments.summary import adaptive_goal, recommend, verdict

    s = result.settings
    select = s.get("select", "final")
    lines = list(recommend(result.summary, result.runs, s.get("prefer", "balanced"), select)["lines"])
    lines += verdict(result.summary, result.runs, select)
    lines += adaptive_goal(result.summary, result.runs, select)["lines"]
    notes = []
    if s.get("dropped_runs"):
        notes.append(f"Left out {', '.join(s['dropped_runs'])}: they weight or shift the loss per class, and the groups"
                     " are not the labels.")
    if not s.get("label_groups", True):
        notes.append("The groups are not the labels: accuracy and loss are measured per group, from the validation"
                     " set's `groups`; F1 (a per-class measure) is not reported, tail F1 is replaced by tail accuracy.")
    if s.get("split_warning"):
        notes.append(s["split_warning"])
    if s.get("split_requested") == "auto":
        counts = s.get("group_counts", [])
        notes.append(f"Split: {s['split']}" + (f" (head > {s['many']:g}, tail < {s['few']:g} training examples)"
                                               if s["split"] == "absolute" else " (thirds of the groups by count)")
                     + f"; training counts {counts}.")
    return lines + notes


def _print_result(console: Any, result: Any, lines: Sequence[str]) -> None:
    from lightning_balance.experiments.report import best_table, summary_table

    label_groups = result.settings.get("label_groups", True)
    console.print(summary_table(result.summary, label_groups=label_groups))
    if any(len(run.curve) > 1 for run in result.runs):
        console.print(best_table(result.summary))
    for line in lines:
        console.print(line, highlight=False, markup=False)


def _load() -> Optional[float]:
    from lightning_balance.experiments.progress import load_average

    return load_average()


def _cpus() -> int:
    from lightning_balance.experiments.progress import cpu_count

    return cpu_count()


def _paper_command(args: argparse.Namespace) -> int:
    from lightning_balance.experiments.paper import reproduce
    from lightning_balance.experiments.report import console as make_console

    _check_arguments(args)
    task = embedded_task(args.data)
    settings = _settings(args, {}, steps=task["max_steps"], val_every=task["val_every"],
                         tail_target=task["tail_target"])
    if args.num_batches < 10:
        raise ConfigurationError(f"Expected `--num-batches` to be at least 10, but got {args.num_batches}.")
    out = _output_dir(args, "paper")
    threads = _set_threads(args.threads, embedded=True)
    console = make_console()
    if out is not None:
        console.print(f"[bold]{PROG} paper[/]: {args.data} · output {out}")
    start, started_load = time.perf_counter(), _load()
    report = reproduce(settings, temperature=args.temperature, cooldown_at=args.cooldown_at,
                       num_batches=args.num_batches, out_dir=out, progress=not args.no_progress, data=args.data)
    if out is not None and report is not None:
        console.print(report["markdown_summary"], highlight=False, markup=False)
        end_load = _load()
        load = (f"load average {started_load:.1f} at the start, {end_load:.1f} at the end"
                if started_load is not None and end_load is not None else "load average unknown")
        console.print(f"Total wall time {time.perf_counter() - start:.1f} s on {_cpus()} CPUs ({load}; torch"
                      f" threads {threads}). Wrote {out / 'report.md'} and {out / 'paper.json'}")
    return 0


def _pop_threads(argv: list[str]) -> tuple[list[str], Any]:
    """``argv`` without ``--threads N`` / ``--threads=N`` (a flag of this package, not of LightningCLI)."""
    rest: list[str] = []
    threads: Any = None
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--threads":
            if i + 1 >= len(argv):
                raise ConfigurationError(
                    "`--threads` needs a value: a positive number of CPU threads, e.g. --threads 1."
                )
            threads, i = _int_or_str(argv[i + 1]), i + 2
            continue
        if word.startswith("--threads="):
            threads = _int_or_str(word.split("=", 1)[1])
        else:
            rest.append(word)
        i += 1
    return rest, threads


def _step_progress_bar() -> Any:
    """Lightning's rich progress bar without "Epoch 11/-2": a run bounded by steps has no last epoch to show."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            trainer = self.trainer
            text = f"Epoch {current_epoch}"
            if trainer.max_epochs is not None and trainer.max_epochs > 0:
                text += f"/{trainer.max_epochs - 1}"
            elif trainer.max_steps is not None and trainer.max_steps > 0:
                text += f" (max_steps {trainer.max_steps})"
            return f"{text:{len(self.validation_description)}}"

    return StepProgressBar()


def _balance_cli_class() -> Any:
    from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
    from lightning.pytorch.cli import LightningCLI

    class BalanceCLI(LightningCLI):
        """LightningCLI that shows steps rather than "Epoch 11/-2" and ends ``fit`` with the final tail recall."""

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
            given = [c for c in (config.get("callbacks") or []) + list(callbacks) if isinstance(c, ProgressBar)]
            if config.get("enable_progress_bar", True) is not False and not given:
                callbacks = [*callbacks, _step_progress_bar()]
            return super()._instantiate_trainer(config, callbacks)

        def after_fit(self) -> None:
            if self.trainer.is_global_zero:
                line = final_tail_recall(self.trainer, self.model, self.datamodule)
                if line:
                    print(line)

    return BalanceCLI


def final_tail_recall(trainer: Any, model: Any, datamodule: Any) -> Optional[str]:
    """One line with the head, medium, tail and worst-group recall of ``model`` on the validation set."""
    import torch

    from lightning_balance.datamodule import BalancedDataModule
    from lightning_balance.experiments.checks import validation_groups
    from lightning_balance.experiments.recorder import logits_and_target
    from lightning_balance.experiments.runner import resolve_split
    from lightning_balance.functional.tail_recall import _split_masks, tail_recall

    if not isinstance(datamodule, BalancedDataModule) or datamodule.val_dataset is None:
        return None
    counts = datamodule.group_counts
    split, _ = resolve_split(counts.tolist(), CompareSettings(split="auto"))
    masks = _split_masks(counts.double(), 100, 20, split)
    label_groups = datamodule.label_groups is not False
    groups = None if label_groups else validation_groups(datamodule)
    if not label_groups and groups is None:
        return None
    was_training = model.training
    model.eval()
    logits_all, targets = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            batch = datamodule.transfer_batch_to_device(batch, model.device, 0)
            logits, target = logits_and_target(model, None, batch, type(model).__name__)
            logits_all.append(datamodule.prediction_logits(logits).float().cpu())
            targets.append(target.long().cpu())
    model.train(was_training)
    logits, target = torch.cat(logits_all), torch.cat(targets)
    what = "recall"
    if label_groups:
        measured = tail_recall(logits, target, counts, split=split, validate_args=False)  # type: ignore[arg-type]
        values = {k: float(v) for k, v in measured.items() if k in ("head", "medium", "tail", "worst")}
    else:
        what = "accuracy"
        correct = (logits.argmax(1) == target).double()
        assert groups is not None
        per_group = torch.stack([correct[groups == g].mean() if bool((groups == g).sum() > 0)
                                 else torch.tensor(math.nan, dtype=torch.float64) for g in range(len(counts))])
        values = {name: float(per_group[masks[name]].nanmean()) for name in ("head", "medium", "tail")}
        values["worst"] = float(per_group[~per_group.isnan()].min())
    shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
    return (f"Final validation {what} at step {trainer.global_step} (groups split {split} by training count):"
            f" {shown}.")


def lightning_cli(args: Optional[Sequence[str]] = None, run: bool = True) -> Any:
    """Lightning's ``LightningCLI`` over any LightningModule and any :class:`~lightning_balance.BalancedDataModule`.

    Both are named by ``class_path`` in the YAML (``model:`` and ``data:`` sections); a temperature schedule is
    a ``class_path`` too, e.g. ``lightning_balance.Cooldown``. With ``run=True``, ``args`` start with the
    subcommand (``fit``, ``validate``, ``test``, ``predict``); ``None`` reads ``sys.argv``. The model summary is
    off unless the config turns it on; ``fit`` ends with a line of the final head, medium and tail recall.
    """
    from lightning.pytorch import LightningModule

    from lightning_balance.datamodule import BalancedDataModule

    return _balance_cli_class()(
        LightningModule, BalancedDataModule, subclass_mode_model=True, subclass_mode_data=True,
        args=None if args is None else list(args), trainer_defaults={"enable_model_summary": False},
        run=run, save_config_kwargs={"overwrite": True},
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``lightning-balance``; returns the exit status (2 for a configuration error)."""
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        try:
            argv, threads = _pop_threads(argv)
            _set_threads(_check_threads(threads))
        except ConfigurationError as err:
            print(f"{PROG} {argv[0]}: error: {err}", file=sys.stderr)
            return 2
        # Classes named on the command line or in the YAML are found in the current directory, as for `compare`.
        ensure_cwd_importable()
        from lightning_balance.experiments.progress import quiet_lightning

        with quiet_lightning(deprecations=True):
            if from_console:
                # LightningCLI reads sys.argv itself (given both, it warns that they might differ).
                sys.argv = [sys.argv[0], *argv]
                lightning_cli(None)
            else:
                lightning_cli(argv)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = {"compare": _compare_command, "paper": _paper_command}[args.command]
    try:
        return command(args)
    except ConfigurationError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
