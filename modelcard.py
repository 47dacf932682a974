"""The model card: a deployed version's facts (its manifest) as sections of data, and their markdown.

`card(facts)` builds the card as data: a list of `Section`s, each a heading and its blocks
(`Para`, `Bullets`, `Table`). `markdown(sections)` renders it to the text deployment.py writes
to modelcard.md (`model_card(facts)`: the same manifest always gives the same bytes, so the card
can be regenerated exactly); the report renders the same sections to PDF (reportpdf.py). Text
in blocks may hold markdown's inline marks (`code`, **bold**), which a plain rendering drops.
"""
from dataclasses import dataclass, field
from datetime import datetime, timezone

from audit import CV_METRICS, MODEL_TYPE, _num, cross_validation_for_deployment, f1_swing, slices_for_deployment
from settings import FEATURES

# Below this many test rows the card warns that one prediction moves the test F1 visibly.
SMALL_TEST_ROWS = 100
NO_DRIFT_CHECK = "first deployment / deployed by hand, no drift check"


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list


@dataclass
class Table:
    header: list
    align: list  # per column: "---" left, "---:" right (the markdown separator cells)
    rows: list


@dataclass
class Section:
    title: str
    level: int = 2
    blocks: list = field(default_factory=list)


def plain(text) -> str:
    """Text without markdown's inline marks (backticks, bold)."""
    return text.replace("`", "").replace("**", "")


# ---------------------------------------------------------------- the facts as sections

