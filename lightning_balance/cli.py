r"""
Command line
^^^^^^^^^^^^

``lightning-balance`` (or ``python -m lightning_balance``) has three jobs:

* ``compare``: answer "upsample or upweight?" for your data. Trains the same model under natural sampling,
  upsampling, upweighting and Cooldown (``--saln`` adds SALN) over several seeds, prints a table and writes CSV,
  JSON and two plots. Without arguments it runs on the embedded long-tailed digits.
* ``paper``: reproduce the checks of Li et al. (2025) on the embedded data and write a report.
* ``fit`` / ``validate`` / ``test``: single runs through Lightning's ``LightningCLI``, configured by YAML
  (see ``configs/``). ``--threads N`` sets torch's CPU threads there too.

Every subcommand imports user classes from the current directory first, as ``python -m`` does. Values of
``--model-args``, ``--datamodule-args`` and ``--config`` are read as LightningCLI (jsonargparse) reads them:
``1e-3`` is a float. A bad setting stops the command with exit status 2 and a message, before anything is
written; a comparison where every run diverged exits with 1, an interrupted one (Ctrl-C) with 130 after writing
the finished runs.

Examples::

    lightning-balance compare
    lightning-balance compare --datamodule my_project.data.MyData --datamodule-args root=/data batch_size=64 \
        --model my_project.model.MyModel --model-args '{"lr": 0.01}' --devices 4 --strategy ddp --accelerator gpu
    lightning-balance compare --config configs/digits_upweight.yaml --seeds 5
    lightning-balance paper --out paper_run
    lightning-balance fit --config configs/digits_cooldown.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from lightning_balance.compare import (
    CompareSettings,
    ComponentSpec,
    ConfigurationError,
    build_config_value,
    check_datamodule_class,
    check_model_class,
    check_output_dir,
    check_run_arguments,
    check_trainer_arguments,
    default_runs,
    ensure_cwd_importable,
    global_rank,
    import_object,
)

__all__ = ["build_parser", "lightning_cli", "main", "parse_kwargs"]

PROG = "lightning-balance"
DEFAULT_DATAMODULE = "lightning_balance.datasets.LongTailDigits"
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
        lightning_balance.compare.ConfigurationError: Cannot read `--model-args` 'lr': expected key=value ...
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
def _add_run_arguments(parser: argparse.ArgumentParser, steps: int, val_every: int) -> None:
    runs = parser.add_argument_group("runs")
    runs.add_argument("--temperature", type=float, default=5.0,
                      help="T of upsample, upweight and the start of Cooldown (default: %(default)s)")
    runs.add_argument("--cooldown-at", type=float, default=0.5,
                      help="fraction of training after which Cooldown samples at T=1 (default: %(default)s)")
    runs.add_argument("--seeds", type=int, default=3, help="seeds per strategy: 0..N-1 (default: %(default)s)")
    runs.add_argument("--max-steps", type=int, default=None,
                      help=f"optimizer steps per run (default: trainer.max_steps of --config, else {steps})")
    runs.add_argument("--val-every", type=int, default=None,
                      help="validate every N optimizer steps (default: trainer.val_check_interval of --config, else"
                           f" {val_every})")
    runs.add_argument("--tail-target", type=float, default=0.5,
                      help="report the first step at which tail recall reached this (default: %(default)s)")
    runs.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default: the DataModule's)")
    runs.add_argument("--quick", action="store_true", help="a smoke test: 1 seed, 200 steps, validate every 20")
    split = parser.add_argument_group("head / medium / tail classes (by training count)")
    split.add_argument("--split", choices=("absolute", "quantile"), default="absolute",
                       help="absolute thresholds, or thirds of the classes by count (default: %(default)s)")
    split.add_argument("--many", type=float, default=100, help="head: more than this many examples (default: 100)")
    split.add_argument("--few", type=float, default=20, help="tail: fewer than this many examples (default: 20)")
    hardware = parser.add_argument_group("hardware (passed to the Trainer)")
    hardware.add_argument("--accelerator", default=None, help="cpu, gpu, auto... (default: Lightning's)")
    hardware.add_argument("--devices", type=_int_or_str, default=None, help="e.g. 4, '0,1' or auto")
    hardware.add_argument("--strategy", default=None, help="e.g. ddp (one process per device)")
    hardware.add_argument("--num-nodes", type=int, default=None)
    hardware.add_argument("--precision", default=None, help="e.g. bf16-mixed")
    hardware.add_argument("--threads", type=_int_or_str, default=None,
                          help="CPU threads for torch (default: 1 for the embedded data, whose tiny model trains"
                               " fastest on one thread; torch's default otherwise)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=None, help="output directory (default: ./balance_runs/<command>-<time>)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-balance`` parser with its ``compare`` and ``paper`` subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Balanced training on long-tailed data: compare upsampling and upweighting on your data.",
        epilog=f"`{PROG} fit|validate|test --config cfg.yaml` runs Lightning's LightningCLI (see `{PROG} fit --help`);"
               " `--threads N` sets torch's CPU threads there too.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{compare,paper,fit,validate,test}")

    cmp = commands.add_parser(
        "compare", help="train natural / upsample / upweight / Cooldown over seeds and compare them",
        description="Train the same model under natural sampling, upsampling (T), upweighting (T), Cooldown"
                    " (T, then 1) and optionally SALN, over several seeds; print a table and write CSV, JSON and"
                    " plots.",
    )
    source = cmp.add_argument_group("data and model")
    source.add_argument("--datamodule", default=None,
                        help=f"import path of a BalancedDataModule subclass (default: {DEFAULT_DATAMODULE})")
    source.add_argument("--datamodule-args", nargs="*", default=None, metavar="KEY=VALUE",
                        help="its arguments: key=value words or one JSON object")
    source.add_argument("--model", default=None,
                        help="import path of a LightningModule whose training_step returns balanced_loss(...)"
                             " (default: an MLP sized from the data)")
    source.add_argument("--model-args", nargs="*", default=None, metavar="KEY=VALUE",
                        help="its arguments (also of the default MLP: hidden, lr, weight_decay): key=value words or"
                             " one JSON object")
    source.add_argument("--config", default=None,
                        help="a LightningCLI YAML (as for `fit`): its data, model, trainer and optimizer sections are"
                             " used; settings a comparison cannot honour are refused by name")
    extra = cmp.add_argument_group("more runs")
    extra.add_argument("--only", default=None, help="comma-separated subset of natural,upsample,upweight,cooldown,saln")
    extra.add_argument("--saln", action="store_true", help="add SALN batch selection (natural sampling)")
    extra.add_argument("--saln-keep", type=float, default=None,
                       help="with --saln: fraction of each batch SALN keeps (default: 0.5)")
    extra.add_argument("--saln-method", choices=("spectral", "random", "loss"), default=None,
                       help="with --saln: selection score, spectral (SALN, the default) or a baseline at the same kept"
                            " fraction")
    _add_run_arguments(cmp, steps=_DEFAULT_STEPS, val_every=_DEFAULT_VAL_EVERY)

    paper = commands.add_parser(
        "paper", help="reproduce the paper's checks on the embedded data and write a report",
        description="Theorem 1 (full-batch equivalence), Theorem 2 (gradient variance vs F(T)), tail convergence"
                    " and overfitting, and Cooldown, on the embedded long-tailed digits.",
    )
    paper.add_argument("--num-batches", type=int, default=4000,
                       help="mini-batches drawn per sampler to measure gradient variance (default: %(default)s)")
    _add_run_arguments(paper, steps=_DEFAULT_STEPS, val_every=_DEFAULT_VAL_EVERY)
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
    config_steps: Optional[int] = None,
    config_val_every: Optional[int] = None,
    optimizer: Any = None,
    lr_scheduler: Any = None,
) -> CompareSettings:
    """The run settings: command-line flags first, then the ``--config`` values, then the defaults."""
    if args.max_steps is None:
        args.max_steps = config_steps if config_steps is not None else _DEFAULT_STEPS
    if args.val_every is None:
        args.val_every = config_val_every if config_val_every is not None else _DEFAULT_VAL_EVERY
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
        tail_target=args.tail_target, many=args.many, few=args.few, split=args.split, trainer_kwargs=trainer_kwargs,
        optimizer=optimizer, lr_scheduler=lr_scheduler,
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


def _set_threads(threads: Optional[int], embedded: bool = False) -> None:
    import torch

    threads = threads if threads is not None else (1 if embedded else None)
    if threads is not None:
        torch.set_num_threads(threads)


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # A log file or a pipe gets the whole table rather than 80 squeezed columns.
    return console if console.is_terminal else Console(width=200)


def _check_saln(args: argparse.Namespace) -> None:
    given = [flag for flag, value in (("--saln-keep", args.saln_keep), ("--saln-method", args.saln_method))
             if value is not None]
    if given and not args.saln:
        raise ConfigurationError(
            f"{' and '.join(f'`{flag}`' for flag in given)} {'was' if len(given) == 1 else 'were'} given without"
            " `--saln`, so no SALN run would use it. Add --saln to run SALN, or leave it out."
        )


def _compare_command(args: argparse.Namespace) -> int:
    from lightning_balance.compare import CompareResult, compare
    from lightning_balance.reporting import print_summary, verdict, write_compare_outputs

    _check_arguments(args)
    _check_saln(args)
    ensure_cwd_importable()
    config = _read_config(args.config) if args.config else {}
    trainer_kwargs, sources, config_steps, config_val_every = _config_trainer(config, args)
    check_trainer_arguments(trainer_kwargs, sources)

    if args.datamodule is not None:
        data_path = args.datamodule
    else:
        data_path = (config.get("data") or {}).get("class_path") or DEFAULT_DATAMODULE
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
    model_kwargs: dict[str, Any] = {}
    if model_path is not None:
        model_cls = check_model_class(import_object(model_path, "--model"), "--model")
        if config.get("model") and args.model is None:
            model_kwargs = build_config_value(dict(config["model"].get("init_args") or {}), "--config model")
        model_kwargs.update(parse_kwargs(args.model_args, "--model-args"))
        model = ComponentSpec(model_cls, model_kwargs, "--model")
    else:
        from lightning_balance.models import MLPClassifier

        model = ComponentSpec(MLPClassifier, parse_kwargs(args.model_args, "--model-args"), "--model",
                              size_from_data=True)

    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only is not None else None
    if args.saln:
        try:
            import lightning_balance.callbacks.saln  # noqa: F401
        except ImportError as err:
            raise ConfigurationError(f"`--saln` needs the SALN callback, which cannot be imported: {err}.") from err
    saln_keep = (args.saln_keep if args.saln_keep is not None else 0.5) if args.saln else None
    runs = default_runs(args.temperature, args.cooldown_at, saln_keep=saln_keep,
                        saln_method=args.saln_method or "spectral", only=only)
    settings = _settings(args, trainer_kwargs, config_steps=config_steps, config_val_every=config_val_every,
                         optimizer=config.get("optimizer"), lr_scheduler=config.get("lr_scheduler"))
    # Checked now, created only once the data and the model have passed their checks.
    out = _output_dir(args, "compare", create=False)
    embedded = data_path == DEFAULT_DATAMODULE and model.size_from_data
    _set_threads(args.threads, embedded=embedded)

    console = _console()

    def create_output() -> None:
        if out is None:
            return
        check_output_dir(out, "--out")
        console.print(f"[bold]{PROG} compare[/]: {data.name} · {len(runs)} strategies × {len(settings.seeds)} seeds"
                      f" × {settings.max_steps} steps · output {out}")
        if ignored:
            console.print(f"Ignoring {', '.join(ignored)} from the configuration: compare sets them per run.")

    def write_partial(partial: CompareResult) -> None:
        if out is not None:
            partial.settings["total_wall_time_s"] = time.perf_counter() - start
            write_compare_outputs(partial, out, plots=False)

    start = time.perf_counter()
    result = compare(data, model, runs, settings, progress=not args.no_progress, on_checked=create_output,
                     on_run=write_partial)
    if out is None:
        return 0  # ranks other than 0 write nothing
    result.settings["total_wall_time_s"] = time.perf_counter() - start
    if result.is_empty:
        if not result.complete:
            write_compare_outputs(result, out, plots=False)
            console.print("Interrupted before the first run finished; nothing was measured. Wrote"
                          f' {out / "results.json"} ("complete": false).')
            return EXIT_INTERRUPTED
        return 0
    files = write_compare_outputs(result, out)
    print_summary(result.summary, console)
    for line in verdict(result.summary, result.runs):
        console.print(line)
    console.print(f"Total wall time {result.settings['total_wall_time_s']:.1f} s. Wrote "
                  + ", ".join(str(path) for path in files.values()))
    if not result.complete:
        console.print(f"[bold]Incomplete[/]: interrupted during {result.settings['interrupted']};"
                      f" {result.settings['runs_finished']} of {result.settings['runs_planned']} runs finished and are"
                      ' in the files ("complete": false in results.json).')
        return EXIT_INTERRUPTED
    if result.all_diverged:
        print(f"{PROG} compare: every run diverged (its training or validation loss became NaN or infinite): nothing"
              " was learned. Lower the learning rate (e.g. --model-args lr=0.01) or clip the gradients"
              " (trainer.gradient_clip_val in --config).", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def _paper_command(args: argparse.Namespace) -> int:
    from lightning_balance.paper import reproduce

    _check_arguments(args)
    settings = _settings(args, {})
    if args.num_batches < 10:
        raise ConfigurationError(f"Expected `--num-batches` to be at least 10, but got {args.num_batches}.")
    out = _output_dir(args, "paper")
    _set_threads(args.threads, embedded=True)
    console = _console()
    if out is not None:
        console.print(f"[bold]{PROG} paper[/]: output {out}")
    report = reproduce(settings, temperature=args.temperature, cooldown_at=args.cooldown_at,
                       num_batches=args.num_batches, out_dir=out, progress=not args.no_progress)
    if out is not None and report is not None:
        console.print(report["markdown_summary"])
        console.print(f"Wrote {out / 'report.md'} and {out / 'paper.json'}")
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


def lightning_cli(args: Optional[Sequence[str]] = None, run: bool = True) -> Any:
    """Lightning's ``LightningCLI`` over any LightningModule and any :class:`~lightning_balance.BalancedDataModule`.

    Both are named by ``class_path`` in the YAML (``model:`` and ``data:`` sections); a temperature schedule is
    a ``class_path`` too, e.g. ``lightning_balance.Cooldown``. With ``run=True``, ``args`` start with the
    subcommand (``fit``, ``validate``, ``test``, ``predict``); ``None`` reads ``sys.argv``.
    """
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import LightningCLI

    from lightning_balance.datamodule import BalancedDataModule

    return LightningCLI(
        LightningModule, BalancedDataModule, subclass_mode_model=True, subclass_mode_data=True,
        args=None if args is None else list(args),
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
