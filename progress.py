"""Progress on long work, on a terminal only: one line on stderr, rewritten in place.

    progress.show("training: fitting the model on 1,000,000 rows")   # a new stage: written at once
    progress.tick(f"bench_drift: trial {t} of {n}")                    # a counter: a few times a second
    progress.clear()                                                    # the work is done

The line is written (a carriage return, an erase to the end of the line, the text cut to the
terminal's width) only while stderr is a terminal: never in cron's log, a file or a pipe, so
nothing about it reaches a log. `clear()` erases it; the log handler of `settings.setup_logging`
(`LogHandler`) clears it before each record, so a log line never lands in the middle of it.
Nothing happens at import.
"""
import logging
import os
import sys
import time

UPDATES_PER_SECOND = 4
ERASE = "\r\033[K"  # back to the line's start, erase to its end


class _Line:
    """The one progress line of this process."""

    def __init__(self):
        self.shown = False
        self.last = float("-inf")

    def write(self, text, throttled):
        now = time.monotonic()
        if throttled and now - self.last < 1 / UPDATES_PER_SECOND:
            return
        stream = sys.stderr
        if not _terminal(stream):
            return
        stream.write(ERASE + text[:max(_columns(stream) - 1, 10)])
        stream.flush()
        self.shown, self.last = True, now

    def clear(self):
        if self.shown:
            self.shown = False
            try:
                sys.stderr.write(ERASE)
                sys.stderr.flush()
            except (OSError, ValueError):  # a terminal gone away: nothing left to erase
                pass


_line = _Line()


def _terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # a replaced or closed stream
        return False


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80  # 0: a terminal that has not said
    except (AttributeError, ValueError, OSError):
        return 80


def show(text):
    """A new stage of the work: its line, at once (on a terminal)."""
    _line.write(text, throttled=False)


def tick(text):
    """A counter's new value: its line, at most UPDATES_PER_SECOND times a second (on a terminal)."""
    _line.write(text, throttled=True)


def clear():
    """Erase the line, if one is shown: the work has ended, or other output follows."""
    _line.clear()


def megabytes(n) -> str:
    """A byte count in megabytes, as the lines say it."""
    return f"{n / 1e6:.1f} MB"


class LogHandler(logging.StreamHandler):
    """A StreamHandler (stderr) that erases the progress line before each record."""

    def emit(self, record):
        clear()
        super().emit(record)
