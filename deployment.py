"""Deployment: publish the trained model, its score and its ingested-file list as a numbered version.

Layout of prod_deployment_path:

    versions/v0003/            one immutable folder per version:
        trainedmodel.pkl  trainedmodel.json  latestscore.txt  ingestedfiles.txt  modelcard.md  manifest.json
    current -> versions/v0003  a symlink, swapped atomically (rename over it)
    trainedmodel.pkl, latestscore.txt, ingestedfiles.txt, modelcard.md, manifest.json -> current/...

modelcard.md is rendered by modelcard.model_card from the version's manifest alone, so a rollback
brings back that version's card with its model, and the card can be regenerated exactly.

A version folder is complete before it gets its name, and `current` moves in one rename, so a
reader that resolves `current` once sees one whole version, old or new, never a mix.
"""
import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import atomicfiles
import history
import locks
import modelfile
import words
from settings import ConfigError, load_config, setup_logging

logger = logging.getLogger(__name__)

DEPLOYED_FILES = ("trainedmodel.pkl", "latestscore.txt", "ingestedfiles.txt")
ROOT_LINKS = DEPLOYED_FILES + ("trainedmodel.json", "modelcard.md", "manifest.json")


class DeploymentError(Exception):
    """Nothing is deployed, a file is missing, or a deployed file does not match its manifest."""


def version_name(number: int) -> str:
    return f"v{number:04d}"


def versions(prod) -> list:
    """Numbers of the complete versions present, ascending."""
    vdir = Path(prod) / "versions"
    out = []
    if vdir.is_dir():
        for entry in vdir.iterdir():
            if entry.name.startswith("v") and entry.name[1:].isdigit() and (entry / "manifest.json").exists():
                out.append(int(entry.name[1:]))
    return sorted(out)


def current_dir(prod):
    """The folder of the serving version (resolved once), or None when nothing is deployed."""
    try:
        target = os.readlink(Path(prod) / "current")
    except (FileNotFoundError, OSError):
        return None
    return (Path(prod) / target).resolve()


