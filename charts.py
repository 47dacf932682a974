"""The report's pictures: the confusion matrix and the trend plots, drawn with matplotlib as PNG bytes."""
import io
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
        if d["action"] == "rollback":
            ax.plot([x], [d["f1"]], marker="s", color="tab:red", linestyle="none")
    labels = [f"v{d['version']:04d}" + (" (rb)" if d["action"] == "rollback" else "") for d in deployments]
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
    # A floor of 1% keeps a run of zeros on the axis, not floating in an empty band.
    peak = max((s["missing"].get(col) or 0.0) for s in summaries for col in COLUMNS)
    ax.set_ylim(0, max(1.0, peak * 1.15))
    if peak == 0:
        ax.text(0.5, 0.5, "no missing values in any of these runs", transform=ax.transAxes, ha="center",
                va="center", color="dimgray")
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


def live_share_png(windows, thresholds) -> bytes:
    fig, ax = _trend_figure("share of rows", "Predicted exit share per window (live traffic)")
    xs = [datetime.fromtimestamp(w["window_start"], timezone.utc) for w in windows]
    ax.plot(xs, [w["exit_share"] if w["exit_share"] is not None else float("nan") for w in windows],
            marker=".", color="tab:blue")
    fig.autofmt_xdate()
    return _png(fig)


def live_psi_png(windows, thresholds) -> bytes:
    fig, ax = _trend_figure("PSI against training", "Input PSI per feature per window (live traffic)")
    xs = [datetime.fromtimestamp(w["window_start"], timezone.utc) for w in windows]
    for col in FEATURES:
        ax.plot(xs, [w["psi"].get(col, float("nan")) for w in windows], marker=".", label=col)
    ax.axhline(thresholds["psi_watch"], color="tab:orange", linestyle="--", linewidth=1, label="watch")
    ax.axhline(thresholds["psi_act"], color="tab:red", linestyle="--", linewidth=1, label="act")
    peak = max([v for w in windows for v in w["psi"].values()] + [thresholds["psi_act"]])
    if peak > 5:
        ax.set_yscale("symlog", linthresh=0.1)
    fig.autofmt_xdate()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)
