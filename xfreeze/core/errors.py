from __future__ import annotations


class XFreezeError(ValueError):
    """Every error xfreeze raises for bad input. When it is raised, nothing has been changed."""


def check_choice(argument: str, value, choices: tuple) -> None:
    if value not in choices:
        raise XFreezeError(f"Expected one of {choices}. Received: {argument}={value!r}")
