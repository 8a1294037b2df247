"""One execution of a shard on a worker, as the brain records it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shardmill.wire.protocol import AttemptInfo, ErrorInfo

REPORTED = ("ok", "duplicate")  # outcomes of attempts whose result came ("ok (late)" too)


@dataclass
class Attempt:
    number: int
    worker: str
    started: float
    ended: float | None = None
    outcome: str = "running"
    error: ErrorInfo | None = None
    ran: float | None = None  # seconds its worker reports running it (it may have queued first)
    backup: bool = False  # a speculative second attempt
    output: str = ""  # what a successful attempt printed; a failed one's is in its error

    def info(self, offset: float = 0.0) -> AttemptInfo:
        """As users read it: `offset` turns the master's clock into wall-clock time, and what
        the attempt printed is in `output` whether it failed or not."""
        error, output = printed_apart(self.error, self.output)
        return AttemptInfo(
            attempt=self.number,
            worker=self.worker,
            started=self.started + offset,
            ended=None if self.ended is None else self.ended + offset,
            outcome=self.outcome,
            error=error,
            ran=self.ran,
            backup=self.backup,
            output=output,
        )


def printed_apart(error: ErrorInfo | None, output: str) -> tuple[ErrorInfo | None, str]:
    """An attempt's error and what it printed, as users read them: a failed attempt's output
    (kept in its error) moved to `output`."""
    if error is not None and error.output:
        return error.model_copy(update={"output": ""}), error.output
    return error, output


def as_read(info: AttemptInfo) -> AttemptInfo:
    """A stored attempt as users read it (see `printed_apart`)."""
    error, output = printed_apart(info.error, info.output)
    return (
        info if error is info.error else info.model_copy(update={"error": error, "output": output})
    )


def find(history: Sequence[Attempt], worker: str, number: int) -> Attempt | None:
    """A shard's attempt `number` on `worker`, if its story has it."""
    return next((a for a in history if a.worker == worker and a.number == number), None)


def reported(history: Sequence[Attempt], worker: str, number: int) -> bool:
    """Whether a shard's story has the result of `worker`'s attempt `number`: merged (ok) or
    dropped (duplicate)."""
    return any(
        a.worker == worker and a.number == number and a.outcome.split()[0] in REPORTED
        for a in history
    )


def ran_again(
    history: list[Attempt], worker: str, number: int, *, ended: float, ran: float
) -> bool:
    """A result of a merged shard, dropped: True when it is a second execution's, whose attempt
    (or one made from the result, for an execution the master did not know of) ends as a
    duplicate now; False for a copy of a result the story has (ok or duplicate)."""
    if reported(history, worker, number):
        return False
    known = find(history, worker, number)
    if known is None:
        known = Attempt(number, worker, ended - ran)
        history.append(known)
    known.ended, known.outcome, known.ran = ended, "duplicate", ran
    return True
