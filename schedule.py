"""The cycle's schedule: cronjob.txt read once, its trigger, the daemon that runs the cycle on it, and
the schedule really in force.

`job_line` is the one reading of a crontab text (the first line that is not blank or a
comment); `read_cronjob` gives its five schedule fields, `make_trigger` the APScheduler trigger,
and `run_daemon` runs a job on it until SIGTERM or SIGINT (fullprocess.py --daemon), recording its
schedule, pid, host and a heartbeat in log_folder_path/daemon.json while it runs.

`in_force` says what really runs a config's cycle: the line `make cron-install` put in this
user's crontab (read with `crontab -l`, bounded and cached), a daemon whose pid exists and whose
heartbeat is younger than two schedule periods, or nothing ("no schedule installed"), each in
words, with the next run. The status page and `status.py --check` show it.
"""
import json
import logging
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import atomicfiles
from timetext import ago, epoch, iso, shown_time, span

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CRONJOB = HERE / "cronjob.txt"
HEARTBEAT = "daemon.json"  # in log_folder_path, while a daemon runs
HEARTBEAT_MAX_SECONDS = 60.0  # the daemon's heartbeat timer: every quarter period, at most this
CRONTAB_TIMEOUT = 2.0  # seconds `crontab -l` (and pgrep) may take before the answer is "cannot tell"
CRONTAB_CACHE_SECONDS = 10.0  # the status page asks crontab at most this often per process
START_CRON = "start it (as root) with: service cron start"  # scripts/cron.sh says the same
# cron's shorthands (crontab(5)); @reboot has no next run
MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
          "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's 0..6 (7 is Sunday too)


def job_line(text):
    """A crontab text's first job line (stripped; blank lines and comments skipped), or None."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return None


def read_cronjob(path=CRONJOB) -> str:
    """The five schedule fields of cronjob.txt's first job line (comments and blank lines skipped)."""
    line = job_line(Path(path).read_text(encoding="utf-8"))
    if line is None:
        raise ValueError(f"{path} holds no crontab line")
    fields = line.split()
    if len(fields) < 6:
        raise ValueError(f"{path}: a crontab line has five schedule fields and a command: {line!r}")
    return " ".join(fields[:5])


def make_trigger(expr):
    """A CronTrigger from five crontab fields, or six with a leading seconds field (for tests)."""
    # lazy: the idle cycle and the status page's import load no scheduler
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expr)
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow)
    raise ValueError(f"a schedule has 5 crontab fields (or 6, seconds first), not {len(fields)}: {expr!r}")


_TRIGGERS = {}


def fire_times(expr, now, n=2):
    """The next `n` runs of schedule `expr` (make_trigger's form) at or after `now` (aware), as UTC datetimes.
    Raises ValueError for a schedule the trigger refuses."""
    trigger = _TRIGGERS.get(expr)
    if trigger is None:
        trigger = _TRIGGERS[expr] = make_trigger(expr)
    out, prev, at = [], None, now.astimezone(trigger.timezone)
    for _ in range(n):
        prev = trigger.get_next_fire_time(prev, at if prev is None else prev)
        if prev is None:
            break
        out.append(prev.astimezone(timezone.utc))
    return out


def period_seconds(expr, now):
    """The gap between the next two runs of `expr` after `now`, in seconds (None if it never runs twice)."""
    times = fire_times(expr, now)
    return (times[1] - times[0]).total_seconds() if len(times) == 2 else None


def cron_weekdays(field):
    """A crontab day-of-week field as the names APScheduler reads the same way: cron counts from Sunday = 0
    (7 too), APScheduler from Monday = 0, so numbers, ranges and steps are spelled out as names."""
    if field == "*" or any(c.isalpha() for c in field):
        return field
    days = set()
    for part in field.split(","):
        rng, _, step = part.partition("/")
        if rng == "*":
            lo, hi = 0, 6
        else:
            lo, _, hi = rng.partition("-")
            lo, hi = int(lo), int(hi or (6 if step else lo))
        days.update(d % 7 for d in range(lo, hi + 1, int(step or 1)))
    return ",".join(WEEKDAYS[d] for d in sorted(days))


