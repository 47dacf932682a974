"""The cycle's schedule: cronjob.txt read once, its trigger, and the daemon that runs the cycle on it.

`job_line` is the one reading of a crontab text (the first line that is not blank or a
comment); `read_cronjob` gives its five schedule fields, `make_trigger` the APScheduler trigger,
and `run_daemon` runs a job on it until SIGTERM or SIGINT (fullprocess.py --daemon). The status
page asks the same trigger for the next run.
"""
import logging
import signal
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CRONJOB = HERE / "cronjob.txt"


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


def run_daemon(run, expr, what):
    """Run `run()` (one cycle; it returns the cycle's record) on schedule `expr` until SIGTERM or SIGINT;
    return 0. A record with errors is logged as a failed cycle; the daemon keeps going. `what` names the
    config in the start line."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
    from apscheduler.schedulers.blocking import BlockingScheduler

    trigger = make_trigger(expr)
    scheduler = BlockingScheduler()

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
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("daemon started: schedule %r, config %s", expr, what)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        scheduler.shutdown(wait=False)
    logger.info("daemon stopped")
    return 0
