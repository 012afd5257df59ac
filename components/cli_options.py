"""What every ``storeflow`` command shares: the ``--config``/``--set`` options, how they become
:class:`~storeflow.components.config.Settings`, and the console commands print to.

The commands modules (next to what each command drives) and the CLI that registers them
(:mod:`storeflow.pipelines.cli`) both import this; nothing here imports a command. Kept light
(typer, rich): ``storeflow --help`` imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

# soft_wrap: a line is never broken by rich at the console's width (80 where the width is unknown, as in CI
# logs or a pipe, or where COLUMNS says so): an error stays one line and a printed path or URL stays whole to
# copy; a terminal wraps long lines itself. Tables and progress bars still fit the width.
# markup off: what is printed is printed as it is. With rich's markup read in every line, a path, a value or an
# error naming one with brackets lost them ("--config /tmp/[x]/c.yaml" was said to be /tmp//c.yaml) or, with a
# "[/x]", the command died of a MarkupError instead of saying what was wrong. Colour is given as a style
# (fail, rich.text.Text.assemble).
console = Console(soft_wrap=True, markup=False)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="storeflow YAML config file.")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config value: dotted.key=value, repeatable. The value is JSON "
                "where it parses (numbers, true/false, lists), else text: image.tag='\"2.0\"' for text."),
]


def settings_from(config: Optional[Path], overrides: Optional[list[str]] = None):
    """Load settings, turning config errors into a one-line message and exit code 2."""
    from storeflow.components.config import ConfigError, load_settings

    data: dict = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--set expects dotted.key=value, got {item!r}")
        node = data
        *parents, leaf = key.split(".")
        if not all(key.split(".")):
            fail(f"--set expects dotted.key=value, got {item!r}")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # an earlier --set gave the parent a value: one of the two is a mistake
                fail(f"--set {item}: an earlier --set gave {'.'.join(parents[:depth + 1])} a value, not keys")
        node[leaf] = _value(raw)
    with refusing(ConfigError):
        return load_settings(data, path=config)


def fail(message: str, code: int = 2) -> NoReturn:
    """Say what is wrong in one red line and exit: 2 (the default) for what the user gave (a value, a file, a
    config), 1 for what failed on the way (a pipeline, a server, Shopify)."""
    console.print(message, style="red")
    raise typer.Exit(code)


@contextmanager
def refusing(*errors: type[BaseException], code: int = 2) -> Iterator[None]:
    """:func:`fail` with the message of any of ``errors`` raised inside."""
    try:
        yield
    except errors as exc:
        fail(str(exc), code)


def _value(raw: str):
    """A --set value: JSON when it parses (numbers, true/false, lists, objects), else the plain string.

    Not YAML: YAML 1.1 turns words such as ``off``/``no``/``on`` into booleans (``serving.auth=off``).
    """
    import json

    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
