"""Screenshots of the running status page, and the browser tests' Chromium: headless, offline.

    python screenshots.py [--config PATH] [--url URL] --out DIR
                      status-wide.png and status-narrow.png of the page at 1280 and 390 pixels
                      wide (default URL: the config's api_url); `make demo` runs it

    run_chromium(url, *args, ...)   headless Chromium on a page (--dump-dom, --screenshot=...),
                                    a fresh profile each time; raises BrowserError with its words
    page_height(url, width)         the page's full height at `width` CSS pixels (its scrollHeight)
    screenshots(url, out_dir)       the whole page at each of SCREEN_WIDTHS, as PNG files

Chromium runs with nothing of its own that talks to the network (CHROMIUM_FLAGS): every host name
but 127.0.0.1 fails to resolve.
"""
import argparse
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from settings import ConfigError, load_config

# Chromium, headless, with nothing of its own that talks to the network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio", "--disable-extensions", "--disable-default-apps",
                  "--disable-domain-reliability", "--no-pings", "--disable-client-side-phishing-detection",
                  "--no-default-browser-check", "--disable-breakpad",
                  "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate,"
                  "AutofillServerCommunication,DialMediaRouteProvider",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
SCREEN_WIDTHS = {"wide": 1280, "narrow": 390}
# The page measured: shown inline (srcdoc, so the script may read it) in a frame `width` pixels wide
# and one pixel high, without scrollbars; the frame's document's scrollHeight is then the page's
# full height, which the script writes into the DOM for --dump-dom to print. (The page itself runs
# no script: its Content-Security-Policy forbids them.)
MEASURE = """<!doctype html>
<html><head><style>html, body {{ margin: 0; padding: 0; }} iframe {{ display: block; border: 0; }}</style></head>
<body><output id="height">not measured</output>
<iframe scrolling="no" srcdoc="{page}" style="width: {width}px; height: 1px" onload="document.getElementById('height')
.textContent = 'scrollHeight=' + this.contentDocument.documentElement.scrollHeight;"></iframe></body></html>
"""
MEASURED = re.compile(r'<output id="height">scrollHeight=(\d+)</output>')


class BrowserError(Exception):
    """Chromium is missing, cannot start, or failed on the page."""


def chromium():
    """The Chromium executable, or raise BrowserError saying how to install it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("chromium is not installed (make setup installs it: apt-get install -y chromium)")


def run_chromium(url, *args, width=1280, height=1600, timeout=60, netlog=None):
    """Run headless Chromium on `url` with `args` (--dump-dom, --screenshot=...) and a fresh profile.

    Returns its stdout. Raises BrowserError with Chromium's own words when it fails.
    """
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="dras-chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               *([f"--log-net-log={netlog}"] if netlog else []), *args, url]
        try:
            # Its own process group: on a timeout, the browser's helper processes go with it.
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=profile,
                                    start_new_session=True)
        except OSError as exc:
            raise BrowserError(f"chromium cannot start: {exc}") from None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BrowserError(f"chromium did not finish within {timeout}s on {url}") from None
    if proc.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise BrowserError(f"chromium exited with {proc.returncode}: {tail}")
    return stdout


def _fetch_page(url, timeout=10):
    """The page's HTML; raise BrowserError unless `url` answers 200 (Chromium would screenshot its error page)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise BrowserError(f"{url} answered {exc.code}: {exc.read(300).decode('utf-8', 'replace').strip()}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BrowserError(f"{url} cannot be reached: {getattr(exc, 'reason', exc)}") from None


def page_height(page, width):
    """The full height in CSS pixels of the HTML `page` laid out `width` pixels wide (headless Chromium)."""
    with tempfile.TemporaryDirectory(prefix="dras-measure-") as folder:
        probe = Path(folder) / "measure.html"
        probe.write_text(MEASURE.format(page=html.escape(page, quote=True), width=int(width)), encoding="utf-8")
        dom = run_chromium(probe.as_uri(), "--dump-dom", width=max(int(width), 500), height=600)
    found = MEASURED.search(dom)
    if not found:
        raise BrowserError("chromium did not measure the page's height")
    return int(found.group(1))


def screenshots(url, out_dir, widths=SCREEN_WIDTHS):
    """Save the whole page at `url` as status-<name>.png in out_dir for each width (its height
    measured first, page_height); return the paths."""
    chromium()
    page = _fetch_page(url)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, width in widths.items():
        path = out_dir / f"status-{name}.png"
        run_chromium(url, f"--screenshot={path}", width=width, height=page_height(page, width))
        if not path.exists():
            raise BrowserError(f"chromium wrote no screenshot of {url}")
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description="Save screenshots of the running status page (headless Chromium).")
    parser.add_argument("--config", help="path to config.json (default: the one beside this script)")
    parser.add_argument("--url", help="the page's address (default: the config's api_url)")
    parser.add_argument("--out", required=True, help="folder for status-wide.png and status-narrow.png")
    args = parser.parse_args(argv)
    url = args.url
    if url is None:
        try:
            url = load_config(args.config).api_url.rstrip("/") + "/"
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        for path in screenshots(url, args.out):
            print(f"screenshot: {path}")
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
