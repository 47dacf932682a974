"""The API plus one test-only page, /__layout, for the browser tests of the status page.

/__layout?width=N shows the status page in an iframe N CSS pixels wide and, once it has loaded,
writes the page's document scrollWidth and clientWidth into <output id="probe">: headless
Chromium's --dump-dom then tells whether the page scrolls sideways at that width. (An iframe,
because a headless window is never narrower than 500 pixels outside of screenshots.)
The app itself is create_app's, untouched.
"""
from flask import request

from app import create_app

LAYOUT = """<!doctype html>
<html><head><style>html, body {{ margin: 0; padding: 0; }} iframe {{ display: block; border: 0; }}</style>
</head><body><output id="probe">not loaded</output>
<iframe src="/" style="width: {width}px; height: 3000px" onload="var d = this.contentDocument.documentElement;
document.getElementById('probe').textContent = 'scrollWidth=' + d.scrollWidth + ' clientWidth=' + d.clientWidth;"></iframe>
</body></html>
"""


def create(config):
    app = create_app(config)
    app.add_url_rule("/__layout", "layout_probe", lambda: LAYOUT.format(width=int(request.args["width"])))
    return app
