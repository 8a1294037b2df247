"""A slot's output file: the tail kept, the file emptied for the next task, text always."""

from __future__ import annotations

import os

from shardmill.worker.output import Capture, new_file, tail


def test_take_keeps_the_tail_and_empties_the_file_for_the_next_task() -> None:
    # Given an output file that a task wrote more than the limit to, and an echo pipe
    with new_file() as f:
        r, w = os.pipe()
        try:
            capture = Capture(f.fileno(), limit=10, echo=w)
            os.write(f.fileno(), b"0123456789abcdef\xc3")
            # When the task's output is taken
            text = capture.take()
            # Then the last 10 bytes are kept, the cut character replaced, the drop named
            assert text == "[... 7 earlier bytes dropped]\n789abcdef\ufffd"
            assert os.read(r, 100) == b"789abcdef\xc3"  # and the worker's stderr saw them
            # And the next task starts from an empty file, costing no read when silent
            assert os.fstat(f.fileno()).st_size == 0 and capture.take() == ""
            os.write(f.fileno(), b"next\n")
            assert tail(f.fileno(), 1 << 20) == "next\n"
        finally:
            os.close(r)
            os.close(w)
