"""Command line: python -m imface COMMAND [options].

A stage's commands live in its cli.py (imface/corpus/cli.py, imface/samples/cli.py, ...); the
top-level ones that belong to no stage folder (info, eval, correspond, generate, rig) live in
imface/commands.py. The library modules they call hold none of their option parsing. A command's
module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (or ``add_<cmd>_arguments`` /
``run_<cmd>`` when one module serves several commands). The table below is the only place that
lists them, and modules are imported only when their command runs (torch imports are slow).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from imface.errors import UserError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("imface.commands", "show what a checkpoint holds"),
    "synth": ("imface.corpus.cli", "make a synthetic FaceScape-like corpus from the Anny head"),
    "prepare": ("imface.samples.cli", "preprocess scans into cached SDF samples"),
    "train": ("imface.train.cli", "train ImFace on a prepared corpus (torchrun for several GPUs)"),
    "eval": ("imface.commands", "evaluate a checkpoint against the PCA baseline"),
    "fit": ("imface.fit.cli", "fit the model to a scan (any pose and unit)"),
    "correspond": ("imface.commands", "dense correspondence between two faces"),
    "generate": ("imface.commands", "sample random faces from the code statistics"),
    "rig": ("imface.commands", "export the FaceScape expressions (neutral + 19) of one identity as a rig"),
    "extract": ("imface.extract", "extract a face mesh for given codes"),
    "export-topology": ("imface.extract", "write a shared template topology mesh"),
    "appearance": ("imface.appearance.cli", "radiance field from multi-view images: synth, train, render"),
}


def available_commands() -> dict[str, tuple[str, str]]:
    """Commands whose implementing module is present in this installation."""
    return {name: entry for name, entry in COMMANDS.items() if importlib.util.find_spec(entry[0]) is not None}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imface",
        description="ImFace / ImFace++ nonlinear 3D morphable face model.",
        epilog="python -m imface COMMAND --help shows the options of a command (defaults in brackets).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = available_commands()
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsFormatter)
        if name == wanted:  # import only the module of the command that runs
            add_arguments, run = _hooks(importlib.import_module(module_name), name)
            add_arguments(p)
            p.set_defaults(_run=run)
            _show_every_default(p)
    return parser


_NO_DEFAULT = (None, False, argparse.SUPPRESS)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with the option's default, when it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if flag or "%(default)" in text or not action.option_strings or action.default in _NO_DEFAULT:
            return text
        return f"{text} (default: %(default)s)".strip()


def _show_every_default(parser: argparse.ArgumentParser) -> None:
    """Options without a help text still show their default (argparse hides such lines), in the
    command's parser and in its actions' (``appearance train``)."""
    parser.formatter_class = DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _show_every_default(nested)
        elif not action.help and action.option_strings and action.default not in _NO_DEFAULT + (True,):
            action.help = "default: %(default)s"


def _hooks(module, name: str):
    slug = name.replace("-", "_")
    add = getattr(module, f"add_{slug}_arguments", None) or module.add_arguments
    run = getattr(module, f"run_{slug}", None) or module.run
    return add, run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
