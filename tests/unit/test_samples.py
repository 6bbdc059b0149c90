"""The demo's sample documents describe only what Baton has: every `baton` command in them exists
with the options it is given, and every webhook event type they name is one Baton sends."""

from __future__ import annotations

import re
import shlex

import pytest
from typer.testing import CliRunner

from baton.webhooks import WEBHOOK_TYPES
from baton_dev import samples
from baton_dev.cli import app

SAMPLE_TEXTS = {name: getattr(samples, name) for name in ("SAMPLE_MARKDOWN", "SAMPLE_HTML")}
SAMPLE_TEXTS["SAMPLE_REPORT_PAGES"] = "\n".join(line for page in samples.SAMPLE_REPORT_PAGES for line in page)
# `baton` followed by a subcommand word: prose like "Baton 1.4" or "the baton" does not match.
COMMAND = re.compile(r"^\s*(?:\$ )?(baton [a-z].*)$", re.MULTILINE)
EVENT_TYPE = re.compile(r"\bjob\.[a-z_]+\b")


def commands() -> list[tuple[str, str]]:
    return [(name, match) for name, text in SAMPLE_TEXTS.items() for match in COMMAND.findall(text)]


def test_the_samples_show_at_least_one_command() -> None:
    assert commands(), "the release notes sample shows how to use the CLI"


@pytest.mark.parametrize(("sample", "command"), commands())
def test_every_command_in_a_sample_exists_with_its_options(sample: str, command: str) -> None:
    # --help after the arguments: click still parses them all first, so an unknown command or option
    # fails (exit 2) before the help is printed.
    answer = CliRunner().invoke(app, [*shlex.split(command)[1:], "--help"])
    assert answer.exit_code == 0, f"{sample}: `{command}` does not exist:\n{answer.output}"


@pytest.mark.parametrize("sample", sorted(SAMPLE_TEXTS))
def test_every_webhook_event_type_in_a_sample_is_one_baton_sends(sample: str) -> None:
    named = set(EVENT_TYPE.findall(SAMPLE_TEXTS[sample]))
    assert named <= set(WEBHOOK_TYPES.values()), named - set(WEBHOOK_TYPES.values())