def cron_expr(line):
    """The schedule of a crontab line as written ("*/10 * * * *", "@daily") and as make_trigger reads it
    with cron's meaning (None for @reboot): (written, readable)."""
    words = line.split()
    if words[0].startswith("@"):
        return words[0], MACROS.get(words[0])
    minute, hour, day, month, dow = words[:5]
    return " ".join(words[:5]), " ".join((minute, hour, day, month, cron_weekdays(dow)))


# ---------------------------------------------------------------------------------------------
# The crontab, as `crontab -l` and pgrep tell it
# ---------------------------------------------------------------------------------------------

_CRONTAB = {}


def _run(argv, timeout):
    import subprocess  # lazy: the idle cycle imports this module

    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _cron_running(timeout):
    """Whether a cron daemon runs (pgrep -x cron or crond, as scripts/cron.sh asks); None when pgrep cannot tell."""
    import shutil
    import subprocess

    pgrep = shutil.which("pgrep")
    if pgrep is None:
        return None
    try:
        return any(_run([pgrep, "-x", name], timeout).returncode == 0 for name in ("cron", "crond"))
    except (OSError, subprocess.TimeoutExpired):
        return None


def read_crontab(timeout=CRONTAB_TIMEOUT, max_age=CRONTAB_CACHE_SECONDS):
    """This user's crontab as `crontab -l` (the one on PATH) prints it, and whether a cron daemon runs:
    {"user", "lines", "error" (words, or None), "cron_running" (True, False or None: cannot tell)}.
    Asked at most every `max_age` seconds per PATH; a missing crontab is said, not raised."""
    import pwd
    import shutil
    import subprocess

    key = os.environ.get("PATH", "")
    hit = _CRONTAB.get(key)
    if hit is not None and time.monotonic() - hit[0] < max_age:
        return hit[1]
    user = pwd.getpwuid(os.getuid()).pw_name
    found = {"user": user, "lines": [], "error": None, "cron_running": None}
    crontab = shutil.which("crontab")
    if crontab is None:
        found["error"] = "crontab is not installed (not on PATH), so no cron line can run the cycle"
    else:
        try:
            result = _run([crontab, "-l"], timeout)
        except subprocess.TimeoutExpired:
            result, found["error"] = None, f"crontab -l did not answer within {timeout:g} s"
        except OSError as exc:
            result, found["error"] = None, f"crontab -l cannot run: {exc.strerror}"
        if result is not None and result.returncode == 0:
            found["lines"] = result.stdout.splitlines()
        elif result is not None and not result.stderr.startswith("no crontab for"):
            said = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0]
            found["error"] = f"crontab -l failed: {said}"
        if any(f"{HERE}/fullprocess.py" in line for line in found["lines"]):
            found["cron_running"] = _cron_running(timeout)
    _CRONTAB[key] = (time.monotonic(), found)
    return found


def forget_crontab():
    """Drop the cached crontab answers (the next read_crontab asks again)."""
    _CRONTAB.clear()


def cycle_line(lines, config_path, repo=HERE):
    """The crontab line that runs this checkout's cycle for `config_path` (the line `make cron-install`
    writes, marked as scripts/cron.sh marks it: REPO/fullprocess.py), or None."""
    mark = f"{repo}/fullprocess.py"
    want = Path(config_path).resolve()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or mark not in line:
            continue
        words = line.split()
        config = words[words.index("--config") + 1] if "--config" in words[:-1] else repo / "config.json"
        if Path(config).resolve() == want:
            return line
    return None


# ---------------------------------------------------------------------------------------------
# The daemon's heartbeat
# ---------------------------------------------------------------------------------------------

def read_heartbeat(path):
    """The daemon's record at `path` (daemon.json) as a dict, or None when there is none (or it is unreadable)."""
    try:
        beat = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return beat if isinstance(beat, dict) and isinstance(beat.get("pid"), int) else None


