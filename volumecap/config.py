"""
Configuration files and their merge with command-line options.

Configuration files are TOML (read with the standard library's C{tomllib}).
Each process declares its settings as L{Setting}s; a file may set any of them
at the top level and nothing else.  Values come, in rising priority, from the
defaults, the file, and the command line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from twisted.python import usage


@dataclass(frozen=True)
class Setting:
    """
    One configuration key: its default, its parser and its help text.

    The help text names the unit, and the parser raises L{ValueError} with
    a message naming the expected form.
    """

    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str

    @property
    def option(self) -> str:
        return self.name.replace("_", "-")


def positive_number(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"expected a positive number of seconds, not {text!r}")
    return value


def percent(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise ValueError(f"expected a whole per cent from 1 to 100, not {text!r}")
    return value


def nonempty(text: str) -> str:
    if not str(text).strip():
        raise ValueError("expected a non-empty value")
    return str(text).strip()


def option_parameters(settings: Sequence[Setting]) -> list[list[Any]]:
    """
    Return C{optParameters} for a L{usage.Options} subclass.  Every default
    is L{None} so that L{merge} can tell an option given on the command line.
    """
    rows: list[list[Any]] = [["config", "c", None, "Configuration file (TOML) to read first."]]
    for setting in settings:
        shown = ",".join(setting.default) if isinstance(setting.default, tuple) else setting.default
        rows.append([setting.option, None, None, f"{setting.help} [default: {shown or 'none'}]"])
    return rows


def load_file(path: str, settings: Sequence[Setting]) -> dict[str, Any]:
    """
    Read a TOML configuration file.

    @raise usage.UsageError: the file cannot be read or parsed, or has
        unknown keys or invalid values; the message lists every problem.
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise usage.UsageError(f"cannot read configuration file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise usage.UsageError(f"invalid configuration file {path}: {error}") from None
    known = {setting.name: setting for setting in settings}
    problems = []
    values = {}
    for key, raw in data.items():
        setting = known.get(key)
        if setting is None:
            problems.append(f"unknown key {key!r}; valid keys: {', '.join(sorted(known))}")
            continue
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            problems.append(f"{key} = {raw!r}: expected a string or a number")
            continue
        try:
            values[key] = setting.parse(str(raw))
        except ValueError as error:
            problems.append(f"{key} = {raw!r}: {error}")
    if problems:
        raise usage.UsageError(f"invalid configuration file {path}:\n  " + "\n  ".join(problems))
    return values


def merge(options: Mapping[str, Any], settings: Sequence[Setting]) -> dict[str, Any]:
    """
    Combine defaults, the configuration file named by C{options["config"]}
    and command-line C{options}.

    @raise usage.UsageError: listing every invalid value.
    """
    values = {setting.name: setting.default for setting in settings}
    problems = []
    if options.get("config"):
        try:
            values.update(load_file(options["config"], settings))
        except usage.UsageError as error:
            problems.append(str(error))
    for setting in settings:
        raw = options.get(setting.option)
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as error:
            problems.append(f"--{setting.option} {raw!r}: {error}")
    if problems:
        raise usage.UsageError("\n".join(problems))
    return values
