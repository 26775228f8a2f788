"""Checks a codec's options against its pydantic model, with errors that name the option."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def check_options(model: type[M], options: Mapping[str, Any]) -> M:
    """`options` as `model`, or a ValueError with one line per bad option, e.g. `tokens[0]: ...`."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ""
            for part in err.get("loc", ()):
                where += (
                    f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
                )
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            lines.append(f"{where}: {message}" if where else message)
        raise ValueError("; ".join(lines)) from None
