"""The report's pictures: the confusion matrix and the trend plots, drawn with matplotlib as PNG bytes."""
import io
import math
from datetime import datetime, timezone

from settings import COLUMNS, FEATURES

CONFUSION_SIZE = (4.8, 4.0)   # inches
CONFUSION_DPI = 150           # -> 720 x 600 pixels
TREND_SIZE = (7.0, 2.6)
TREND_DPI = 150


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def confusion_png(matrix, title) -> bytes:
    """The confusion matrix as a PNG: labelled axes, the count in every cell."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=CONFUSION_SIZE, dpi=CONFUSION_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues", vmin=0)
    peak = max(max(row) for row in matrix) or 1
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=16,
                    color="white" if matrix[i][j] > peak / 2 else "black")
    labels = ["stayed (0)", "exited (1)"]
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _trend_figure(ylabel, title):
    from matplotlib.figure import Figure

    fig = Figure(figsize=TREND_SIZE, dpi=TREND_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def f1_trend_png(deployments) -> bytes:
    fig, ax = _trend_figure("F1 on the test data", "F1 per deployment")
    xs = list(range(1, len(deployments) + 1))
    ys = [d["f1"] if d["f1"] is not None else float("nan") for d in deployments]
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for x, d in zip(xs, deployments):
        if d["action"] != "deploy":  # a rollback, or a restore (--rollback --to)
            ax.plot([x], [d["f1"]], marker="s", color="tab:red", linestyle="none")
    labels = [f"v{d['version']:04d}" + (" (rb)" if d["action"] != "deploy" else "") for d in deployments]
    step = max(1, len(xs) // 12)
    ax.set_xticks(xs[::step], labels[::step], fontsize=8)
    ax.set_xlabel("deployment (rb: rollback)")
    return _png(fig)


def missing_trend_png(summaries) -> bytes:
    fig, ax = _trend_figure("% of rows missing", "Missing data per ingestion")
    xs = list(range(1, len(summaries) + 1))
    for col in COLUMNS:
        ax.plot(xs, [s["missing"].get(col) or 0.0 for s in summaries], marker=".", label=col)
    ax.set_xlabel("ingestion run")
    # A floor of 1% keeps a run of zeros on the axis, not floating in an empty band. (With nothing
    # missing in any run the report says so in words and draws no plot.)
    peak = max((s["missing"].get(col) or 0.0) for s in summaries for col in COLUMNS)
    ax.set_ylim(0, max(1.0, peak * 1.15))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def timing_trend_png(timings) -> bytes:
    fig, ax = _trend_figure("seconds", "Step timings per run")
    for step, secs in sorted(timings.items()):
        ax.plot(range(1, len(secs) + 1), secs, marker=".", label=step)
    values = [v for secs in timings.values() for v in secs if v > 0]
    if values and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("run of the step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


# Tick steps of a time axis, in seconds: the smallest that gives at most TIME_TICKS ticks is used.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
              86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)
TIME_TICKS = 6


def time_ticks(start, end):
    """Ticks for a UTC time axis from `start` to `end` (epoch seconds): [(epoch, label)], on whole
    steps of the clock; a label shows the date on the first tick and wherever the day changes."""
    span = max(end - start, 1.0)
    step = next((s for s in TIME_STEPS if span / s < TIME_TICKS), TIME_STEPS[-1] * math.ceil(span / TIME_STEPS[-1] / TIME_TICKS))
    first = math.ceil(start / step) * step
    clock = "%H:%M:%S" if step < 60 else "%H:%M"
    ticks, day = [], None
    t = first
    while t <= end:
        when = datetime.fromtimestamp(t, timezone.utc)
        if step >= 86400:
            label = when.strftime("%Y-%m-%d")
        elif when.date() != day:
            label = when.strftime(f"%Y-%m-%d\n{clock}")
        else:
            label = when.strftime(clock)
        day = when.date()
        ticks.append((float(t), label))
        t += step
    return ticks


def window_middles(windows):
    """Where each window is drawn: the middle of its time span."""
    return [w["window_start"] + w["window_seconds"] / 2 for w in windows]


def time_axis(ax, windows):
    """The x axis from the first window's start to the last one's end, in UTC: it fits the data
    (matplotlib alone spans four years around a single time)."""
    start = min(w["window_start"] for w in windows)
    end = max(w["window_start"] + w["window_seconds"] for w in windows)
    ticks = time_ticks(start, end)
    ax.set_xlim(start, end)
    ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
    ax.set_xlabel("time (UTC); each point is a window, at its middle")


def live_share_png(windows, thresholds) -> bytes:
    return _png(live_share_figure(windows, thresholds))


def live_share_figure(windows, thresholds):
    """The predicted exit share per window, as a matplotlib Figure."""
    fig, ax = _trend_figure("share of rows", "Predicted exit share per window (live traffic)")
    xs = window_middles(windows)
    ax.plot(xs, [w["exit_share"] if w["exit_share"] is not None else float("nan") for w in windows],
            marker=".", color="tab:blue")
    time_axis(ax, windows)
    return fig


def live_psi_png(windows, thresholds) -> bytes:
    return _png(live_psi_figure(windows, thresholds))


def live_psi_figure(windows, thresholds):
    """The input PSI per feature per window, with the display lines and the alarms, as a matplotlib Figure."""
    fig, ax = _trend_figure("PSI against training", "Input PSI per feature per window (live traffic)")
    xs = window_middles(windows)
    for col in FEATURES:
        ax.plot(xs, [w["psi"].get(col, float("nan")) for w in windows], marker=".", label=col)
    # display lines only: the level is the alarm's test (traffic.py), marked on the windows it judged "act"
    ax.axhline(thresholds["psi_watch"], color="tab:orange", linestyle="--", linewidth=1,
               label=f"PSI {thresholds['psi_watch']:g}")
    ax.axhline(thresholds["psi_act"], color="tab:red", linestyle="--", linewidth=1, label=f"PSI {thresholds['psi_act']:g}")
    alarmed = [(x, max(w["psi"].values())) for x, w in zip(xs, windows) if w["level"] == "act" and w["psi"]]
    if alarmed:
        ax.scatter(*zip(*alarmed), marker="x", color="black", s=40, zorder=3, label="alarm: act")
    peak = max([v for w in windows for v in w["psi"].values()] + [thresholds["psi_act"]])
    if peak > 5:
        ax.set_yscale("symlog", linthresh=0.1)
    time_axis(ax, windows)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
