"""The web console end to end: the real ``sandgate serve``, a headless Chromium, real HTTP.

One test runs the real sandbox (``docker``): sign in, submit through the API,
watch the version get evaluated live, open the report, see a missed line marked,
roll back with the keyboard, see the event in the timeline, sign out. The others
use evaluations run in the test process with a fake evaluator (the console, not
the sandbox, is under test): hostile text stays inert, every control is labelled,
the feed updates without a reload, a key never lands in a URL or a log.

The screenshots in docs/console/ come from these tests:
``CONSOLE_SCREENSHOTS=1 .venv/bin/pytest tests/integration/test_console_browser.py``.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api_harness import ApiServer, drain_queue, make_keys, run_worker
from tests.integration.browser import chromium, press_enter, shot, tab_to, unlabelled

SKILLS = Path(__file__).resolve().parents[2] / "examples" / "skills"
HOSTILE = '<img src=x id=injected onerror="window.__xss=1"><script>window.__xss=2;alert(1)</script>'
WAIT = 30.0


class World:
    def __init__(self, server: ApiServer, tokens: dict[str, str], home: Path) -> None:
        self.server, self.tokens, self.home = server, tokens, home

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, role: str = "oncall") -> httpx.Client:
        return self.server.client(self.tokens[role])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    tokens = make_keys(db, {"oncall": "promoter", "viewer": "reader", "bot": "submitter"})
    server = ApiServer(db, home=tmp_path / "home").start()
    try:
        yield World(server, tokens, tmp_path / "home")
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def wait_for(predicate: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # the element is not there yet (or was just replaced)
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def sign_in(driver: Any, world: World, role: str = "oncall") -> None:
    """Type the key and press Enter, the way a person does."""
    driver.get(f"{world.url}/console/login")
    assert not unlabelled(driver)
    field = css(driver, "#api_key")[0]
    field.send_keys(world.tokens[role])
    press_enter(driver)
    wait_for(lambda: driver.current_url.endswith("/console/skills"), "the skills page after sign-in")
    assert world.tokens[role] not in driver.current_url


def sign_out(driver: Any, world: World) -> None:
    tab_to(driver, "sign-out")
    press_enter(driver)
    wait_for(lambda: driver.current_url.endswith("/console/login"), "the sign-in page after sign-out")
    driver.get(f"{world.url}/console/skills")
    assert driver.current_url.endswith("/console/login"), "still signed in after signing out"


def live_ready(driver: Any) -> None:
    wait_for(lambda: driver.execute_script("return document.body.dataset.liveReady === '1'"),
             "the event feed to connect")


def files_json(directory: Path, extra: dict[str, str] | None = None) -> dict[str, Any]:
    files = {p.relative_to(directory).as_posix(): p.read_bytes()
             for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for path, text in (extra or {}).items():
        files[path] = files.get(path, b"") + text.encode()
    return {"files": {k: base64.b64encode(v).decode() for k, v in files.items()}, "encoding": "base64",
            "provenance": {"agent": "browser-test"}}


def assert_inert(driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        alert = None
    assert alert is None, f"an alert opened: {alert.text if alert else ''}"
    assert driver.execute_script("return window.__xss === undefined"), "a submitted script ran"
    assert not css(driver, "#injected"), "a submitted element was injected"
    assert not driver.execute_script(
        "return [...document.scripts].some(s => s.textContent.includes('__xss'))"), "a submitted <script> is in the DOM"


# --------------------------------------------------------------------------- the real sandbox


@pytest.mark.docker
def test_operator_flow_with_the_real_sandbox(world, browser, sandbox_image, tmp_path, no_leftovers):
    d = browser
    d.get(f"{world.url}/console/skills")
    assert d.current_url.endswith("/console/login"), "a page answered without a session"
    shot(d, "login", tmp_path)
    sign_in(d, world)
    shot(d, "skills-empty", tmp_path)

    # v1 through the API, evaluated by a real worker in the real sandbox: passed, auto-promoted
    r = world.api("bot").post("/v1/skills/text_stats/versions", json=files_json(SKILLS / "text_stats"))
    assert r.status_code == 202, r.text
    assert [o["verdict"] for o in run_worker(world.server.db_url, world.home)] == ["passed"]

    # v2 carries a helper its tests never call: a missed line in the report
    untested = '\n\ndef _debug(text: str) -> str:\n    return f"{len(text)} characters"\n'
    r = world.api("bot").post("/v1/skills/text_stats/versions",
                              json=files_json(SKILLS / "text_stats_v2", {"text_stats.py": untested}))
    assert r.status_code == 202 and r.json()["version"] == 2, r.text

    # the report page of v2 is open while it is pending; a worker runs it; the page updates itself
    d.get(f"{world.url}/console/skills/text_stats/versions/2")
    live_ready(d)
    assert css(d, "#verdict")[0].text.lower() == "queued"
    shot(d, "report-queued", tmp_path)
    d.execute_script("window.__sameDocument = 'yes'")
    assert [o["verdict"] for o in run_worker(world.server.db_url, world.home)] == ["passed"]
    wait_for(lambda: css(d, "#verdict")[0].text.lower() == "passed", "the verdict to arrive live")
    assert d.execute_script("return window.__sameDocument") == "yes", "the page reloaded instead of updating"

    # the report: the missed line of _debug is marked in the source, tests and timings are shown
    missed = css(d, "tr.line.missed")
    assert missed and any("characters" in row.text for row in missed), [m.text for m in missed]
    assert css(d, "#tests tbody tr") and css(d, "#timings progress") and css(d, "#sandbox")
    d.get(d.current_url)
    shot(d, "report", tmp_path)

    # the skill page: v2 active; roll back with the keyboard, through the confirmation page
    d.get(f"{world.url}/console/skills/text_stats")
    assert css(d, "#active-version")[0].text == "v2"
    assert not unlabelled(d)
    shot(d, "skill", tmp_path)
    tab_to(d, "action-rollback")
    press_enter(d)
    wait_for(lambda: "/confirm/rollback" in d.current_url, "the confirmation page")
    assert not unlabelled(d)
    tab_to(d, "reason")
    d.switch_to.active_element.send_keys("v2 misbehaves in production (browser test)")
    shot(d, "confirm-rollback", tmp_path)
    tab_to(d, "confirm")
    press_enter(d)
    wait_for(lambda: "event=" in d.current_url, "the skill page after the rollback")
    assert css(d, "#active-version")[0].text == "v1"
    done = css(d, "#done-event")[0].text
    assert "rolled_back" in done and "v2 misbehaves" in done
    event = css(d, "ol.timeline li.rolled_back.highlight")
    assert event and "key:oncall" in event[0].text and "v2 misbehaves in production" in event[0].text
    assert world.api("viewer").get("/v1/skills/text_stats").json()["active_version"] == 1
    shot(d, "skill-after-rollback", tmp_path)

    # the diff of v1 and v2, side by side
    d.get(f"{world.url}/console/skills/text_stats/diff?a=1&b=2")
    assert css(d, "table.side-by-side tr.added, table.side-by-side tr.changed")
    shot(d, "diff", tmp_path)

    d.get(f"{world.url}/console/skills")
    assert "v1" in css(d, "tr[data-skill-row=text_stats]")[0].text
    shot(d, "skills", tmp_path)
    sign_out(d, world)


# --------------------------------------------------------------------------- fake evaluations


def hostile_evaluate(submission: Any, *, policy: Any, evaluation_id: str | None = None) -> Any:
    from sandgate.report import (
        CoverageSummary,
        EvaluationReport,
        FileCoverage,
        Finding,
        Reason,
        ReasonCode,
        TestCase,
        TestSummary,
        Verdict,
    )

    module = f"{submission.name}.py"
    return EvaluationReport(
        evaluation_id=evaluation_id or "x", verdict=Verdict.failed, skill=submission.name,
        reasons=[Reason(code=ReasonCode.tests_failed, message=f"failed: {HOSTILE}")],
        content_hash=submission.content_hash, policy=policy.name, policy_hash=policy.hash,
        tests=TestSummary(collected=1, failed=1, cases=[
            TestCase(nodeid=f"tests/test_x.py::test_{HOSTILE}", outcome="failed", duration_seconds=0.01,
                     message=f"AssertionError: {HOSTILE}")]),
        coverage=CoverageSummary(line_percent=50.0, statements=2, covered_lines=1, files=[
            FileCoverage(path=module, statements=2, missed_lines=[2], line_percent=50.0)]),
        findings=[Finding(rule_id=f"rule{HOSTILE}", severity="medium", path=module, line=1, message=HOSTILE)],
        timings={"static": 0.2, "dynamic": 0.7, "total": 1.0},
        output=f"captured {HOSTILE}",
    )


def hostile_files(name: str, n: int = 1) -> dict[str, Any]:
    description = HOSTILE.replace(chr(34), chr(39))
    return {"files": {
        "skill.toml": f'name = "{name}"\ndescription = "{description}"\nentrypoint = "{name}:run"\n',
        f"{name}.py": f"def run(x):\n    return '{HOSTILE.replace(chr(39), chr(34))}'\n",
        f"tests/test_{name}.py": f"from {name} import run\n\n\ndef test_run():\n    assert run({n})\n",
    }, "provenance": {"agent": HOSTILE}}


def test_hostile_submission_text_is_inert_everywhere(world, browser, tmp_path):
    d = browser
    r = world.api("bot").post("/v1/skills/evil/versions", json=hostile_files("evil"))
    assert r.status_code == 202, r.text
    evaluation_id = r.json()["evaluation_id"]
    drain_queue(world.server.db_url, evaluate=hostile_evaluate)
    sign_in(d, world)
    for path in ("/console/skills", "/console/skills/evil", "/console/skills/evil/versions/1",
                 f"/console/evaluations/{evaluation_id}", "/console/live"):
        d.get(f"{world.url}{path}")
        assert_inert(d)
        assert not unlabelled(d), path
    # the hostile text is shown as text
    d.get(f"{world.url}/console/skills/evil/versions/1")
    assert HOSTILE in css(d, "#tests")[0].text and "<script>" in css(d, "pre.output")[0].text
    assert css(d, "tr.line.missed[data-line='2']"), "the missed line is not marked"
    assert css(d, "tr.finding") and HOSTILE in css(d, "tr.finding")[0].text
    shot(d, "report-hostile", tmp_path)
    # a hostile reason arrives over the live feed: it is shown as text there too
    d.get(f"{world.url}/console/live")
    live_ready(d)
    r = world.api("bot").post("/v1/skills/evil/versions", json=hostile_files("evil", 2))
    assert r.status_code == 202 and r.json()["version"] == 2, r.text
    drain_queue(world.server.db_url, evaluate=hostile_evaluate)
    wait_for(lambda: css(d, "#feed li"), "an event in the live feed")
    r = world.api().post("/v1/skills/evil/versions/2/yank", json={"reason": f"yanked {HOSTILE}"})
    assert r.status_code == 200, r.text
    wait_for(lambda: any(HOSTILE in li.text for li in css(d, "#feed li")), "the hostile reason in the feed")
    assert_inert(d)
    shot(d, "live", tmp_path)


def test_keyboard_promote_and_labels_with_the_reader_refused(world, browser, tmp_path):
    from tests.integration.api_harness import fake_evaluate, skill_files

    d = browser
    for body in ("a", "b"):
        r = world.api("bot").post("/v1/skills/greet/versions", json={"files": skill_files("greet", body)})
        assert r.status_code == 202, r.text
        drain_queue(world.server.db_url, evaluate=fake_evaluate("passed"))
    # a reader sees no actions, and a confirmation page refuses them
    sign_in(d, world, "viewer")
    d.get(f"{world.url}/console/skills/greet")
    assert not css(d, "#action-rollback") and not css(d, "#promote-1")
    d.get(f"{world.url}/console/skills/greet/confirm/promote?version=1")
    assert "promoter" in css(d, "#problem")[0].text
    d.get(f"{world.url}/console/skills")
    sign_out(d, world)
    # a promoter promotes v1 with Tab and Enter only; the skill page (open elsewhere) shows it live
    sign_in(d, world)
    d.get(f"{world.url}/console/skills/greet")
    assert css(d, "#active-version")[0].text == "v2"
    tab_to(d, "promote-1")
    press_enter(d)
    wait_for(lambda: "/confirm/promote" in d.current_url, "the promote confirmation")
    shot(d, "confirm-promote", tmp_path)
    tab_to(d, "confirm")
    press_enter(d)
    wait_for(lambda: "event=" in d.current_url, "the skill page after the promotion")
    assert css(d, "#active-version")[0].text == "v1"
    assert "promoted" in css(d, "#done-event")[0].text
    # a move made through the API appears without a reload
    live_ready(d)
    d.execute_script("window.__sameDocument = 'yes'")
    r = world.api().post("/v1/skills/greet/rollback", json={"reason": "from the API"})
    assert r.status_code == 200, r.text
    wait_for(lambda: css(d, "#active-version")[0].text == "v2", "the rollback to show live")
    wait_for(lambda: any("from the API" in li.text for li in css(d, "ol.timeline li.rolled_back")),
             "the rollback in the timeline")
    assert d.execute_script("return window.__sameDocument") == "yes"
    assert any("rolled_back" in li.text for li in css(d, "#feed li"))
    # the key never appeared in a URL or in the server's log
    log = world.server.log_path.read_text(errors="replace")
    for token in world.tokens.values():
        assert token not in log
    assert "/console/login" in log


def test_actions_refuse_a_cross_site_post(world):
    """A form posted from another origin (with the victim's cookie) is refused, token or not."""
    from tests.integration.api_harness import fake_evaluate, skill_files

    for body in ("a", "b"):
        world.api("bot").post("/v1/skills/greet/versions", json={"files": skill_files("greet", body)})
        drain_queue(world.server.db_url, evaluate=fake_evaluate("passed"))
    with httpx.Client(base_url=world.url, timeout=10) as c:
        r = c.post("/console/login", data={"api_key": world.tokens["oncall"]}, headers={"Origin": world.url})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        page = c.get("/console/skills/greet").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        evil = c.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": "x"},
                      headers={"Origin": "http://attacker.example"})
        assert evil.status_code == 403
        no_origin = c.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": "x"})
        assert no_origin.status_code == 403
        no_token = c.post("/console/skills/greet/rollback", data={"reason": "x"}, headers={"Origin": world.url})
        assert no_token.status_code == 403
        assert world.api("viewer").get("/v1/skills/greet").json()["active_version"] == 2
        ok = c.post("/console/skills/greet/rollback", data={"csrf": csrf, "reason": "x"},
                    headers={"Origin": world.url})
        assert ok.status_code == 303
        assert world.api("viewer").get("/v1/skills/greet").json()["active_version"] == 1
        assert c.get("/console/skills").headers["content-security-policy"].startswith("default-src 'self'")


def test_the_event_stream_ends_when_the_session_does(world):
    """An open ``/console/events`` stream stops within seconds of the sign-out (keepalives every 2 s here)."""
    with httpx.Client(base_url=world.url, timeout=10) as c:
        assert c.get("/console/events").status_code == 401
        r = c.post("/console/login", data={"api_key": world.tokens["viewer"]}, headers={"Origin": world.url})
        assert r.status_code == 303
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/console/skills").text).group(1)
        with c.stream("GET", "/console/events", timeout=httpx.Timeout(5.0, read=30.0)) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert any(line.startswith("event: ready") for line, _ in zip(lines, range(10), strict=False))
            with httpx.Client(base_url=world.url, timeout=10, cookies=c.cookies) as other:
                out = other.post("/console/logout", data={"csrf": csrf}, headers={"Origin": world.url})
                assert out.status_code in (200, 303)
            started = time.monotonic()
            for _ in lines:  # keepalives, then the end of the stream
                assert time.monotonic() - started < 25, "the stream outlived its session"
            assert time.monotonic() - started < 25
