"""Exceptions in words for a person: the message, never the class name or a Python repr.

Used wherever an error reaches a person (the cycle's record and log, the API's bodies, a script's
one line). A message without words of its own gets a plain description instead of being empty.
"""


def error_text(exc) -> str:
    """`exc` in words: an OSError's reason and file, a KeyError's missing key, else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror[0].lower() + exc.strerror[1:]
        return f"{reason}: {exc.filename}" if exc.filename else reason
    if isinstance(exc, KeyError) and exc.args:
        return f"the entry {exc.args[0]!r} is missing"
    if isinstance(exc, EOFError) and not str(exc):
        return "the data end too early"
    text = str(exc).strip()
    if text:
        return text
    return "an error that gave no reason" if not isinstance(exc, MemoryError) else "out of memory"
