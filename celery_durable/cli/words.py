"""Errors in the CLI's own words.

An error's message names what to do next as Python (``Execution.retry()``), for the code that
caught it. Someone at the command line gets the command that does it (``durable retry ID``)
instead: each rule below turns one such phrase into its command, the run's id filled in.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# (phrase as the errors say it, the same in commands); {id} is the run the error is about.
RULES: list[tuple[str, str]] = [
    (r"durable\.list\(\) shows recent ones", "`durable ls` shows recent ones"),
    (r"Execution\.history\(\) lists", "`durable history {id}` lists"),
    (r"(Its )?history\(\) shows", "`durable history {id}` shows"),
    (r"Execution\.retry\(\)( \(celery durable retry\))?", "`durable retry {id}`"),
    (r"Execution\.skip\('(?P<node>[^']*)'\)", "`durable skip {id} {node}`"),
    (r"Execution\.waiting_on says", "`durable show {id}` says"),
    (r" \(Execution\.upgrade\(\)\)", ""),
    (r"restart_from / durable restart", "durable restart {id} SEQ"),
    (
        r"patch the state with update_state\(\), then retry\(\)",
        "patch the state with `durable patch {id} JSON`, then `durable retry {id}`",
    ),
    (r"call wait\(\) again or look at progress\(\)", "`durable progress {id}` follows it"),
    (r"delete with force=True", "delete with `durable delete {id} --force`"),
    (r"Delete the stored run first", "Delete the stored run first (`durable delete {id}`)"),
    # The values a command was given (resume --update, patch, skip --output), not a graph's
    # input: no command starts a run.
    (
        r"Input for graph '<[^']*>' does not fit its state model: (?P<detail>.*)\. Nothing "
        r"was stored or sent; fix the values and try again\.",
        "{detail}. Nothing was changed.",
    ),
    (
        r"Input for graph (?P<graph>'[^']*') does not fit its state model: (?P<detail>.*)\. "
        r"Nothing was stored or sent; fix the values and try again\.",
        "The values given do not fit the state model of graph {graph}: {detail}. Nothing was "
        "changed; fix them and run the command again.",
    ),
]
_COMPILED = [(re.compile(pattern, re.DOTALL), template) for pattern, template in RULES]


def for_cli(message: str, execution_id: str | None = None) -> str:
    """``message`` with each Python call that has a command replaced by that command."""
    run = execution_id or "ID"
    for pattern, template in _COMPILED:
        message = pattern.sub(_filled(template, run), message)
    return message


def _filled(template: str, run: str) -> Callable[[re.Match[str]], str]:
    return lambda match: template.format(id=run, **match.groupdict())


def of_error(exc: BaseException) -> str:
    """An error's message in the CLI's words, about the run it names (if it names one)."""
    run = getattr(exc, "execution_id", None) or getattr(exc, "child_id", None)
    return for_cli(str(exc), run if isinstance(run, str) else None)
