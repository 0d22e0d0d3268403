"""The generation loop end to end: real client, fake LLM server on loopback, REAL sandbox.

The fake model first writes a skill whose test is wrong; the sandbox fails it;
the repair prompt names the failing test; the second reply passes, and the
passing version lands in a real SQLite store with the attempts as provenance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandgate.generation import ChatClient, GenerationSettings, generate_skill
from sandgate.policy import load_policy
from tests.fakes.openai_server import (  # noqa: F401
    CLAMP_TESTS_WRONG,
    FAILING_NODEID,
    FakeOpenAIServer,
    Reply,
    clamp_files,
    fake_llm,
    skill_reply,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("sandbox_image", "no_leftovers")]


def test_fail_then_repair_passes_on_attempt_2_in_the_real_sandbox(
        fake_llm: FakeOpenAIServer, tmp_path: Path) -> None:
    from sandgate.store import evaluations, open_store, versions

    fake_llm.enqueue(Reply.chat(skill_reply(clamp_files(tests=CLAMP_TESTS_WRONG))),
                     Reply.chat(skill_reply(clamp_files())))
    settings = GenerationSettings(base_url=fake_llm.url, model="fake-model", max_retries=0)
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with ChatClient(settings) as client:
            result = generate_skill("clamp", "Clamp a number into a closed range",
                                    policy=load_policy("default"), client=client, store=store,
                                    attempts=3)
        assert result.status == "passed", (result.error, [a.reason_codes for a in result.attempts])
        assert [a.verdict for a in result.attempts] == ["failed", "passed"]
        assert "tests_failed" in result.attempts[0].reason_codes
        assert len(fake_llm.requests) == 2

        repair = fake_llm.requests[1].messages[-1]["content"]
        assert FAILING_NODEID in repair          # the node id the sandbox reported
        assert "assert 3 == 5" in repair         # and pytest's assertion message

        report = result.report
        assert report.tests.passed == 4 and report.coverage.line_percent >= 80
        version = versions.get_version(store, name="clamp", number=1)
        assert version.active and version.content_hash == result.submission.content_hash
        assert [a["verdict"] for a in version.provenance["attempts"]] == ["failed", "passed"]
        stored = evaluations.latest_evaluation(store, name="clamp", number=1,
                                        policy_hash=load_policy("default").hash, conclusive=True)
        assert stored is not None and stored.verdict == "passed"
    finally:
        store.close()
