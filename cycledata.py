"""The rows a cycle judges: the pending deliveries' rows, the reference rows ingested before them,
the held-out span since the deployed model was trained, and the deployed score history."""
import logging
from pathlib import Path

import delivery
import deployment
import finaldata
from columnstats import Profile
from settings import FEATURES, TARGET

logger = logging.getLogger(__name__)


def pending_frames(pending, frames):
    """The rows of the pending files: from this cycle's ingestion when it parsed them, else re-read."""
    import hashlib

    import pandas as pd  # lazy: the idle cycle imports no pandas

    out = []
    for f in pending:
        df = frames.get(f["sha256"])
        if df is None:
            path = Path(f["folder"]) / f["name"]
            try:
                data = path.read_bytes()
            except OSError as exc:
                logger.warning("pending file %s cannot be read again (%s): left out of the drift check", path, exc)
                continue
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                logger.warning("pending file %s has changed since it was ingested: left out of the drift check", path)
                continue
            df = delivery.parse_delivery(data)
        out.append(df)
    return pd.concat(out, ignore_index=True) if out else None


def _before(conn, at):
    """(rows, bytes) of finaldata.csv as the last ingestion before time `at` left it ((0, 0): none)."""
    row = conn.execute("SELECT rows, bytes FROM summaries WHERE at < ? ORDER BY id DESC LIMIT 1", (at,)).fetchone()
    return (row["rows"], row["bytes"]) if row else (0, 0)


def _now(conn):
    row = conn.execute("SELECT rows, bytes FROM summaries ORDER BY id DESC LIMIT 1").fetchone()
    return (row["rows"], row["bytes"]) if row else (0, 0)


def rows_between(cfg, start, end):
    """finaldata.csv's rows [start, end), each a (rows, bytes) position: read from its bytes when
    both are recorded, else (positions from before incremental ingestion) from its first rows."""
    if start[1] is not None and end[1] is not None:
        return finaldata.read_range(cfg.finaldata, start[1] or len(finaldata.HEADER), end[1])
    return finaldata.read(cfg.finaldata, nrows=end[0]).iloc[start[0]:].reset_index(drop=True)


def reference_rows(cfg, conn, pending):
    """The rows ingested before the pending files, for the feature-drift test: per feature, the
    counts of today's column profile less those of the rows the pending files added (read from the
    end of finaldata.csv), so nothing before them is read. Ingestion appends new rows after the old
    ones and keeps first occurrences, so the rows of before are exactly the first ones of today's.
    None when nothing was ingested before them."""
    before, now = _before(conn, pending[0]["at"]), _now(conn)
    if before[0] == 0 or not cfg.finaldata.exists():
        return None
    profile = finaldata.profile_of(cfg, now[1])
    if profile is None or before[1] is None:  # recorded before incremental ingestion: read them
        return finaldata.read(cfg.finaldata, nrows=before[0])
    return profile.minus(Profile.of_frame(rows_between(cfg, before, now))).reference()


def rows_since(cfg, conn, first_file_id):
    """The rows of finaldata.csv from the delivery `first_file_id` on (a frame of finaldata's
    columns), read from the end of the file."""
    row = conn.execute("SELECT at FROM ingested_files WHERE id = ?", (first_file_id,)).fetchone()
    now = _now(conn)
    return rows_between(cfg, _before(conn, row["at"]) if row else now, now)


def held_out_range(cfg, conn, pending):
    """finaldata.csv's rows [start, end), each a (rows, bytes) position, from deliveries decided on
    since the deployed model was trained (they caused no redeploy): recent labelled rows it has never
    seen, the held-out reference of the `significance` test (README, "Which reference"). None when
    there are none."""
    manifest = deployment.current_manifest(cfg.prod_deployment_path, missing_ok=True)
    training_files = ((manifest or {}).get("training") or {}).get("training_files")
    files = conn.execute("SELECT id, name, sha256, at FROM ingested_files WHERE id < ? ORDER BY id",
                         (pending[0]["id"],)).fetchall()
    if training_files is not None:  # by content: a changed file under an old name is not the trained one
        trained = {f["sha256"] for f in training_files}
        trained_through = max((f["id"] for f in files if f["sha256"] in trained), default=0)
    else:  # a model deployed before its training files were recorded: by the deployed list of names
        try:
            deployed_names = set((cfg.prod_deployment_path / "ingestedfiles.txt").read_text().splitlines())
        except FileNotFoundError:
            return None
        trained_through = max((f["id"] for f in files if f["name"] in deployed_names), default=0)
    held = [f for f in files if f["id"] > trained_through]
    if not held:
        return None

    start, end = _before(conn, held[0]["at"]), _before(conn, pending[0]["at"])
    return (start, end) if end[0] > start[0] else None


def deployed_history(conn) -> list:
    """The F1 of each deployment made, oldest first: the score history of the statistical drift tests."""
    return [r[0] for r in conn.execute("SELECT f1 FROM deployments WHERE action = 'deploy' AND f1 IS NOT NULL ORDER BY id")]


def held_out(cfg, conn, pending, reference):
    """The held-out reference rows (complete ones) of the `significance` test, or None."""
    span = held_out_range(cfg, conn, pending) if reference is not None else None
    if span is None:
        return None
    held_out = rows_between(cfg, *span).dropna(subset=list(FEATURES) + [TARGET])
    return held_out if len(held_out) else None