def _f(x, digits=4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def _when(at) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


def _cv_line(cv) -> str:
    if not cv:
        return "not recorded"
    if cv.get("folds") is None:
        return f"skipped: {cv.get('note')}"
    parts = ", ".join(f"{m} {_f(cv[m]['mean'])} ± {_f(cv[m]['std'])}" for m in CV_METRICS)
    return f"{parts} (mean ± std over {cv['folds']} stratified folds, seed {cv['seed']}, {cv['rows']} rows)"


def _drift_blocks(cycle) -> list:
    """The drift decision the deploying cycle passed (the manifest's `cycle`), as blocks."""
    if cycle is None or cycle == {}:
        return [Para(NO_DRIFT_CHECK.capitalize() + ".")]
    if not isinstance(cycle, dict):  # only the cycle's id was passed
        return [Para(f"Deployed by monitoring cycle {cycle}, which passed no drift decision to the deployment.")]
    lines = []
    score = cycle.get("score_drift")
    if isinstance(score, dict):
        verdict = {True: "drift", False: "no drift", None: "not enough evidence"}.get(score.get("drift"), "unknown")
        used = score.get("used")
        test = score.get("test")
        lines.append(f"Score drift: **{verdict}** (test `{test}`" + (f", used `{used}`" if used != test else "") + ")")
        if score.get("reason"):
            lines.append(f"Reason: {score['reason']}")
        for key, words in (("new_f1", "F1 on the new rows"), ("deployed_f1", "F1 of the model it replaced"),
                           ("threshold", "threshold"), ("p_value", "p-value"), ("new_rows", "new rows")):
            if score.get(key) is not None:
                value = score[key]
                lines.append(f"{words}: {value if isinstance(value, int) else _f(value)}")
        if score.get("fallback"):
            lines.append(f"Fallback: {score['fallback']}")
    feature = cycle.get("feature_drift")
    if isinstance(feature, dict):
        drifted = feature.get("drifted") or []
        lines.append("Feature drift: " + (", ".join(f"`{c}`" for c in drifted) if drifted else "none"))
    for key in sorted(cycle):
        value = cycle[key]
        if key not in ("score_drift", "feature_drift") and (value is None or isinstance(value, (str, int, float, bool))):
            lines.append(f"{key}: {value}")
    return [Bullets(lines)] if lines else [Para("A monitoring cycle deployed this version; it recorded no drift decision.")]


def _caveats(facts) -> list:
    training = facts.get("training") or {}
    audit = facts.get("audit") or {}
    metrics = facts.get("metrics") or {}
    evaluation = training.get("evaluation") or {}
    out = []
    rows = metrics.get("rows")
    counts = (evaluation.get("metrics") or {}).get("confusion")
    if rows is not None and rows < SMALL_TEST_ROWS:
        swing = f": one prediction more or less moves the test F1 by up to {_f(f1_swing(counts), 3)}" if counts else ""
        out.append(f"Small test set: {rows} rows{swing}. Read the test F1 together with the cross-validated score.")
    cv = audit.get("cross_validation")
    if cv and cv.get("note"):
        out.append(f"Cross-validation: {cv['note']}.")
    slices = audit.get("slices") or {}
    for s in slices.get("slices") or []:
        if s["flag"] == "too small":
            out.append(f"Slice `{s['label']}` is too small to judge: {s['rows']} test rows "
                       f"(fewer than {slices['min_rows']}).")
        elif s["flag"] == "no exits":
            out.append(f"Slice `{s['label']}` cannot be judged: none of its {s['rows']} test rows exited.")
        elif s["flag"] == "below overall":
            out.append(f"Slice `{s['label']}`: F1 {_f(s['f1'])} is more than {slices['margin']:g} below the overall "
                       f"F1 {_f(slices['overall']['f1'])}.")
    for where, found in (audit.get("out_of_range") or {}).items():
        for r in found:
            beyond = []
            if r["min"] < r["training_min"]:
                beyond.append(f"down to {_num(r['min'])}")
            if r["max"] > r["training_max"]:
                beyond.append(f"up to {_num(r['max'])}")
            out.append(f"`{r['feature']}` in the {where} goes {' and '.join(beyond)}, outside its training range "
                       f"{_num(r['training_min'])} to {_num(r['training_max'])}: predictions there are extrapolations.")
    if "ingested data" not in (audit.get("out_of_range") or {}):
        out.append("The ingested data was not checked against the training ranges (no history database given).")
    out.append("`corporation` is an identifier and is never used as a feature.")
    return out


def card(facts) -> list:
    """The model card of a deployed version, from its manifest `facts` alone, as a list of Sections."""
    version = facts.get("version")
    vname = f"v{version:04d}" if isinstance(version, int) else "unknown"
    training = facts.get("training") or {}
    audit = facts.get("audit") or {}
    metrics = facts.get("metrics") or {}
    params = training.get("params")
    code = training.get("code_version") or {}
    model_sha = ((facts.get("files") or {}).get("trainedmodel.pkl") or {}).get("sha256", "unknown")

    details = [f"Type: {training.get('model_type', MODEL_TYPE)}",
               "Hyperparameters: " + (", ".join(f"{k}={params[k]!r}" for k in sorted(params)) if params else "unknown"),
               f"Features: {', '.join(f'`{c}`' for c in training.get('features', FEATURES))}; target `exited`",
               f"Version: {vname}, deployed {facts.get('deployed_at', 'unknown')}",
               f"Trained: {training.get('trained_at', 'unknown')}",
               f"Model file SHA-256: `{model_sha}`"]
    if code.get("commit"):
        details.append(f"Code version: git commit `{code['commit']}`"
                       + (" with uncommitted changes" if code.get("dirty") else ""))
    else:
        details.append("Code version: unknown")
    libs = training.get("libraries")
    if libs:
        details.append("Libraries: " + ", ".join(f"{k} {libs[k]}" for k in sorted(libs)))

    files = training.get("training_files")
    data = [Bullets([f"{training.get('training_rows', 'unknown')} complete rows of `finaldata.csv` "
                     f"(SHA-256 `{training.get('data_sha256', 'unknown')}`), merged and deduplicated from:"])]
    if files:
        data.append(Table(["file", "SHA-256", "rows", "ingested (UTC)"], ["---", "---", "---:", "---"],
                          [[f["name"], f"`{f['sha256']}`", str(f["rows"]), _when(f["at"])] for f in files]))
    else:
        data.append(Para("The ingested files were not recorded."))
    ranges = training.get("feature_ranges")
    if ranges:
        data.append(Table(["feature", "training min", "training max"], ["---", "---:", "---:"],
                          [[f"`{c}`", _num(r["min"]), _num(r["max"])] for c, r in ranges.items()
                           if r["min"] is not None]))

    if metrics:
        test = [f"F1 {_f(metrics.get('f1'))}, precision {_f(metrics.get('precision'))}, "
                f"recall {_f(metrics.get('recall'))}, ROC AUC {_f(metrics.get('roc_auc'))}, "
                f"on {metrics.get('rows', 'unknown')} rows"]
    else:
        test = ["not recorded"]
    slices = audit.get("slices")
    if slices and slices.get("slices"):
        slice_blocks = [
            Para(f"Flagged: F1 more than {slices['margin']:g} below the overall F1 "
                 f"({_f((slices.get('overall') or {}).get('f1'))}); a slice with fewer than {slices['min_rows']} rows, "
                 "or with no exit, is too small to judge."),
            Table(["slice", "rows", "exits", "F1", "precision", "recall", "flag"],
                  ["---", "---:", "---:", "---:", "---:", "---:", "---"],
                  [[s["label"], str(s["rows"]), str(s["exits"]), _f(s["f1"]), _f(s["precision"]), _f(s["recall"]),
                    s["flag"] or "ok"] for s in slices["slices"]])]
    else:
        slice_blocks = [Bullets(["not recorded"])]

    return [
        Section(f"Model card: client attrition model {vname}", 1, [Para(
            f"Generated from the recorded facts of version {vname} (its `manifest.json`) at its deployment; "
            "never edited by hand.")]),
        Section("Model details", 2, [Bullets(details)]),
        Section("Intended use", 2, [Bullets([
            "Ranking client corporations by their risk of leaving next, so that account managers can "
            "decide whom to contact first.",
            "For clients like those it was trained on: the feature ranges under Training data."])]),
        Section("Not intended for", 2, [Bullets([
            "Decisions about individual people (employees or contacts of a client).",
            "Automatic action without a person's review: it is a ranking aid, not a verdict.",
            "Clients whose activity or size lies outside the training ranges, or data from another "
            "business: predictions there are extrapolations.",
            "Anything using the `corporation` code: it identifies a client and carries no signal."])]),
        Section("Training data", 2, data),
        Section("Evaluation", 2),
        Section("Test set", 3, [Bullets(test)]),
        Section("Cross-validated (training data)", 3, [Bullets([_cv_line(audit.get("cross_validation"))])]),
        Section("Slices (test data)", 3, slice_blocks),
        Section("Drift decision", 2, _drift_blocks(facts.get("cycle"))),
        Section("Caveats", 2, [Bullets(_caveats(facts))]),
    ]


# ---------------------------------------------------------------- markdown

def _block_lines(block) -> list:
    if isinstance(block, Para):
        return [block.text]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    return (["| " + " | ".join(block.header) + " |", "|" + "|".join(block.align) + "|"]
            + ["| " + " | ".join(row) + " |" for row in block.rows])


def markdown(sections) -> str:
    """The sections as markdown: each heading and block apart by a blank line."""
    parts = []
    for sec in sections:
        parts.append(["#" * sec.level + " " + sec.title])
        parts += [_block_lines(b) for b in sec.blocks]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def model_card(facts) -> str:
    """The model card (markdown) of a deployed version, from its manifest `facts` alone.

    The same manifest always gives the same bytes, so the card can be regenerated exactly.
    """
    return markdown(card(facts))


def report_audit(manifest):
    """What the report shows of a deployed version: its model card (sections), cross-validated
    score and slices, or None when the version was deployed without an audit."""
    if not manifest or "audit" not in manifest:
        return None
    return {"card": card(manifest), "cross_validation": cross_validation_for_deployment(manifest),
            "slices": slices_for_deployment(manifest)}
