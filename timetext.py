"""Times in words, for the status page, `status.py --check` and the schedule's facts.

    epoch(value)        seconds since the epoch of an ISO 8601 text or a number, or None
    iso(epoch)          a UTC ISO 8601 text (whole seconds), or None
    ago(iso, now)       "5 min ago", "in 3 min" and the like
    shown_time(iso)     "YYYY-MM-DD HH:MM UTC"
    span(seconds)       "40 s", "20 min", "1.5 h", "3.0 days"
"""
from datetime import datetime, timezone


def epoch(value):
    """Seconds since the epoch of an ISO 8601 text or a number; None when it is neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    return None


def iso(seconds):
    """A UTC ISO 8601 text, whole seconds, of seconds since the epoch; None for None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(float(seconds), timezone.utc).isoformat(timespec="seconds")


def span(seconds):
    """A length of time in words: '40 s', '20 min', '1.5 h', '3.0 days'."""
    d = abs(seconds)
    if d < 90:
        return f"{int(round(d))} s"
    if d < 90 * 60:
        return f"{int(round(d / 60))} min"
    if d < 36 * 3600:
        return f"{d / 3600:.1f} h"
    return f"{d / 86400:.1f} days"


def ago(when, now):
    """'5 min ago', 'in 3 min' and the like, between two ISO 8601 times (or epochs)."""
    t, n = epoch(when), epoch(now)
    if t is None or n is None:
        return ""
    return ("in {}" if t - n > 0 else "{} ago").format(span(t - n))


def shown_time(when):
    """An ISO 8601 time as 'YYYY-MM-DD HH:MM UTC'."""
    t = epoch(when)
    if t is None:
        return when or ""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
