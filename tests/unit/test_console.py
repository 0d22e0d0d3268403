"""The web console in process: sign-in, sessions, CSRF, escaping, pages and actions on a real SQLite store.

The browser end-to-end tests (headless Chromium, the real server, the real
sandbox) are in ``tests/integration/test_console_browser.py``; here the app runs
under Starlette's test client with a fake evaluator.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from sandgate.api.settings import ApiSettings
from sandgate.console import CSP
from sandgate.console.present import annotate, side_by_side
from sandgate.console.session import COOKIE
from sandgate.store import keys, open_store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'
ORIGIN = "http://testserver"


def skill_files(name: str, body: str = "a") -> dict[str, bytes]:
    return {
        "skill.toml": f'name = "{name}"\nentrypoint = "{name}:run"\n'.encode(),
        f"{name}.py": f"def run(x):\n    if x:\n        return {body!r} + str(x)\n    return '{HOSTILE}'\n".encode(),
        f"tests/test_{name}.py": f"from {name} import run\n\n\ndef test_run():\n    assert run(1)\n".encode(),
    }


def hostile_evaluate(submission: Any, *, policy: Any, evaluation_id: str | None = None) -> Any:
    from sandgate.report import (
        CoverageSummary,
        EvaluationReport,
        FileCoverage,
        Finding,
        TestCase,
        TestSummary,
        Verdict,
    )

    module = f"{submission.name}.py"
    return EvaluationReport(
        evaluation_id=evaluation_id or "x", verdict=Verdict.passed, skill=submission.name,
        content_hash=submission.content_hash, policy=policy.name, policy_hash=policy.hash,
        tests=TestSummary(collected=1, passed=1, cases=[
            TestCase(nodeid=f"tests/test_x.py::test_{HOSTILE}", outcome="passed", duration_seconds=0.01,
                     message=HOSTILE)]),
        coverage=CoverageSummary(line_percent=75.0, statements=4, covered_lines=3, files=[
            FileCoverage(path=module, statements=4, missed_lines=[4], line_percent=75.0, branches=2,
                         missed_branches=1, missed_branch_lines=[2])]),
        findings=[Finding(rule_id="r1", severity="low", path=module, line=2, message=HOSTILE)],
        timings={"static": 0.5, "dynamic": 1.5, "total": 2.0},
        output=HOSTILE,
    )


class Env:
    def __init__(self, client: TestClient, store: Any, tokens: dict[str, str]) -> None:
        self.client, self.store, self.tokens = client, store, tokens

    def sign_in(self, role: str = "promoter") -> str:
        r = self.client.post("/console/login", data={"api_key": self.tokens[role]},
                             headers={"Origin": ORIGIN}, follow_redirects=False)
        assert r.status_code == 303, r.text
        return r.headers["set-cookie"]

    def csrf(self, path: str = "/console/skills") -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.client.get(path).text)
        assert m, "no CSRF token in the page"
        return m.group(1)

    def submit(self, name: str, body: str = "a") -> Any:
        from sandgate import lifecycle
        from sandgate.submission import submission_from_files

        policy = lifecycle.load_policy(None)
        return lifecycle.submit(self.store, submission=submission_from_files(skill_files(name, body)),
                                policy=policy, actor="test", evaluate=hostile_evaluate, wait=True,
                                provenance={"client": HOSTILE})


@pytest.fixture
def env(tmp_path: Path, monkeypatch):
    from sandgate.api.app import create_app
    from sandgate.config import Settings, get_settings

    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path))
    monkeypatch.delenv("SANDGATE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    tokens = {r: keys.create_key(store, name=r, role=r, actor="t")[1] for r in ("reader", "promoter")}
    api = ApiSettings(ready_requires_engine=False, watch_poll_seconds=0.05, auth_failures_per_minute=5)
    app = create_app(Settings(database_url=url), api=api, store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Env(client, store, tokens)
    store.close()
    get_settings.cache_clear()


def test_pages_need_a_session(env):
    r = env.client.get("/console/skills", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    r = env.client.get("/console/events")
    assert r.status_code == 401


def test_sign_in_sets_a_strict_httponly_cookie_and_a_wrong_key_is_refused(env):
    r = env.client.post("/console/login", data={"api_key": "sg_nonsense"}, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and "invalid or revoked API key" in r.text
    cookie = env.sign_in()
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/console" in cookie and "Secure" not in cookie  # plain http here
    assert env.tokens["promoter"] not in cookie
    page = env.client.get("/console/skills")
    assert page.status_code == 200 and "signed in as" in page.text
    assert page.headers["content-security-policy"] == CSP
    assert env.tokens["promoter"] not in page.text


def test_the_cookie_is_secure_over_https(env):
    from fastapi.testclient import TestClient

    # no second lifespan: the app's event hub already runs under env.client's event loop, and
    # starting it again from another loop would race the first one (not a production case)
    c = TestClient(env.client.app, base_url="https://console.example")
    r = c.post("/console/login", data={"api_key": env.tokens["reader"]},
               headers={"Origin": "https://console.example"}, follow_redirects=False)
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_same_origin_rules():
    from starlette.requests import Request

    from sandgate.console.session import same_origin, secure_request

    def req(scheme: str, **headers: str) -> Request:
        return Request({"type": "http", "scheme": scheme, "method": "POST", "path": "/", "server": ("h", 80),
                        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})

    assert same_origin(req("http", Host="h:8080", Origin="http://h:8080"))
    assert same_origin(req("http", Host="h:8080", Origin="https://h:8080"))  # TLS terminated in front
    assert not same_origin(req("https", Host="h", Origin="http://h"))  # never a downgrade
    assert not same_origin(req("http", Host="h:8080", Origin="http://h:8081"))
    assert not same_origin(req("http", Host="h:8080", Origin="null"))
    assert not same_origin(req("http", Host="h:8080", Origin="http://h:8080.evil.example"))
    assert same_origin(req("http", Host="h:8080", Referer="http://h:8080/console/skills"))
    assert not same_origin(req("http", Host="h:8080", Referer="http://h:8080.evil.example/x"))
    assert not same_origin(req("http", Host="h:8080"))
    assert not same_origin(req("http", Origin="http://h:8080"))
    assert secure_request(req("http", Origin="https://h")) and not secure_request(req("http", Origin="http://h"))


def test_sign_in_from_another_origin_is_refused(env):
    r = env.client.post("/console/login", data={"api_key": env.tokens["reader"]},
                        headers={"Origin": "http://evil.example"}, follow_redirects=False)
    assert r.status_code == 403 and COOKIE not in r.headers.get("set-cookie", "")


def test_failed_sign_ins_are_rate_limited(env):
    for _ in range(5):
        env.client.post("/console/login", data={"api_key": "sg_x"}, headers={"Origin": ORIGIN})
    r = env.client.post("/console/login", data={"api_key": env.tokens["reader"]}, headers={"Origin": ORIGIN})
    assert r.status_code == 429 and "too many failed sign-ins" in r.text


def test_revoking_the_key_ends_the_session(env):
    env.sign_in("reader")
    assert env.client.get("/console/skills", follow_redirects=False).status_code == 200
    keys.revoke_key(env.store, name="reader", actor="t")
    assert env.client.get("/console/skills", follow_redirects=False).status_code == 303


def test_hostile_report_text_is_escaped_and_missed_lines_marked(env):
    result = env.submit("greet")
    env.sign_in()
    for path in ("/console/skills/greet/versions/1", f"/console/evaluations/{result.evaluation.id}",
                 "/console/skills/greet"):
        page = env.client.get(path)
        assert page.status_code == 200, page.text
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
    skill_page = env.client.get("/console/skills/greet").text
    assert f'href="/console/evaluations/{result.evaluation.id}">report</a>' in skill_page
    page = env.client.get("/console/skills/greet/versions/1").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert re.search(r'<tr class="line missed" data-line="4"', page)
    assert not re.search(r'<tr class="line missed" data-line="3"', page)
    assert re.search(r'<tr class="line partial" data-line="2"', page)
    assert 'class="finding low"' in page and "<progress" in page
    live = env.client.get("/console/live").text
    assert "submitted" in live and "evaluated" in live and "<script>alert" not in live


def test_reader_cannot_act_and_actions_need_csrf_and_origin(env):
    env.submit("greet")
    env.submit("greet", body="b")
    env.sign_in("reader")
    assert env.client.get("/console/skills/greet/confirm/rollback").status_code == 403
    csrf = env.csrf()
    r = env.client.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": "x"},
                        headers={"Origin": ORIGIN})
    assert r.status_code == 403 and "promoter" in r.text
    env.client.cookies.clear()
    env.sign_in("promoter")
    csrf = env.csrf()
    before = env.client.get("/console/skills/greet").text
    assert 'id="active-version">v2' in before
    r = env.client.post("/console/skills/greet/rollback", data={"csrf": "wrong", "reason": "x"},
                        headers={"Origin": ORIGIN})
    assert r.status_code == 403 and "CSRF" in r.text
    r = env.client.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": "x"},
                        headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = env.client.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": " "},
                        headers={"Origin": ORIGIN})
    assert r.status_code == 422 and "needs a reason" in r.text
    assert 'id="active-version">v2' in env.client.get("/console/skills/greet").text


def test_rollback_with_confirmation_shows_the_event(env):
    env.submit("greet")
    env.submit("greet", body="b")
    env.sign_in("promoter")
    form = env.client.get("/console/skills/greet/confirm/rollback")
    assert form.status_code == 200 and 'for="reason"' in form.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = env.client.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": f"bad {HOSTILE}"},
                        headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.status_code == 303, r.text
    event_id = int(re.search(r"event=(\d+)", r.headers["location"]).group(1))
    page = env.client.get(r.headers["location"]).text
    assert f'id="event-{event_id}" class="event rolled_back highlight"' in page
    assert 'id="active-version">v1' in page and "<script>alert" not in page
    assert "key:promoter" in page


def test_diff_is_side_by_side(env):
    env.submit("greet")
    env.submit("greet", body="b")
    env.sign_in("reader")
    page = env.client.get("/console/skills/greet/diff?a=1&b=2")
    assert page.status_code == 200
    assert '<tr class="changed">' in page.text and "&#39;b&#39;" in page.text


def test_bad_names_and_numbers_are_clear_errors(env):
    env.sign_in("reader")
    r = env.client.get("/console/skills/NoSuch")
    assert r.status_code == 404 and "no skill" in r.text and 'id="sign-out"' in r.text  # still signed in
    assert env.client.get("/console/skills/nosuch/versions/3").status_code == 404


def test_sign_out_needs_the_csrf_token_and_ends_the_session(env):
    env.sign_in("reader")
    csrf = env.csrf()
    r = env.client.post("/console/logout", data={"csrf": "nope"}, headers={"Origin": ORIGIN})
    assert r.status_code == 403
    r = env.client.post("/console/logout", data={"csrf": csrf}, headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.status_code == 303
    assert env.client.get("/console/skills", follow_redirects=False).status_code == 303


def test_side_by_side_pairs_removals_with_additions():
    rows = side_by_side("--- a\n+++ b\n@@ -1,3 +1,3 @@\n keep\n-old\n+new\n+more\n tail\n")
    kinds = [(r.kind, r.left_no, r.right_no) for r in rows]
    assert kinds == [("hunk", None, None), ("context", 1, 1), ("changed", 2, 2), ("added", None, 3),
                     ("context", 3, 4)]


def test_annotate_marks_missed_lines_and_places_findings():
    lines = annotate("a\nb\nc\n", missed=[2], partial=[3],
                     findings=[{"line": 3, "message": "m"}, {"line": 99, "message": "x"}])
    assert [line.coverage for line in lines] == ["", "missed", "partial"]
    assert [f["message"] for f in lines[2].findings] == ["m"] and [f["message"] for f in lines[0].findings] == ["x"]


def test_yank_and_abort_a_canary_through_their_confirmation_pages(env):
    from sandgate.service.embedded import EmbeddedService

    env.submit("greet")
    env.submit("greet", body="b")
    env.submit("greet", body="c")  # v3 active; v2 becomes the canary's candidate below
    env.client.cookies.clear()
    env.sign_in("promoter")
    form = env.client.get("/console/skills/greet/confirm/yank?version=1")
    assert form.status_code == 200 and 'id="rollback"' in form.text
    csrf = env.csrf()
    r = env.client.post("/console/skills/greet/yank", data={"csrf": csrf, "version": "1", "reason": "leaks"},
                        headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = env.client.get(r.headers["location"]).text
    assert "yanked: leaks" in page and 'class="event yanked highlight"' in page

    EmbeddedService(env.store).start_canary("greet", 2, weight=10, actor="t", reason="try v2", policy="canary",
                                            expected_generation=None, force=True)
    page = env.client.get("/console/skills/greet").text
    assert 'id="canary">v2 at 10%' in page and 'id="action-abort"' in page
    assert "v2 at 10%" in env.client.get("/console/skills").text
    assert "v2 (10% of calls)" in env.client.get("/console/skills/greet/confirm/abort").text
    r = env.client.post("/console/skills/greet/abort", data={"csrf": csrf, "reason": "errors up"},
                        headers={"Origin": ORIGIN}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = env.client.get(r.headers["location"]).text
    assert 'class="event canary_aborted highlight"' in page and 'id="action-abort"' not in page


def test_a_refused_action_is_an_error_page_with_the_reason(env):
    env.submit("greet")
    env.sign_in("promoter")
    csrf = env.csrf()
    r = env.client.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": "x"},
                        headers={"Origin": ORIGIN})
    assert r.status_code == 409 and 'id="problem"' in r.text
    r = env.client.post("/console/skills/greet/promote", data={"csrf": csrf, "version": "x1"},
                        headers={"Origin": ORIGIN})
    assert r.status_code == 422 and "not a version number" in r.text
