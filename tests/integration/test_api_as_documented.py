"""``/docs`` works offline: Swagger UI comes from the package, over real HTTP."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.integration.api_harness import ApiServer


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


def test_the_spec_names_the_codes_the_server_answers(tmp_path: Path) -> None:
    from tests.integration.api_harness import make_key

    url = f"sqlite:///{tmp_path / 'spec.db'}"
    token = make_key(url, "ops", "admin")
    server = ApiServer(url, home=tmp_path).start()
    try:
        with server.client(token) as c:
            spec = c.get("/openapi.json").json()

            def documented(path: str, method: str, status: int) -> bool:
                responses = spec["paths"][path][method]["responses"]
                body = responses.get(str(status), {}).get("content", {}).get("application/json", {})
                return str(status) in responses and (status < 400 or bool(body))

            # a rollback needs no body: every field is optional (404 here: no such skill, not 422)
            r = c.post("/v1/skills/ghost/rollback")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert documented("/v1/skills/{name}/rollback", "post", 404)
            assert c.post("/v1/skills/ghost/rollback", json={}).status_code == 404
            r = c.post("/v1/skills/ghost/promote", json={"version": 1, "policy": "nope"})
            assert documented("/v1/skills/{name}/promote", "post", r.status_code), r.text
            r = c.post("/v1/skills/ghost/versions/1/yank", json={})
            assert r.status_code == 422 and documented("/v1/skills/{name}/versions/{number}/yank", "post", 422)
            r = c.post("/v1/skills/ghost/versions", content=b"x", headers={"content-type": "text/plain"})
            assert r.status_code == 415 and documented("/v1/skills/{name}/versions", "post", 415)
            for status in (409, 413, 422):
                assert documented("/v1/skills/{name}/versions", "post", status)
            assert documented("/v1/skills/{name}/versions/{number}/yank", "post", 409)
            assert documented("/v1/skills/{name}/rollback", "post", 409)
    finally:
        server.stop()


def test_the_readme_python_client_example_runs(tmp_path: Path) -> None:
    import threading

    from tests.integration.api_harness import drain_queue, fake_evaluate, make_key

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("**The Python client**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    url = f"sqlite:///{tmp_path / 'client.db'}"
    token = make_key(url, "ci", "submitter")
    server = ApiServer(url, home=tmp_path).start()
    done = threading.Event()

    def worker() -> None:  # what `sandgate worker` does, until the example has its verdict
        while not done.is_set():
            drain_queue(url, evaluate=fake_evaluate("passed"))
            done.wait(0.2)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    printed: list[str] = []
    try:
        import os

        cwd = os.getcwd()
        os.chdir(Path(__file__).resolve().parents[2])
        try:
            exec(compile(example.replace("http://127.0.0.1:8080", server.url), "README.md", "exec"),
                 {"token": token, "print": lambda *a: printed.append(" ".join(map(str, a))),
                  "__name__": "readme"})
        finally:
            os.chdir(cwd)
    finally:
        done.set()
        thread.join(10)
        server.stop()
    assert printed[0] == "passed [1]", printed
    assert "('evaluated', 'policy:default')" in printed[1] and "key:ci" in printed[1], printed


def test_the_readme_settings_table_is_the_generated_one() -> None:
    import subprocess

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- settings:begin -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    out = subprocess.run([str(Path(sys.executable).with_name("sandgate")), "settings", "--markdown"],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert table == out, "README's settings table is stale: paste `sandgate settings --markdown` into it"
    from sandgate.cli.settings import rows
    from sandgate.config import AREA_PREFIXES

    # the areas the environment check leaves to their own classes are exactly those classes' prefixes
    assert {r["prefix"] for r in rows()} - {"", "SANDGATE_"} == set(AREA_PREFIXES)
    for name in ("SANDGATE_DATABASE_URL", "SANDGATE_API_RATE_BURST", "SANDGATE_LLM_MODEL",
                 "SANDGATE_SCHEDULER_RESCAN_ACTION", "SANDGATE_URL", "SANDGATE_TRACEBACK"):
        assert f"`{name}`" in table
