#!/usr/bin/env bash
# make cron-install / make cron-uninstall: the monitoring cycle in (or out of) this user's crontab.
# Usage: scripts/cron.sh install|uninstall REPO PYTHON
set -euo pipefail
action=$1 repo=$2 python=$3
mark="$repo/fullprocess.py"
user=$(id -un)
line=$(sed -e "s|@PYTHON@|$python|g" -e "s|@REPO@|$repo|g" "$repo/cronjob.txt")

table() { crontab -l 2>/dev/null || true; }
others() { table | grep -vF "$mark" || true; }
daemon_running() { pgrep -x cron >/dev/null 2>&1 || pgrep -x crond >/dev/null 2>&1; }

case $action in
  install)
    if ! command -v crontab >/dev/null; then
      echo "crontab is missing: installing Debian's cron (without its recommended mail server)"
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends cron; } >/dev/null
    fi
    test -x "$python" || make -C "$repo" --no-print-directory setup
    { others; echo "$line"; } | crontab -
    if ! daemon_running; then
      echo "the line is in the crontab of $user, but the cron daemon is not running, so nothing will run it." >&2
      echo "start it (as root) with: service cron start" >&2
      exit 1
    fi
    echo "installed in the crontab of $user (the cron daemon is running):"
    echo "$line"
    ;;
  uninstall)
    if ! command -v crontab >/dev/null || ! table | grep -qF "$mark"; then
      echo "nothing to remove: the crontab of $user has no monitoring cycle of $repo"
      exit 0
    fi
    removed=$(table | grep -F "$mark")
    others | crontab -
    echo "removed from the crontab of $user:"
    echo "$removed"
    ;;
  *)
    echo "usage: scripts/cron.sh install|uninstall REPO PYTHON" >&2
    exit 2
    ;;
esac
