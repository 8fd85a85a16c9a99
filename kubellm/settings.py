"""Settings of a kubellm process (the operator's, the gateway's) from flags and environment: one pydantic-settings
model per process, every field a flag (``--field-name``) and an environment variable (``PREFIX_FIELD_NAME``);
flags win. Errors name each bad field both ways."""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class SettingsError(ValueError):
    """The configuration is invalid; the message names each bad field and how to set it."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def settings_parser(
    model: type[BaseSettings], *, prog: str, description: str, env_prefix: str
) -> argparse.ArgumentParser:
    """A flag per field of ``model``; a bool field is ``--x`` / ``--no-x``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, info in model.model_fields.items():
        env = env_prefix + name.upper()
        help_text = f"{info.description} (env {env}; default {info.get_default(call_default_factory=True)!r})"
        if info.annotation is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag(name), dest=name, metavar=name.upper(), help=help_text)
    return parser


def load(model: type[S], parser: argparse.ArgumentParser, argv: list[str] | None, *, env_prefix: str, what: str) -> S:
    """Environment plus flags, validated; raises :class:`SettingsError` naming every bad field as flag and
    variable (a rule across fields is named by its own message)."""
    arguments = vars(parser.parse_args(argv or []))
    overrides = {k: v for k, v in arguments.items() if v is not None}
    try:
        return model(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            # The item of a list setting is named by the setting itself (a flag has no item syntax).
            field = next((str(p) for p in error["loc"] if isinstance(p, str)), None)
            if field is None:
                lines.append(f"  {message}")
            else:
                lines.append(f"  {flag(field)} / {env_prefix}{field.upper()}: {message}")
        raise SettingsError(f"invalid {what} settings:\n" + "\n".join(lines)) from None
