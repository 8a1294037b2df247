"""What each colour means: an attempt's outcome and a job's state, one palette for the
dashboard and the report (the pages take it from the API, so the two never disagree)."""

from __future__ import annotations

# outcome -> (colour, what it means), in legend order. An outcome like "error (its twin runs
# on)" or "ok (late)" is drawn as its first word.
OUTCOMES: dict[str, tuple[str, str]] = {
    "ok": ("#2e7d32", "ran and was merged"),
    "running": ("#1f77b4", "running now"),
    "error": ("#d62728", "the task raised an exception"),
    "crash": ("#8c2d04", "the child process died (exit code or signal)"),
    "timeout": ("#ff7f0e", "killed at the job's task_timeout"),
    "lost": ("#9467bd", "its worker went silent or died"),
    "bad_input": ("#e377c2", "the input could not be read (not retried)"),
    "unknown_function": ("#8c564b", "the worker lacks the function's module"),
    "superseded": ("#9e9e9e", "another attempt of the shard won"),
    "cancelled": ("#c7c7c7", "the job was cancelled"),
}
OTHER = ("#17becf", "any other outcome")


def kind(outcome: str) -> str:
    """The legend entry an outcome is drawn as."""
    first = outcome.split(" (", 1)[0]
    return first if first in OUTCOMES else "other"


def colour(outcome: str) -> str:
    return OUTCOMES.get(kind(outcome), OTHER)[0]


def legend() -> list[dict[str, str]]:
    """Every colour with its meaning, in order: what the pages draw their keys from."""
    rows = [{"outcome": o, "colour": c, "meaning": m} for o, (c, m) in OUTCOMES.items()]
    return [*rows, {"outcome": "other", "colour": OTHER[0], "meaning": OTHER[1]}]
