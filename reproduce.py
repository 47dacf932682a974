"""Rebuilding a deployed version from the archive alone: its training set, its model, and what differs.

Nothing live is touched: the training set is rebuilt in a scratch folder, the model is trained in
memory, nothing is recorded in the history.
"""
import hashlib
import tempfile
from pathlib import Path

import archive
import delivery
import ingestion
import progress
import scoring
import training

REPRODUCED, DIFFERS, CANNOT = 0, 1, 2


def training_set(folder, lineage):
    """The training set of `lineage` (the deliveries in their ingestion order) rebuilt from the archive
    in `folder`, deduplicated as ingestion does (the first of equal rows kept). Raises ArchiveError."""
    import pandas as pd

    frames = []
    for i, d in enumerate(lineage, 1):
        progress.show(f"reproducing: reading delivery {i} of {len(lineage)} from the archive ({d['name']})")
        frames.append(delivery.parse_delivery(archive.load(folder, d["sha256"])))
    return pd.concat(frames, ignore_index=True).drop_duplicates(ignore_index=True)


def _coefficients(model) -> dict:
    """The fitted numbers of the Pipeline, by name, as plain lists."""
    scale, classify = model.named_steps["scale"], model.named_steps["classify"]
    return {"scale mean": scale.mean_.tolist(), "scale std": scale.scale_.tolist(),
            "coefficients": classify.coef_.ravel().tolist(), "intercept": classify.intercept_.tolist()}


def differences(manifest, deployed_model, rebuilt_model, data_sha256, now_libraries, test_metrics) -> list:
    """What differs between the deployed version and its rebuild, one line each."""
    recorded = manifest.get("training", {})
    out = []
    if data_sha256 != recorded.get("data_sha256"):
        out.append(f"training set: rebuilt sha256 {data_sha256[:12]}, "
                   f"recorded {(recorded.get('data_sha256') or 'none')[:12]}")
    then = recorded.get("libraries", {})
    for name in sorted(set(then) | set(now_libraries)):
        if then.get(name) != now_libraries.get(name):
            out.append(f"library {name}: {then.get(name) or 'not recorded'} in the manifest, "
                       f"{now_libraries.get(name) or 'not installed'} now")
    if deployed_model is not None:
        old, new = _coefficients(deployed_model), _coefficients(rebuilt_model)
        for key in old:
            if old[key] != new[key]:
                gap = max(abs(a - b) for a, b in zip(old[key], new[key])) if len(old[key]) == len(new[key]) else None
                out.append(f"{key}: deployed {old[key]}, rebuilt {new[key]}"
                           + (f" (largest difference {gap:.3g})" if gap is not None else ""))
    f1_then = manifest.get("metrics", {}).get("f1")
    if test_metrics is not None and f1_then != test_metrics["f1"]:
        out.append(f"test F1: deployed {'none recorded' if f1_then is None else repr(f1_then)}, "
                   f"rebuilt {test_metrics['f1']!r}")
    return out


def reproduce(cfg, manifest, load_deployed) -> tuple:
    """Rebuild `manifest`'s version from the archive and compare; return (exit code, lines).

    `load_deployed()` returns the deployed model (only called when the bytes differ).
    """
    try:
        return _reproduce(cfg, manifest, load_deployed)
    finally:
        progress.clear()


def _reproduce(cfg, manifest, load_deployed) -> tuple:
    number = manifest["version"]
    recorded = manifest.get("training", {})
    if "lineage" not in recorded:
        return CANNOT, [f"version {number} cannot be reproduced: it was deployed before the delivery "
                        "archive, and its manifest records no lineage"]
    with tempfile.TemporaryDirectory(prefix="reproduce-") as scratch:
        try:
            df = training_set(archive.folder_of(cfg), recorded["lineage"])
        except archive.ArchiveError as exc:
            return CANNOT, [f"version {number} cannot be reproduced: {exc}"]
        data_path = Path(scratch) / "finaldata.csv"
        df.to_csv(data_path, index=False)  # as ingestion writes it, then read back as training reads it
        data_sha256 = hashlib.sha256(data_path.read_bytes()).hexdigest()
        model = training.train(ingestion.read_finaldata(data_path), recorded["params"])
    digest = hashlib.sha256(training.model_bytes(model)).hexdigest()
    expected = manifest["files"]["trainedmodel.pkl"]["sha256"]
    if digest == expected:
        return REPRODUCED, [f"version {number} reproduced: sha256 {digest}"]
    try:
        progress.show("reproducing: scoring the rebuilt model on the test data")
        X, y = scoring.read_test_data(cfg.test_data_file)
        test_metrics = scoring.score_model(model, X, y)
    except scoring.ScoringError:
        test_metrics = None
    lines = [f"version {number} not reproduced: rebuilt sha256 {digest[:12]}, deployed {expected[:12]}"]
    lines += ["  " + line for line in differences(manifest, load_deployed(), model, data_sha256,
                                                  training.library_versions(), test_metrics)]
    return DIFFERS, lines
