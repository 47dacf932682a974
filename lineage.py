"""Lineage: the deliveries behind a version (by name and archive hash), read from its manifest."""

SHORT = 12


def deliveries(manifest) -> list:
    """[{name, sha256, rows}] of the deliveries a version was trained on, in ingestion order
    (versions deployed before the archive: their recorded training files)."""
    training = (manifest or {}).get("training") or {}
    files = training.get("lineage", training.get("training_files")) or []
    return [{"name": f["name"], "sha256": f["sha256"], "rows": f.get("rows")} for f in files]


def short(sha256) -> str:
    return str(sha256)[:SHORT]


def text(manifest) -> str:
    """'a.csv 3f2a9c01d2e4, b.csv 77a0...' (or 'none recorded')."""
    items = deliveries(manifest)
    return ", ".join(f"{d['name']} {short(d['sha256'])}" for d in items) if items else "none recorded"
