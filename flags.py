"""Flags made from dataclass fields: an option is declared once, as a field whose default is
`option(default, help, ...)`, and becomes a flag (`lora_r` -> `--lora-r`) with that help, those
choices, in that --help group. Its allowed range is checked by its dataclass's `problems()`
(config.TrainConfig, adapters.MethodConfig): plain ifs that name the flag.
"""
import argparse
import difflib
import math
import sys
from dataclasses import field, fields

# --help's groups, in the order a user thinks of them
WHAT, HOW, METHOD, CONTROL = "what to train", "how to train", "method options", "files and control"
GROUPS = (WHAT, HOW, METHOD, CONTROL)


def option(default, help: str, group: str, choices=None, kind=None):
    """A dataclass field that is also a flag: its --help text, its --help group (GROUPS), the values
    argparse allows (`choices`) and the function that parses its text (`kind`; default: the field's
    type; a tuple takes a comma list)."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices,
                                            "kind": kind})


def bad(flag: str, allowed: str, value) -> str:
    """The one line every refused value gets: '--frac must be in (0, 1], got 0.0'."""
    return f"{flag} must be {allowed}, got {value!r}"


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def comma_list(text: str) -> tuple:
    return tuple(t for t in text.split(",") if t)


class Parser(argparse.ArgumentParser):
    """argparse with a short usage line and a "did you mean" for a misspelt flag, which is reported
    before a missing required argument: argparse checks the required ones first, and would blame a
    misspelt --glue-test as missing. `hint`: what to say when no flag resembles the unknown one
    (default: '<prog> --help lists every flag')."""

    def __init__(self, *args, hint: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint or f"{self.prog} --help lists every flag"

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        required = [a for a in self._actions if a.required] + \
            [g for g in self._mutually_exclusive_groups if g.required]
        for x in required:  # a first pass with nothing required, to find the unknown flags
            x.required = False
        try:
            _, unknown = self.parse_known_args(args)
        finally:
            for x in required:
                x.required = True
        if unknown:
            self.error("unrecognized arguments: " + " ".join(unknown))
        return super().parse_args(args, namespace)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            message += suggestion(message.split(":", 1)[1].split(), self._option_string_actions, self.hint)
        super().error(message)


def suggestion(unknown: list, actions: dict, hint: str = "train.py --help lists every flag") -> str:
    """'; did you mean --lr?' for the first unknown flag that resembles one: the same name with '-'
    for '_', a near spelling, or words its help uses (--learning_rate: 'peak learning rate');
    else '; ' + hint."""
    flags = [f for f in actions if f.startswith("--")]
    for token in unknown:
        name = token.split("=")[0].lower().replace("_", "-")
        words = " ".join(name.strip("-").split("-"))
        close = ([name] if name in flags
                 else difflib.get_close_matches(name, flags, n=1, cutoff=0.75)) or \
            [f for f in flags if len(words) > 3 and words in (actions[f].help or "").lower()][:1]
        if close:
            return f"; did you mean {close[0]}?"
    return f"; {hint}"


def add_flags(groups: dict, cls, skip=(), shown=None):
    """One flag per field of the dataclass `cls`, in its --help group (`groups`: name -> argparse
    group): bools switch on and off (--compile, --no-compile), tuples take a comma list. `shown`:
    field -> the text its default is shown as, where the value is not the field's own."""
    for f in fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name} must be declared with flags.option(): it is "
                            "a flag")
        flag, group = "--" + f.name.replace("_", "-"), groups[meta["group"]]
        if f.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                               help=meta["help"] + (" (default: on)" if f.default else ""))
            continue
        default = (shown or {}).get(f.name, ",".join(f.default) if f.type is tuple else f.default)
        suffix = f" (default: {default})" if default != "" else ""
        group.add_argument(flag, type=meta["kind"] or (comma_list if f.type is tuple else f.type),
                           default=f.default, choices=meta["choices"], help=meta["help"] + suffix)