def _pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _host(beat):
    return beat.get("host") or "an unknown host"


def daemon_stopped(beat, now):
    """Why the daemon recorded in `beat` no longer runs, in words, or None while it does: its pid exists
    (on this host; another host's cannot be asked) and its heartbeat is younger than two schedule periods."""
    who = f"the daemon (pid {beat['pid']} on {_host(beat)})"
    last = epoch(beat.get("heartbeat_at"))
    if last is None:
        return f"{who} recorded no heartbeat"
    heard = f"last heartbeat {shown_time(last)}, {ago(last, now)}"
    if beat.get("host") == os.uname().nodename and not _pid_exists(beat["pid"]):
        return f"{who} is gone ({heard})"
    try:
        period = period_seconds(str(beat.get("schedule")), now)
    except ValueError as exc:
        return f"{who} recorded a schedule that cannot run: {exc}"
    if period is None or epoch(now) - last >= 2 * period:
        bound = f" (more than two schedule periods, {span(2 * period)})" if period else ""
        return f"{who} has stopped beating: {heard}{bound}"
    return None


class Heartbeat:
    """The daemon's record in `path`: written at start, after each cycle and on a timer; removed on a clean stop."""

    def __init__(self, path, expr, what):
        self.path, self.lock, self.stopped = Path(path), threading.Lock(), False
        self.record = {"pid": os.getpid(), "host": os.uname().nodename, "schedule": expr, "config": str(what),
                       "started_at": iso(time.time())}

    def beat(self):
        with self.lock:
            if self.stopped:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomicfiles.write_text(self.path, json.dumps({**self.record, "heartbeat_at": iso(time.time())},
                                                         sort_keys=True) + "\n")

    def after(self, run):
        """`run`, beating once it returns or raises."""
        def beating():
            try:
                return run()
            finally:
                self.beat()
        return beating

    def stop(self):
        with self.lock:
            self.stopped = True
            beat = read_heartbeat(self.path)
            if beat is not None and beat["pid"] == os.getpid():  # another daemon's record is left alone
                self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The schedule in force
# ---------------------------------------------------------------------------------------------

def _entry(source, written, readable, now):
    entry = {"source": source, "expr": written, "next": None, "period_seconds": None, "problem": None}
    if readable is None:
        entry["problem"] = f"{written} has no next run"
        return entry
    try:
        times = fire_times(readable, now)
    except ValueError as exc:
        entry["problem"] = f"its next run cannot be computed: {exc}"
        return entry
    entry["next"] = times[0].isoformat(timespec="seconds") if times else None
    entry["period_seconds"] = (times[1] - times[0]).total_seconds() if len(times) == 2 else None
    return entry


