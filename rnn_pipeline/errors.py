"""The pipeline's errors. The CLI prints ``str(error)`` on one line and exits non-zero."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose (bad input, bad config, bad state)."""


class ConfigError(PipelineError):
    """A configuration file that cannot be read or does not match the schema."""


class DataValidationError(PipelineError):
    """Bad data: names the file, column, row and value where they are known."""

    def __init__(self, problem: str, *, source: str | None = None, column: str | None = None,
                 row: int | None = None, value: object = None):
        self.problem, self.source, self.column, self.row, self.value = problem, source, column, row, value
        parts = []
        if source:
            parts.append(str(source))
        if column is not None:
            parts.append(f"column '{column}'")
        if row is not None:
            parts.append(f"row {row}")
        where = ", ".join(parts)
        text = f"{where}: {problem}" if where else problem
        if value is not None:
            text += f" (value: {value!r})"
        super().__init__(text)


class RegistryError(PipelineError):
    """The model registry is not in the state an operation needs (no champion, unknown model)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
