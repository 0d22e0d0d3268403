"""``/docs`` works offline: Swagger UI comes from the package, over real HTTP."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_harness import ApiServer  # noqa: E402


def test_the_api_docs_page_loads_nothing_from_the_internet(tmp_path: Path) -> None:
    server = ApiServer(f"sqlite:///{tmp_path / 'docs.db'}", home=tmp_path).start()
    try:
        with server.client() as c:
            page = c.get("/docs")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", page.text)
            referenced = {u for pair in urls for u in pair if u}
            assert referenced, page.text
            assert all(u.startswith("/") for u in referenced), referenced  # no CDN, no other host
            assert "cdn" not in page.text.lower()
            for url in referenced:
                r = c.get(url)
                assert r.status_code == 200, url
            js = c.get("/docs/assets/swagger-ui-bundle.js")
            assert "javascript" in js.headers["content-type"] and len(js.content) > 500_000
            assert "SwaggerUIBundle" in js.text
            assert "text/css" in c.get("/docs/assets/swagger-ui.css").headers["content-type"]
            spec = c.get("/openapi.json").json()
            assert spec["openapi"].startswith("3.")
            assert "/docs" not in spec["paths"] and c.get("/docs/assets/../app.py").status_code == 404
    finally:
        server.stop()