def in_force(config_path, log_folder, now=None) -> dict:
    """What really runs the cycle of `config_path`, in words: {"schedules", "next", "none", "notes"}.

    schedules: the crontab line (when the cron daemon runs, or pgrep cannot tell) and the daemon whose
    record in `log_folder` is alive, each {source, expr, next, period_seconds, problem, text} (the daemon's
    also pid, host, started_at, heartbeat_at); next: the earliest next run of those; none: "no schedule
    installed: WHY" when there is none; notes: what is wrong beside a schedule in force (a dead daemon's
    record, a cron line no cron daemon runs, an unreadable crontab).
    """
    now = datetime.now(timezone.utc) if now is None else now
    schedules, missing = [], []  # missing: (words, worth a note even when another schedule runs)
    cron = read_crontab()
    line = cycle_line(cron["lines"], config_path)
    if line is None:
        missing.append((cron["error"] or f"the crontab of {cron['user']} has no monitoring cycle for {config_path}",
                        cron["error"] is not None and cron["error"].startswith("crontab -l")))
    elif cron["cron_running"] is False:
        missing.append((f"the line is in the crontab of {cron['user']}, but the cron daemon is not running, "
                        f"so nothing runs it; {START_CRON}", True))
    else:
        entry = _entry("crontab", *cron_expr(line), now)
        daemon = ("the cron daemon is running" if cron["cron_running"]
                  else "pgrep cannot tell whether a cron daemon runs")
        entry["text"] = f"cron runs the cycle on {entry['expr']} (the crontab of {cron['user']}; {daemon})"
        schedules.append(entry)
    beat = read_heartbeat(Path(log_folder) / HEARTBEAT)
    stopped = daemon_stopped(beat, now) if beat is not None else None
    if beat is None:
        missing.append(("no daemon runs (fullprocess.py --daemon)", False))
    elif stopped is not None:
        missing.append((f"{stopped}; its record {Path(log_folder) / HEARTBEAT} is left behind "
                        "(the next daemon replaces it)", True))
    else:
        expr = str(beat["schedule"])
        entry = _entry("daemon", expr, expr, now)
        entry.update(pid=beat["pid"], host=beat.get("host"), started_at=beat.get("started_at"),
                     heartbeat_at=beat.get("heartbeat_at"))
        entry["text"] = (f"the daemon (fullprocess.py --daemon, pid {beat['pid']} on {_host(beat)}) runs the "
                         f"cycle on {expr}; last heartbeat {shown_time(entry['heartbeat_at'])} "
                         f"({ago(entry['heartbeat_at'], now)})")
        schedules.append(entry)
    for entry in schedules:
        if entry["problem"]:
            entry["text"] += f"; {entry['problem']}"
    nexts = [e["next"] for e in schedules if e["next"]]
    return {
        "schedules": schedules,
        "next": min(nexts, key=epoch) if nexts else None,
        "none": None if schedules else "no schedule installed: " + "; ".join(words for words, _ in missing),
        "notes": [words for words, note in missing if note] if schedules else [],
    }


def run_daemon(run, expr, what, heartbeat=None):
    """Run `run()` (one cycle; it returns the cycle's record) on schedule `expr` until SIGTERM or SIGINT;
    return 0. A record with errors is logged as a failed cycle; the daemon keeps going. `what` names the
    config in the start line."""
    # `heartbeat`, a path: the daemon's record while it runs (Heartbeat), beaten after each cycle and on a timer
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
    from apscheduler.schedulers.blocking import BlockingScheduler

    trigger = make_trigger(expr)
    scheduler = BlockingScheduler()
    pulse = Heartbeat(heartbeat, expr, what) if heartbeat is not None else None
    if pulse is not None:
        run = pulse.after(run)

    def job():
        rec = run()
        if rec.errors:  # said once, in words: raised, it would also print the scheduler's traceback
            logger.error("scheduled cycle failed: %s (the daemon keeps going)", "; ".join(rec.errors))

    def on_event(event):
        if event.code == EVENT_JOB_ERROR:
            logger.error("scheduled cycle failed: %s (the daemon keeps going)", event.exception)
        else:
            logger.warning("a scheduled cycle was missed (coalesced into the next run)")

    def stop(signum, _frame):
        logger.info("received %s: stopping after any running cycle", signal.Signals(signum).name)
        scheduler.shutdown(wait=False)

    scheduler.add_listener(on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    scheduler.add_job(job, trigger, id="cycle", name="monitoring cycle", max_instances=1, coalesce=True,
                      misfire_grace_time=60)
    if pulse is not None:
        period = period_seconds(expr, datetime.now(timezone.utc)) or HEARTBEAT_MAX_SECONDS
        scheduler.add_job(pulse.beat, "interval", seconds=min(HEARTBEAT_MAX_SECONDS, period / 4), id="heartbeat",
                          name="heartbeat", max_instances=1, coalesce=True)
        pulse.beat()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("daemon started: schedule %r, config %s", expr, what)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        scheduler.shutdown(wait=False)
    finally:
        if pulse is not None:
            pulse.stop()
    logger.info("daemon stopped")
    return 0
