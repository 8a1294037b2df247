"""One execution of a shard on a worker, as the brain records it."""

from __future__ import annotations

from dataclasses import dataclass

from shardmill.wire.protocol import AttemptInfo, ErrorInfo


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
