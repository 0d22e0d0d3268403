"""The strict output format: what parses, and every way a reply is malformed."""

from __future__ import annotations

import pytest

from sandgate.generation.errors import MalformedOutput
from sandgate.generation.parse import parse_output, render_files
from sandgate.generation.prompt import format_lines, suggested_module, system_prompt
from sandgate.policy import load_policy
from sandgate.submission import submission_from_files
from tests.fakes.openai_server import MALFORMED_REPLY, clamp_files, skill_reply


def problems(text: str, **kw: object) -> list[str]:
    with pytest.raises(MalformedOutput) as info:
        parse_output(text, **kw)  # type: ignore[arg-type]
    return info.value.problems


def test_well_formed_reply_parses_and_passes_intake() -> None:
    parsed = parse_output(skill_reply(clamp_files(), prose="Here you go."))
    assert list(parsed.files) == ["skill.toml", "clamp.py", "tests/test_clamp.py"]
    assert parsed.module == "clamp.py" and parsed.tests == ["tests/test_clamp.py"]
    assert parsed.files["clamp.py"] == clamp_files()["clamp.py"]
    assert parsed.ignored_text == "Here you go."
    assert submission_from_files(parsed.as_bytes()).name == "clamp"


def test_render_then_parse_round_trips_even_with_backticks_inside() -> None:
    files = clamp_files(**{"clamp.py": 'DOC = """\n```\nexample\n```\n"""\n\ndef clamp(v, lo, hi):\n    return v\n'})
    rendered = render_files(files)
    assert "````python" in rendered  # a longer fence around a file containing ```
    assert parse_output(rendered).files == files


def test_prose_between_blocks_crlf_tilde_fences_and_backticked_paths_are_accepted() -> None:
    text = ("Intro.\r\n### FILE: `skill.toml`\r\n\r\n~~~toml\r\nname = \"clamp\"\r\n~~~\r\n"
            "Some words.\r\n### FILE: clamp.py\r\n```\r\nx = 1\r\n```\r\n"
            "### FILE: tests/test_clamp.py\r\n```python\r\ndef test_x():\r\n    pass\r\n```")
    parsed = parse_output(text)
    assert parsed.files["skill.toml"] == 'name = "clamp"\n'
    assert parsed.files["tests/test_clamp.py"] == "def test_x():\n    pass\n"
    assert parsed.ignored_text == "Intro.\nSome words."


def test_a_block_without_header_is_malformed() -> None:
    found = problems(MALFORMED_REPLY)
    assert any("without a '### FILE: <path>' header" in p for p in found)
    assert "skill.toml is missing" in found


def test_no_files_at_all() -> None:
    assert problems("I cannot do that.") == [
        "no files found: the reply must contain '### FILE: <path>' followed by a fenced code "
        "block for skill.toml, the module and its tests"]


@pytest.mark.parametrize("path", ["conftest.py", "tests/conftest.py", "tests/__init__.py",
                                  "../evil.py", "/etc/passwd", "src/clamp.py", "data.json",
                                  "README.md", "test_clamp.py", "__init__.py", "setup.py",
                                  "tests/helpers.py", "pytest.ini"])
def test_paths_outside_the_allowlist_are_malformed(path: str) -> None:
    files = clamp_files()
    files[path] = "x = 1\n"
    assert any(repr(path) in p and ("not an allowed path" in p or "not allowed" in p
                                    or "would be collected" in p) for p in problems(skill_reply(files)))


def test_duplicate_path_is_malformed() -> None:
    text = skill_reply(clamp_files()) + "\n### FILE: clamp.py\n```python\nx = 2\n```\n"
    assert "'clamp.py' appears twice" in problems(text)


def test_two_modules_missing_parts_and_empty_files() -> None:
    assert any("exactly one module" in p
               for p in problems(skill_reply(clamp_files(**{"other.py": "y = 1\n"}))))
    no_tests = clamp_files()
    del no_tests["tests/test_clamp.py"]
    assert problems(skill_reply(no_tests)) == ["no test file (tests/test_<name>.py)"]
    no_manifest = clamp_files()
    del no_manifest["skill.toml"]
    assert problems(skill_reply(no_manifest)) == ["skill.toml is missing"]
    no_module = clamp_files()
    del no_module["clamp.py"]
    assert problems(skill_reply(no_module)) == ["the module file (<module>.py) is missing"]
    assert "'clamp.py' is empty" in problems(skill_reply(clamp_files(**{"clamp.py": "\n  \n"})))


def test_too_many_test_files() -> None:
    files = clamp_files(**{f"tests/test_{i}.py": "def test_x():\n    pass\n" for i in range(6)})
    assert any("at most 5 test files" in p for p in problems(skill_reply(files)))


def test_near_miss_headers_are_called_out() -> None:
    text = skill_reply(clamp_files()).replace("### FILE: clamp.py", "## File: clamp.py")
    found = problems(text)
    assert any("'## File: clamp.py' is not a valid header" in p for p in found)
    assert any("**FILE: x**" in p for p in problems("**FILE: x**\n" + skill_reply(clamp_files())))


def test_header_without_block_and_unterminated_block() -> None:
    found = problems("### FILE: skill.toml\nname = 'x'\n" + skill_reply(clamp_files())[0:0])
    assert any("not followed by a fenced code block" in p for p in found)
    cut = skill_reply(clamp_files())[:-10]
    found = problems(cut, finish_reason="length")
    assert any("is not closed (the reply was cut off at the token limit)" in p for p in found)


def test_indented_closing_fence_does_not_close_the_block() -> None:
    # a fence must start at column 0: an indented ``` inside code stays content
    files = clamp_files(**{"clamp.py": 'DOC = """\n    ```\n"""\n'})
    assert parse_output(skill_reply(files)).files["clamp.py"] == 'DOC = """\n    ```\n"""\n'


def test_oversized_reply_is_refused_before_parsing() -> None:
    assert "longer than" in problems("x" * 1_000_001)[0]


def test_prompt_helpers() -> None:
    assert format_lines([9, 3, 4, 5, 5, 12, 13]) == "3-5, 9, 12-13"
    assert format_lines([]) == ""
    assert suggested_module("clamp") == "clamp"
    assert suggested_module("json") == "json_skill"  # would shadow the standard library
    assert suggested_module("pytest") == "pytest_skill" and suggested_module("tests") == "tests_skill"
    strict = system_prompt(load_policy("strict"))
    assert "at least 90%" in strict and "branch coverage of at least 80%" in strict
    assert "blocked severity (critical, high, medium)" in strict