def read_manifest(version_dir) -> dict:
    try:
        return json.loads((Path(version_dir) / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploymentError(f"no manifest in {version_dir}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeploymentError(f"unreadable manifest in {version_dir}: {exc}") from None


def current_manifest(prod, missing_ok=False):
    """The serving version's manifest, or None when nothing is deployed (with `missing_ok`, also when
    the serving folder has no manifest.json: the cycle then treats the folder as not deployed)."""
    vdir = current_dir(prod)
    if vdir is None or (missing_ok and not (vdir / "manifest.json").exists()):
        return None
    return read_manifest(vdir)


def load_version(version_dir, loads=modelfile.load_model):
    """Unpickle a version's model after checking its SHA-256 against the manifest; return (model, manifest).

    Every reader of a deployed model comes through here. `loads` is one of modelfile's allow-list
    loaders (serving passes load_fitted, which needs no scikit-learn): a pickle is never run.
    """
    manifest = read_manifest(version_dir)
    path = Path(version_dir) / "trainedmodel.pkl"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DeploymentError(f"{path} is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    expected = manifest["files"]["trainedmodel.pkl"]["sha256"]
    if digest != expected:
        raise DeploymentError(f"{path} does not match its manifest (sha256 {digest[:12]}, expected {expected[:12]})")
    try:
        model = loads(data)
    except modelfile.Refused as exc:
        raise DeploymentError(f"{path} is refused: {exc}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise DeploymentError(f"{path} cannot be unpickled: {words.error_text(exc)}") from None
    return model, manifest


def check_model(src, data: bytes):
    """Refuse (DeploymentError) a model file the allow-list loader cannot read: what is deployed is safe to serve."""
    try:
        model = modelfile.load_model(data)
    except modelfile.Refused as exc:
        raise DeploymentError(f"cannot deploy {src}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as exc:
        raise DeploymentError(f"cannot deploy {src}: it is not a readable model ({words.error_text(exc)})") from None
    if not (callable(getattr(model, "predict", None)) and callable(getattr(model, "predict_proba", None))):
        raise DeploymentError(f"cannot deploy {src}: it holds a {type(model).__name__}, not a classifier")


def load_deployed(prod):
    """The serving model and its manifest. Raises DeploymentError."""
    vdir = current_dir(prod)
    if vdir is None:
        raise DeploymentError(f"no model is deployed in {prod}")
    return load_version(vdir)


def _swap_current(prod: Path, number: int):
    tmp = prod / f".current.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("versions") / version_name(number), tmp)
    os.replace(tmp, prod / "current")
    for name in ROOT_LINKS:
        link = prod / name
        if not (link.is_symlink() and os.readlink(link) == str(Path("current") / name)):
            tmp = prod / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            os.symlink(Path("current") / name, tmp)
            os.replace(tmp, link)
    atomicfiles._fsync_dir(prod)


def _clean_leftovers(vdir: Path):
    # Folders from a deployment that was killed before it got its name.
    for entry in vdir.glob(".building-*"):
        shutil.rmtree(entry, ignore_errors=True)


def prune(prod, keep: int):
    """Delete all but the newest `keep` versions, never the serving one."""
    prod = Path(prod)
    current = current_dir(prod)
    for number in versions(prod)[:-keep]:
        path = prod / "versions" / version_name(number)
        if current is not None and path.resolve() == current:
            continue
        shutil.rmtree(path)
        logger.info("pruned %s", path.name)


@contextmanager
def deploy_lock(prod: Path):
    """An exclusive lock on the production folder: one deployment or rollback at a time.

    Held by every deployer, so an unnamed `.building-*` folder found under it is a dead one's.
    """
    import fcntl

    prod.mkdir(parents=True, exist_ok=True)
    with open(prod / ".deploy.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def deploy(prod, model_path, score_path, ingested_path, metrics=None, keep=5, conn=None, extra=None) -> dict:
    """Publish the three files as a new version and make it the serving one; return its manifest.

    `conn`, when given, is the history database the deployment is recorded in; its latest data
    summary is checked against the training ranges for the model card. `extra` keys go into the
    manifest as they are (the monitoring cycle passes {"cycle": {...}} with its drift decision).
    """
    prod = Path(prod)
    with deploy_lock(prod):
        return _deploy(prod, model_path, score_path, ingested_path, metrics, keep, conn, extra)


def _deploy(prod, model_path, score_path, ingested_path, metrics, keep, conn, extra) -> dict:
    vroot = prod / "versions"
    vroot.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(vroot)
    sources = {"trainedmodel.pkl": Path(model_path), "latestscore.txt": Path(score_path),
               "ingestedfiles.txt": Path(ingested_path)}
    meta_path = Path(model_path).with_suffix(".json")
    if meta_path.exists():
        sources["trainedmodel.json"] = meta_path
    for name, src in sources.items():
        if not src.exists():
            raise DeploymentError(f"cannot deploy: {src} does not exist")
    model_bytes = sources["trainedmodel.pkl"].read_bytes()
    check_model(model_path, model_bytes)  # these very bytes are published
    number = (versions(prod) or [0])[-1] + 1
    building = vroot / f".building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    files = {}
    for name, src in sources.items():
        data = model_bytes if name == "trainedmodel.pkl" else src.read_bytes()
        atomicfiles.write_bytes(building / name, data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    # lazy: the idle cycle reads the serving manifest through this module and imports no numpy
    import audit
    import modelcard

    training = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    manifest = {
        "version": number,
        "deployed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "metrics": metrics or {"f1": float(Path(score_path).read_text().strip())},
        "training": training,
        "audit": audit.deployment_audit(training, history.latest_summary(conn) if conn is not None else None),
        **(extra or {}),
    }
    card = modelcard.model_card(manifest).encode("utf-8")
    atomicfiles.write_bytes(building / "modelcard.md", card)
    files["modelcard.md"] = {"sha256": hashlib.sha256(card).hexdigest(), "bytes": len(card)}
    atomicfiles.write_text(building / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.rename(building, vroot / version_name(number))
    atomicfiles._fsync_dir(vroot)
    _swap_current(prod, number)
    if conn is not None:
        history.record_json(conn, "deployments", at=time.time(), version=number, action="deploy",
                            model_sha256=files["trainedmodel.pkl"]["sha256"], f1=manifest["metrics"].get("f1"))
    prune(prod, keep)
    logger.info("deployed version %d to %s", number, prod)
    return manifest


def served_before(conn, current: int, kept) -> int | None:
    """The kept version that served before `current`, by the deployment history; None when it does not say.

    The history is read as a stack: a deployment or a `--rollback --to` ("restore") puts its version
    in service on top of the one it replaced, a plain rollback takes the top one out of service
    again. So after v2 rolled back to v1 and v3 deployed, what served before v3 is v1, not v2: v2 had
    been rolled away from. Versions pruned since are skipped.
    """
    stack = []
    for row in conn.execute("SELECT version, action FROM deployments ORDER BY id"):
        if row[1] == "rollback":
            if stack:
                stack.pop()
        elif not stack or stack[-1] != row[0]:
            stack.append(row[0])
    if not stack or stack[-1] != current:
        return None  # the history does not describe what serves (deployed without one)
    for number in reversed(stack[:-1]):
        if number != current and number in kept:
            return number
    return None


def rollback(prod, conn=None, to=None) -> dict:
    """Serve version `to`, or (without it) the version that served before the serving one (served_before;
    the previous kept number when the history does not say); return its manifest."""
    prod = Path(prod)
    with deploy_lock(prod):
        return _rollback(prod, conn, to)


def _rollback(prod, conn, to) -> dict:
    current = current_dir(prod)
    if current is None:
        raise DeploymentError(f"nothing is deployed in {prod}: nothing to roll back")
    now = int(current.name[1:])
    kept = versions(prod)
    if to is not None:
        if to not in kept:
            raise DeploymentError(f"version {to} is not kept in {prod} (kept: "
                                  f"{', '.join(str(n) for n in kept) or 'none'})")
        if to == now:
            raise DeploymentError(f"version {to} is already serving")
        target = to
    else:
        target = served_before(conn, now, kept) if conn is not None else None
        if target is None:
            older = [n for n in kept if n < now]
            if not older:
                raise DeploymentError(f"version {now} is the oldest kept: nothing to roll back to")
            target = older[-1]
    _, manifest = load_version(prod / "versions" / version_name(target))  # refuse a broken target
    _swap_current(prod, target)
    if conn is not None:
        history.record_json(conn, "deployments", at=time.time(), version=target,
                            action="rollback" if to is None else "restore",
                            model_sha256=manifest["files"]["trainedmodel.pkl"]["sha256"],
                            f1=manifest["metrics"].get("f1"))
    logger.info("rolled back from version %d to %d", now, target)
    return manifest


def f1_text(manifest) -> str:
    """A version's test F1 as the scripts print it: at full precision, or that none is recorded."""
    f1 = manifest.get("metrics", {}).get("f1")
    return f"F1 {f1!r}" if f1 is not None else "no test F1 recorded"


def version_list(prod) -> list:
    """One line per kept version: its state (serving / kept), time, F1, model hash, lineage."""
    import lineage

    current = current_dir(prod)
    lines = []
    for n in versions(prod):
        m = read_manifest(prod / "versions" / version_name(n))
        state = "serving" if current is not None and current.name == version_name(n) else "kept"
        lines.append(f"{version_name(n)}  {state:<7}  {m['deployed_at']}  {f1_text(m)}  "
                     f"sha256 {m['files']['trainedmodel.pkl']['sha256'][:12]}  from {lineage.text(m)}")
    return lines


def deploy_from_config(cfg, conn=None, extra=None) -> dict:
    """Deploy the config's trained model, score and ingested list, with the recorded test metrics.
    Holds the writer lock throughout (locks.py; raises locks.Busy when another writer keeps it too long)."""
    with locks.writer(cfg.writer_lock, "deployment.py", cfg.writer_wait_seconds):
        return _deploy_from_config(cfg, conn, extra)


def _deploy_from_config(cfg, conn, extra) -> dict:
    try:
        data = cfg.model_file.read_bytes()
    except FileNotFoundError:
        raise DeploymentError(f"no trained model to deploy: {cfg.model_file} does not exist; "
                              "run training.py and scoring.py first") from None
    check_model(cfg.model_file, data)  # the refusal that says why, before "no score recorded"
    digest = hashlib.sha256(data).hexdigest()
    own = conn is None
    conn = conn or history.connect(cfg.history)
    try:
        row = conn.execute("SELECT f1, precision, recall, roc_auc, rows FROM scores WHERE dataset = 'test'"
                           " AND model_sha256 = ? ORDER BY id DESC LIMIT 1", (digest,)).fetchone()
        if row is None:
            # Never publish another model's score as this one's: the drift check compares against it.
            raise DeploymentError(f"no test score is recorded for {cfg.model_file} (sha256 "
                                  f"{digest[:12]}): run scoring.py first")
        metrics = dict(row)
        return deploy(cfg.prod_deployment_path, cfg.model_file, cfg.score_file, cfg.ingested_list,
                      metrics=metrics, keep=cfg.keep_versions, conn=conn, extra=extra)
    finally:
        if own:
            conn.close()


def cycle_words(record) -> str:
    """Which cycle a challenger record names, in words."""
    return f"cycle {record['cycle_id']}" if record.get("cycle_id") is not None else "a cycle"


def promote(cfg, conn) -> dict:
    """Deploy the challenger a cycle kept (output_model_path/challenger.pkl, decisions.keep_challenger)
    with its recorded test score; its manifest carries the cycle's record of it. Returns the manifest."""
    import decisions  # lazy: numpy; only this command needs it

    folder = cfg.model_file.parent
    path, record_path = folder / decisions.CHALLENGER, folder / decisions.CHALLENGER_RECORD
    if not path.exists() or not record_path.exists():
        raise DeploymentError(f"no kept challenger in {folder}: a cycle saves one when it keeps the serving model")
    record = json.loads(record_path.read_text())
    digest = atomicfiles.sha256_file(path)
    if digest != record.get("model_sha256"):
        raise DeploymentError(f"{path} is not the challenger {cycle_words(record)} kept (sha256 differs)")
    row = conn.execute("SELECT f1, precision, recall, roc_auc, rows FROM scores WHERE dataset = 'test'"
                       " AND model_sha256 = ? ORDER BY id DESC LIMIT 1", (digest,)).fetchone()
    if row is None:
        raise DeploymentError(f"no test score is recorded for {path} (sha256 {digest[:12]})")
    extra = {"cycle": {"id": record.get("cycle_id"), "decision": "promoted by hand (deployment.py --promote)",
                       "kept_as": record.get("decision"), "promotion": record.get("promotion")}}
    manifest = deploy(cfg.prod_deployment_path, path, folder / decisions.CHALLENGER_SCORE, cfg.ingested_list,
                      metrics=dict(row), keep=cfg.keep_versions, conn=conn, extra=json.loads(json.dumps(extra, default=str)))
    record_path.unlink()
    return manifest


def main(argv=None):
    import argparse  # lazy: ~8 ms the idle cycle, which reads the manifest through this module, never pays

    parser = argparse.ArgumentParser(description="Deploy the trained model to production, list or roll back versions.")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--rollback", action="store_true",
                       help="serve the version that served before the current one (or, with --to, version N)")
    group.add_argument("--list", action="store_true", help="list the kept versions, their state and lineage")
    group.add_argument("--reproduce", type=int, metavar="N",
                       help="rebuild version N from the delivery archive and compare (touches nothing live)")
    parser.add_argument("--to", type=int, metavar="N", help="with --rollback: the version to serve")
    group.add_argument("--promote", action="store_true",
                       help="deploy the challenger the last cycle kept (output_model_path/challenger.pkl)")
    args = parser.parse_args(argv)
    if args.to is not None and not args.rollback:
        parser.error("--to goes with --rollback")
    setup_logging()
    try:
        cfg = load_config(args.config)
        prod = cfg.prod_deployment_path
        if args.list:
            print("\n".join(version_list(prod)) if versions(prod) else f"no versions in {prod}")
            return 0
        if args.reproduce is not None:
            import reproduce  # lazy: pandas and scikit-learn, for this command only

            vdir = prod / "versions" / version_name(args.reproduce)
            if args.reproduce not in versions(prod):
                print(f"version {args.reproduce} is not kept in {prod}")
                return 2
            code, lines = reproduce.reproduce(cfg, read_manifest(vdir), lambda: load_version(vdir)[0])
            print("\n".join(lines))
            return code
        what = "deployment.py" + (" --rollback" if args.rollback else " --promote" if args.promote else "")
        with (locks.writer(cfg.writer_lock, what, cfg.writer_wait_seconds),
              closing(history.connect(cfg.history)) as conn):
            if args.promote:
                m = promote(cfg, conn)
                print(f"promoted the kept challenger: now serving {version_name(m['version'])} "
                      f"({f1_text(m)})")
            elif args.rollback:
                m = rollback(prod, conn, to=args.to)
                print(f"rolled back: now serving {version_name(m['version'])} ({f1_text(m)})")
            else:
                m = deploy_from_config(cfg, conn)
                print(f"deployed {version_name(m['version'])} to {prod} ({f1_text(m)})")
    except (ConfigError, DeploymentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except locks.Busy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return locks.EXIT_BUSY
    return 0


if __name__ == "__main__":
    sys.exit(main())
