"""Typed configuration for every command, declared once.

Each command is a typed Python function (the same one the Python API exposes); jsonargparse, the engine
under LightningCLI, derives its flags, `--config FILE` (a complete YAML config), `--print_config` and dotted
overrides (`--model.mask_ratio 0.9`) from the function's signature and docstring, and from the classes it
names: a method's constructor (`model`), a data class (`data`), `TrainConfig` (`train`), the Lightning
Trainer options that pass through (`trainer`). An unknown key or a wrong type is a one-line error that names
the key and the file; nothing is dropped. The short flags users know (`--img-size 32`, `--max-steps 100`,
`--set decoder_depth=4`) are spelled out to their dotted keys before parsing.
"""
from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from .errors import ConfigError, MimkitError

log = logging.getLogger("mimkit")

# The configuration a command was started with (as its config file would hold it), for the function to store
# in the run folder: `config.yaml` then re-runs the command exactly.
current_config: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mimkit_current_config", default=None)


def plain(value: Any) -> Any:
    """A value as YAML/JSON can hold it: dataclasses and mappings as dicts, tuples as lists, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        return {k: plain(v) for k, v in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file holding a mapping; a clear error naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, found {type(config).__name__}")
    return config


# ------------------------------------------------------------------------------------------------ numbers
# What a numeric setting may hold, by its name (the last part of its dotted key); `RANGE_BY_KEY` overrides a name
# for one key. A list (img_size [32, 32], betas) is checked item by item; None means "not set" and passes.
RANGES: dict[str, tuple[str, ...]] = {
    "at least 1": ("batch_size", "eval_batch_size", "max_steps", "accumulate_grad_batches", "devices", "num_nodes",
                   "checkpoint_every", "log_every", "val_every", "k", "count", "labels_per_class", "img_size",
                   "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
                   "decoder_num_heads", "stats_images", "tile_size"),
    "at least 0": ("num_workers", "warmup_steps", "warmup_epochs", "picture_every", "seed", "min_lr", "weight_decay",
                   "decoder_depth", "mixup", "cutmix", "base_lr", "lr"),  # lr 0: the weights stay as loaded
    "above 0": ("epochs", "max_time", "mlp_ratio"),
    "in [0, 1)": ("mask_ratio", "drop_path_rate", "drop_path", "betas", "label_smoothing", "momentum"),
    "in [0, 1]": ("mixup_prob", "mixup_switch_prob", "random_erasing"),
    "in (0, 1]": ("layer_decay", "crop_pct", "crop_scale"),
}
RANGE_BY_KEY = {"finetune.max_steps": "at least 0"}  # fine-tuning: 0 steps scores the untrained head
_RANGE_OF_NAME = {name: rule for rule, names in RANGES.items() for name in names}


def range_rule(key: str) -> str | None:
    """The range a numeric setting must lie in ("at least 1", "in [0, 1)", ...), or None when it has none."""
    return RANGE_BY_KEY.get(key) or _RANGE_OF_NAME.get(key.rsplit(".", 1)[-1])


def _in_range(value: float, rule: str) -> bool:
    if not math.isfinite(value):
        return False
    return {"at least 1": value >= 1, "at least 0": value >= 0, "above 0": value > 0, "in [0, 1)": 0 <= value < 1,
            "in [0, 1]": 0 <= value <= 1, "in (0, 1]": 0 < value <= 1}[rule]


def check_number(flag: str, value: Any, rule: str | None = None) -> None:
    """ConfigError naming `flag` when `value` (a number or a list of numbers) lies outside `rule` (range_rule's)."""
    rule = rule or range_rule(flag.lstrip("-"))
    if rule is None or value is None:
        return
    for item in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if not _in_range(float(item), rule):  # the type (int or float) is jsonargparse's / the dataclass's to check
            raise ConfigError(f"{flag} must be {rule}, found {value}")


def check_numbers(config: dict, command: "Command", argv: Sequence[str]) -> None:
    """Every numeric value of a parsed configuration within its range; the error names the flag (its short form
    when it has one) and the config file that set it."""
    short = {target.split("=")[0]: flag for flag, target in command.aliases.items() if flag != target}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
                continue
            try:
                check_number(f"--{dotted}", value, range_rule(dotted))
            except ConfigError as error:
                flag = short.get(f"--{dotted}")
                spelled = "--" + key.replace("_", "-")  # a short flag spelled out by Command.alias (--patch-size)
                if flag is None and command.alias is not None and spelled in argv:
                    flag = spelled
                message = str(error).replace(f"--{dotted}", f"{flag} ({dotted})" if flag else f"--{dotted}", 1)
                given = any(t.split("=")[0] in (f"--{dotted}", flag) for t in argv)
                holders = [str(p) for p in _config_files(argv) if _has_key(read_yaml_mapping(p), dotted)]
                if holders and not given:
                    message += f" (in {holders[-1]})"
                raise ConfigError(message) from None

    walk(config, "")


# ------------------------------------------------------------------------------------------------ commands
@dataclass
class Command:
    """One command of a tool: a typed function whose signature is its command line.

    `aliases` spell short flags out as dotted keys ("--max-steps": "--train.max_steps"; "--no-progress":
    "--train.progress=false" carries its value); `alias(flag, argv)` spells out flags the table does not hold
    (a method's encoder settings) or returns None, and other flags only turn dashes into underscores. `groups` replace
    a parameter's declared type by a class chosen at parse time (a method's constructor for `model`, a domain's
    data class for `data`): name -> callable(argv) -> (class, method-or-None). `preprocess` rewrites the
    argument list first (`--resume` reads the run's own config.yaml).
    """

    name: str
    function: Callable
    help: str
    aliases: dict[str, str] = field(default_factory=dict)
    groups: dict[str, Callable[[list[str]], tuple[type, str | None]]] = field(default_factory=dict)
    skip: set[str] = field(default_factory=set)
    preprocess: Callable[[list[str]], list[str]] | None = None
    alias: Callable[[str, list[str]], str | None] | None = None
    extend: Callable[[Any, list[str]], None] | None = None
    description: str | None = None
    epilog: str = ""


def _config_files(argv: Sequence[str]) -> list[Path]:
    files = []
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            files.append(Path(argv[i + 1]))
        elif token.startswith("--config="):
            files.append(Path(token.split("=", 1)[1]))
    return files


def config_value(argv: Sequence[str], key: str, default: Any = None) -> Any:
    """A top-level or dotted value as the command line will resolve it: the last `--key VALUE` on the command
    line, else the last config file that sets it, else `default` (used before parsing, to pick a group's class)."""
    flag = "--" + key
    for i in range(len(argv) - 1, -1, -1):
        if argv[i] == flag and i + 1 < len(argv):
            return yaml.safe_load(argv[i + 1])
        if argv[i].startswith(flag + "="):
            return yaml.safe_load(argv[i].split("=", 1)[1])
    for path in reversed(_config_files(argv)):
        node: Any = read_yaml_mapping(path)
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return default


def _is_bool(action) -> bool:
    hint = getattr(action, "_typehint", None)
    return hint is bool or getattr(action, "type", None) is bool or set(getattr(action, "choices", None) or ()) == {
        True, False}


def _is_list(action) -> bool:
    hint = str(getattr(action, "_typehint", ""))
    return hint.startswith(("list[", "typing.List", "list |", "typing.Optional[list", "typing.Optional[typing.List")) \
        or "list[str] | None" in hint


def _expand(argv: list[str], command: Command, bool_keys: set[str], list_keys: set[str] = frozenset()) -> list[str]:
    """Short flags to dotted keys (dashes to underscores), `--set k=v` to the model's key, bare boolean flags to
    `--flag true`, several values after a flag to one YAML list."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--config":
            out.append(token)
            if token == "--config" and i < len(argv):
                out.append(argv[i])
                i += 1
            continue
        flag, has_value, value = token.partition("=")
        values = [value] if has_value else []
        if not has_value:
            while i < len(argv) and not (argv[i].startswith("--") and len(argv[i]) > 2 and not _number(argv[i])):
                values.append(argv[i])
                i += 1
        if flag == "--set":
            for item in values:
                if "=" not in item:
                    raise ConfigError(f"--set expects key=value, got {item!r}")
                key, item_value = item.split("=", 1)
                key = key.strip().replace("-", "_")
                target = (command.alias(f"--{key}", argv) if command.alias else None) or f"--model.{key}"
                out += [target, item_value]
            continue
        target = command.aliases.get(flag)
        if target is None and command.alias is not None:
            target = command.alias(flag, argv)
        if target is None:
            target = "--" + flag[2:].replace("-", "_")
        if "=" in target:  # an alias that carries its value: "--no-progress" -> "--train.progress=false"
            target, values = target.split("=", 1)[0], [target.split("=", 1)[1]]
        elif not values and target[2:] in bool_keys:
            values = ["true"]
        if len(values) > 1 or (len(values) == 1 and target[2:] in list_keys and not values[0].startswith("[")):
            out += [target, "[" + ", ".join(_flow_item(v) for v in values) + "]"]
        else:
            out += [target, *values]
    return out


def _flow_item(value: str) -> str:
    """One item of a YAML flow list: numbers and booleans as they are, anything else quoted (a path with ", ")."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return value if isinstance(parsed, (int, float, bool)) else json.dumps(value)


def _number(token: str) -> bool:
    return bool(re.fullmatch(r"-[0-9.eE+-]+", token))


class Tool:
    """A command-line tool made of `Command`s: `prog COMMAND [flags]`, each with --help, --config and
    --print_config; a MimkitError or a bad flag is one line on stderr and exit code 2."""

    def __init__(self, prog: str, description: str, commands: Sequence[Command], epilog: str = ""):
        self.prog, self.description, self.epilog = prog, description, epilog
        self.commands = {c.name: c for c in commands}

    def usage(self) -> str:
        width = max(len(name) for name in self.commands)
        lines = [f"usage: {self.prog} COMMAND [--help] [--config FILE] [--print_config] [flags]", "",
                 self.description, "", "commands:"]
        lines += [f"  {name:{width}s}  {c.help}" for name, c in self.commands.items()]
        return "\n".join(lines + ([f"\n{self.epilog}"] if self.epilog else []))

    def parser(self, command: Command, argv: list[str]):
        """The command's jsonargparse parser, with the classes its groups resolve to for this argv."""
        import inspect

        from jsonargparse import ActionConfigFile, ArgumentParser

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            short = ", ".join(f"{flag} ({target.split('=')[0][2:]})" for flag, target in command.aliases.items()
                              if flag != target)
            parser = ArgumentParser(prog=f"{self.prog} {command.name}", exit_on_error=False,
                                    description=command.description or _doc_summary(command.function),
                                    epilog=" ".join(filter(None, [f"Short forms: {short}." if short else "",
                                                                  command.epilog])) or None, default_env=False)
            parser.add_argument("--config", action=ActionConfigFile,
                                help="a YAML file holding a complete or partial configuration (see --print_config); "
                                "later flags override it")
            skip = set(command.skip) | set(command.groups)
            parser.add_function_arguments(command.function, skip=skip, fail_untyped=False, as_group=False)
            for name, resolve in command.groups.items():
                cls, method = resolve(argv)
                if method:
                    parser.add_method_arguments(cls, method, name, fail_untyped=False)
                else:
                    parser.add_class_arguments(cls, name, fail_untyped=False, instantiate=True)
            if command.extend is not None:
                command.extend(parser, argv)
        parser.command_signature = inspect.signature(command.function)
        return parser

    def run(self, argv: Sequence[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        if not argv or argv[0] in ("-h", "--help"):
            print(self.usage())
            return 0 if argv else 2
        name, rest = argv[0], argv[1:]
        command = self.commands.get(name)
        if command is None:
            print(f"{self.prog}: error: unknown command {name!r}; choose one of {', '.join(self.commands)}",
                  file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        quiet_lightning()
        try:
            return self._run(command, rest)
        except MimkitError as error:
            code = getattr(error, "exit_code", 2)  # a run stopped by a signal, with its checkpoint: not an error
            print(f"{self.prog} {name}: {'error: ' if code == 2 else ''}{error}", file=sys.stderr)
            return code
        except BrokenPipeError:  # output piped into `head` and the like
            return 0
        except SystemExit as stop:  # a command that decides its own exit status (a failed check)
            return stop.code if isinstance(stop.code, int) else 1
        except KeyboardInterrupt:
            print(f"{self.prog}: interrupted; --resume continues from the last checkpoint", file=sys.stderr)
            return 130

    def _run(self, command: Command, argv: list[str]) -> int:
        import argparse

        if command.preprocess is not None:
            argv = command.preprocess(argv)
        for path in _config_files(argv):
            read_yaml_mapping(path)  # a missing or malformed file: named before anything else
        parser = self.parser(command, argv)
        bool_keys = {a.dest for a in parser._actions if _is_bool(a)}
        list_keys = {a.dest for a in parser._actions if _is_list(a)}
        expanded = _expand(argv, command, bool_keys, list_keys)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = parser.parse_args(expanded)
        except argparse.ArgumentError as error:
            raise ConfigError(_one_line(str(error), _config_files(argv))) from None
        except SystemExit as stop:  # --help and --print_config print and stop
            return int(stop.code or 0)
        dump = yaml.safe_load(parser.dump(config, skip_none=False, skip_check=True))
        dump.pop("config", None)
        check_numbers(dump, command, argv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                values = parser.instantiate(config)
            except (argparse.ArgumentError, TypeError, ValueError) as error:
                raise ConfigError(_one_line(str(error), _config_files(argv))) from None
        kwargs = {k: _unwrap_namespace(v) for k, v in vars(values).items()
                  if k != "config" and k in parser.command_signature.parameters}
        token = current_config.set(dump)
        try:
            command.function(**kwargs)
        finally:
            current_config.reset(token)
        return 0


def _unwrap_namespace(value: Any) -> Any:
    if type(value).__name__ == "Namespace":
        return {k: _unwrap_namespace(v) for k, v in vars(value).items()}
    return value


def _doc_summary(function: Callable) -> str:
    doc = (function.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ")


def _one_line(message: str, files: Sequence[Path]) -> str:
    """jsonargparse's (multi-line) message as one line, naming the config file that holds the key."""
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip())
    text = text.replace('Parser key "', 'key "')
    key = None
    match = re.search(r'key "([^"]+)"', text) or re.search(r"Group '([^']+)' does not accept option '([^']+)'", text)
    if match:
        key = match.group(1) if match.lastindex == 1 else f"{match.group(1)}.{match.group(2)}"
        if match.lastindex == 2:
            text = f"unknown key {key!r}: {match.group(1)} has no option {match.group(2)!r}"
    match = re.search(r"Problem with given class_path '([^']+)': (.*?)(?: - Expected a| Given value type|$)", text)
    if match:  # a class named for a setting (a logger, a callback) that cannot be built: say which and why
        text = (f'key "{key}": ' if key else "") + f"{match.group(1)}: {match.group(2).strip()}"
    match = re.search(r"unrecognized arguments: (\S+)", text)
    if match:
        text = f"unknown option {match.group(1)}; see --help for the options this command takes"
    if key:
        holders = [str(p) for p in files if _has_key(read_yaml_mapping(p), key)]
        if holders:
            text += f" (in {holders[-1]})"
    if len(text) > 400:
        text = text[:400] + " ..."
    return text


def _has_key(config: dict, key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# Lightning Trainer options that pass through unchanged; the others are core.train.TrainConfig's (declared once,
# used for the learning-rate rule) or set by mimkit itself (checkpoints, steps, samplers).
TRAINER_OPTIONS = ("logger", "callbacks", "profiler", "gradient_clip_val", "gradient_clip_algorithm", "detect_anomaly",
                   "deterministic", "benchmark", "sync_batchnorm", "plugins", "barebones")


def trainer_options(options: dict | None, out_dir: Path | None) -> dict:
    """Check the pass-through Trainer options and fill the defaults: a CSV logger in OUT/logs, no extra callbacks."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(TRAINER_OPTIONS))
    if unknown:
        hint = "; steps, batch size, precision, devices, strategy and accumulation are train settings"
        raise ConfigError(f"trainer option(s) {', '.join(unknown)} are not passed to Lightning here{hint}; "
                          f"the trainer section takes {', '.join(TRAINER_OPTIONS)}")
    if options.get("logger") is None or options.get("logger") is True:
        from lightning.pytorch.loggers import CSVLogger

        options["logger"] = CSVLogger(out_dir, name="logs") if out_dir is not None else False
    callbacks = options.get("callbacks") or []
    options["callbacks"] = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    return {k: v for k, v in options.items() if v is not None}


def add_trainer_arguments(parser) -> None:
    """`--trainer.*`: the Lightning Trainer options that pass through (core.train.TRAINER_OPTIONS), typed from the
    Trainer's own signature (a logger or callback by class name: `--trainer.logger TensorBoardLogger`)."""
    import inspect

    import lightning as L

    skip = set(inspect.signature(L.Trainer.__init__).parameters) - set(TRAINER_OPTIONS) - {"self"}
    parser.add_method_arguments(L.Trainer, "__init__", "trainer", skip=skip, fail_untyped=False)


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's product tips ("Tip: ... try installing litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Tip:" in message and ("litlogger" in message or "litmodels" in message))


_NO_ADVERTISEMENT = _NoAdvertisement()


def lightning_console() -> None:
    """Lightning's console lines once each and without advertisements.

    The `lightning` package gives its logger a console handler of its own and still lets records propagate, so once
    the application has configured logging (a root handler) every line is printed twice: then its own handler goes
    and the application's format prints each line once."""
    for package in ("lightning", "pytorch_lightning", "lightning_fabric"):
        logger = logging.getLogger(package)
        if logging.getLogger().handlers and logger.propagate:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
        for name in ("", ".pytorch.utilities.rank_zero", ".fabric.utilities.rank_zero", ".utilities.rank_zero"):
            child = logging.getLogger(package + name)
            if _NO_ADVERTISEMENT not in child.filters:  # filters act where a record is made: on rank_zero's loggers
                child.addFilter(_NO_ADVERTISEMENT)


def quiet_lightning() -> None:
    """Lightning's start-up chatter (GPU/TPU availability, tips) hides what matters; keep its warnings."""
    lightning_console()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen teachers are meant to be
    warnings.filterwarnings("ignore", message=".*tensorboardX.*")
    # a resumed run writes into its own checkpoint folder, and its sampler resumes from the restored global step
    # (core.train.MIMDataModule): both warnings are about other set-ups
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    # MIMModule lays batches out channels-last in on_after_batch_transfer; MIMDataModule defines no such hook,
    # so the module's is the one meant, and the warning that the data module's is passed over is about nothing
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")


# ------------------------------------------------------------------------------------------------ method settings
def encoder_setting(model: dict, key: str, method: str | None = None) -> Any:
    """An encoder setting (img_size, patch_size, in_chans, ...) of a method's configuration, whether the method
    takes one `encoder` object or flat arguments; the method's default when the configuration does not set it."""
    encoder = model.get("encoder")
    if encoder is not None:
        value = encoder.get(key) if isinstance(encoder, Mapping) else getattr(encoder, key, None)
        if value is not None or (isinstance(encoder, Mapping) and key in encoder) or hasattr(encoder, key):
            return value
    if key in model:
        return model[key]
    if method is None:
        return None
    from .registry import method_arguments

    defaults = method_arguments(method)
    if key in defaults:
        return defaults[key]
    encoder = defaults.get("encoder")
    if encoder is not None:
        return encoder.get(key) if isinstance(encoder, Mapping) else getattr(encoder, key, None)
    return defaults.get(f"encoder.{key}")


def set_encoder_setting(model: dict, key: str, value: Any) -> dict:
    """Set an encoder setting in a method's configuration (inside its `encoder` object when it has one)."""
    encoder = model.get("encoder")
    if encoder is None:
        model[key] = value
    elif isinstance(encoder, Mapping):
        model["encoder"] = {**encoder, key: value}
    else:
        model["encoder"] = dataclasses.replace(encoder, **{key: value})
    return model


__all__ = ["Command", "Tool", "check_number", "check_numbers", "range_rule", "add_trainer_arguments", "TRAINER_OPTIONS", "trainer_options", "config_value",
           "current_config", "plain", "read_yaml_mapping", "quiet_lightning", "lightning_console",
           "encoder_setting", "set_encoder_setting"]
