"""The API plus one test-only page, /__layout, for the browser tests of the status page.

/__layout?width=N shows the status page (GET /, answered by the same app) in an iframe N CSS
pixels wide (one pixel high, no scrollbars) and, once it has loaded, writes the page's document
scrollWidth, clientWidth and scrollHeight into <output id="probe">: headless Chromium's --dump-dom
then tells whether the page scrolls sideways at that width, and how tall the whole page is. An iframe, because a headless window is never narrower than 500 pixels outside of
screenshots; its content given inline (srcdoc), because a second connection from Chromium waits
behind the idle one it opens ahead to the single-threaded gunicorn worker. The app is create_app's.
"""
from flask import request
from markupsafe import escape

from app import create_app

LAYOUT = """<!doctype html>
<html><head><style>html, body {{ margin: 0; padding: 0; }} iframe {{ display: block; border: 0; }}</style>
</head><body><output id="probe">not loaded</output>
<iframe scrolling="no" srcdoc="{page}" style="width: {width}px; height: 1px" onload="var d = this.contentDocument.documentElement;
document.getElementById('probe').textContent = 'scrollWidth=' + d.scrollWidth + ' clientWidth=' + d.clientWidth
+ ' scrollHeight=' + d.scrollHeight;"></iframe>
</body></html>
"""


def create(config):
    app = create_app(config)

    def layout():
        with app.test_client() as client:
            page = client.get("/")
        assert page.status_code == 200, page.status_code
        return LAYOUT.format(page=escape(page.get_data(as_text=True)), width=int(request.args["width"]))

    app.add_url_rule("/__layout", "layout_probe", layout)
    return app
