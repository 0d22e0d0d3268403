"""The console over PostgreSQL: the same pages and actions, a real server on a throwaway database, in Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.api_harness import ApiServer, drain_queue, fake_evaluate, make_keys, skill_files
from tests.integration.test_console_browser import (
    World,
    css,
    live_ready,
    press_enter,
    sign_in,
    sign_out,
    tab_to,
    wait_for,
)
from tests.integration.test_console_browser import browser as browser  # noqa: F401  (the fixture)

pytest_plugins = ["tests.integration.conftest_store"]
pytestmark = [pytest.mark.postgres]


@pytest.fixture
def pg_world(pg_server, pg_template, tmp_path) -> Iterator[World]:
    name = "console_pg"
    url = pg_server.create_database(name, template=pg_template)
    try:
        tokens = make_keys(url, {"oncall": "promoter", "bot": "submitter"})
        server = ApiServer(url, home=tmp_path / "home").start()
        try:
            yield World(server, tokens, tmp_path / "home")
        finally:
            server.stop()
    finally:
        pg_server.drop_database(name)


def test_rollback_from_the_console_on_postgresql(pg_world, browser):  # noqa: F811
    world, d = pg_world, browser
    for body in ("a", "b"):
        r = world.api("bot").post("/v1/skills/greet/versions", json={"files": skill_files("greet", body)})
        assert r.status_code == 202, r.text
        drain_queue(world.server.db_url, evaluate=fake_evaluate("passed"))
    sign_in(d, world)
    assert "v2" in css(d, "tr[data-skill-row=greet]")[0].text
    d.get(f"{world.url}/console/skills/greet")
    live_ready(d)
    tab_to(d, "action-rollback")
    press_enter(d)
    wait_for(lambda: "/confirm/rollback" in d.current_url, "the confirmation page")
    tab_to(d, "reason")
    d.switch_to.active_element.send_keys("on postgres")
    tab_to(d, "confirm")
    press_enter(d)
    wait_for(lambda: "event=" in d.current_url, "the skill page after the rollback")
    assert css(d, "#active-version")[0].text == "v1"
    assert "on postgres" in css(d, "ol.timeline li.rolled_back.highlight")[0].text
    assert world.api().get("/v1/skills/greet").json()["active_version"] == 1
    # a third version evaluated meanwhile shows up in the open page without a reload
    live_ready(d)
    d.execute_script("window.__sameDocument = 'yes'")
    world.api("bot").post("/v1/skills/greet/versions", json={"files": skill_files("greet", "c")})
    drain_queue(world.server.db_url, evaluate=fake_evaluate("passed"))
    wait_for(lambda: css(d, "#version-3"), "v3 in the versions table")
    assert d.execute_script("return window.__sameDocument") == "yes"
    sign_out(d, world)
