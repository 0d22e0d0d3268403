"""The web console of ``sandgate serve``: operators and on-call read skills, reports and
the audit trail, and promote, roll back, yank and abort canaries, in a browser.

Same process, same keys, same library calls as the API (:mod:`sandgate.api`): a
page is the service call its API route makes, rendered by a Jinja2 template
(autoescaped: everything that came from a submission is hostile text) instead of
JSON. Assets are in the package (``console/static``, no CDN) and one small
hand-written script (``console.js``) keeps pages live over the event feed
(``GET /console/events``, the ``/v1/watch`` stream authenticated by the session).

::

    from sandgate.console import install
    install(app)          # create_app() does it: /console/...

Pages answer with a strict Content-Security-Policy (:data:`CSP`): no inline
script or style, nothing from another origin. Sessions, cookies and CSRF:
:mod:`sandgate.console.session`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["install", "PREFIX", "CSP", "STATIC"]

PREFIX = "/console"
STATIC = Path(__file__).with_name("static")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def install(app: Any) -> None:
    """Mount the console's pages and assets on the API's application."""
    from fastapi.staticfiles import StaticFiles

    from sandgate.console.session import Sessions
    from sandgate.console.views import router

    app.state.console_sessions = Sessions()
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(router)
