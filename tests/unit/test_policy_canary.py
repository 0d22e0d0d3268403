"""[promotion.canary] in policy files: validated strictly; a policy without it keeps its hash."""

from __future__ import annotations

import pytest

from sandgate.errors import PolicyError
from sandgate.policy import load_policy, parse_policy


def test_defaults_and_per_skill_overrides() -> None:
    p = parse_policy("""
[promotion]
mode = "manual"
[promotion.skills]
greet = "canary"
[promotion.canary]
steps = [5, 25, 50]
min_calls = 500
fallback = false
[promotion.canary.skills.greet]
fallback = true
sample_io = 20
""", name="p")
    assert p.promotion.mode_for("greet") == "canary" and p.promotion.mode_for("other") == "manual"
    greet, other = p.promotion.canary_for("greet"), p.promotion.canary_for("other")
    assert greet["steps"] == [5, 25, 50] and greet["fallback"] is True and greet["sample_io"] == 20
    assert other["fallback"] is False and other["sample_io"] == 0 and other["min_calls"] == 500
    assert parse_policy("", name="p").promotion.canary_for("x")["steps"] == [10, 50]


@pytest.mark.parametrize("body, msg", [
    ("steps = [50, 10]", "increasing"),
    ("steps = [10, 100]", "increasing"),
    ("steps = []", "steps"),
    ("alpha = 0.9", "alpha"),
    ("min_calls = 0", "min_calls"),
    ("max_latency_ratio = 1.0", "max_latency_ratio"),
    ("fallbak = true", "fallbak: unknown key"),
    ("min_calls = \"100\"", "min_calls"),
    ("sample_io = 100000", "sample_io"),
])
def test_bad_canary_settings_are_refused_by_name(body: str, msg: str) -> None:
    with pytest.raises(PolicyError, match=msg):
        parse_policy(f"[promotion.canary]\n{body}\n", name="p")


def test_bad_skill_name_under_canary_skills() -> None:
    with pytest.raises(PolicyError, match="not a skill name"):
        parse_policy("[promotion.canary.skills.Bad]\nfallback = true\n", name="p")


def test_a_policy_without_a_canary_section_keeps_its_hash() -> None:
    p = load_policy("default")
    assert "canary" not in p.canonical_json()
    with_canary = parse_policy(p.model_dump(mode="json", exclude={"name"}) | {
        "promotion": {"mode": "auto", "skills": {}, "canary": {"steps": [10]}}}, name="default")
    assert with_canary.hash != p.hash
