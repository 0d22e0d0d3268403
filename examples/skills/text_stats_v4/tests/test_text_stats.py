"""Tests for text_stats."""

from __future__ import annotations

import pytest
from text_stats import analyse, count_lines, count_sentences, top_words, words


def test_words_are_lowercased_and_split_on_punctuation() -> None:
    assert words("Hello, world! Hello again.") == ["hello", "world", "hello", "again"]


def test_words_keep_apostrophes_and_hyphens_inside_a_word() -> None:
    assert words("Don't stop: a well-known fact") == ["don't", "stop", "a", "well-known", "fact"]


def test_words_split_on_underscores_and_keep_digits() -> None:
    assert words("snake_case 42 times") == ["snake", "case", "42", "times"]


def test_words_of_text_without_words() -> None:
    assert words(" ... !!! ") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("one line", 1),
        ("one line\n", 1),
        ("two\nlines", 2),
        ("two\nlines\n", 2),
        ("\n", 1),
        ("a\n\nb\n", 3),
    ],
)
def test_count_lines(text: str, expected: int) -> None:
    assert count_lines(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("No punctuation at all", 1),
        ("One. Two! Three?", 3),
        ("Wait... what?! Really.", 3),
        ("Pi is 3.14 roughly. Yes.", 2),
        ("Trailing dots ... ", 1),
        ("  ?!  ", 0),
        ("Line one.\nLine two", 2),
    ],
)
def test_count_sentences(text: str, expected: int) -> None:
    assert count_sentences(text) == expected


def test_top_words_ranks_by_count_then_alphabetically() -> None:
    text = "b a c b a b"
    assert top_words(text, 2) == [("b", 3), ("a", 2)]
    assert top_words(text) == [("b", 3), ("a", 2), ("c", 1)]


def test_top_words_zero_and_negative() -> None:
    assert top_words("a b c", 0) == []
    with pytest.raises(ValueError, match="n must be zero or more"):
        top_words("a b c", -1)


def test_analyse_counts_everything() -> None:
    result = analyse("The cat saw the dog.\nThe dog ran.\n")
    assert result == {
        "characters": 34,
        "characters_no_spaces": 26,
        "words": 8,
        "unique_words": 5,
        "lines": 2,
        "sentences": 2,
        "bytes": 34,
        "average_word_length": 3.0,
        "top_words": [("the", 3), ("dog", 2), ("cat", 1), ("ran", 1), ("saw", 1)],
    }


def test_analyse_respects_top() -> None:
    assert analyse("x y y", top=1)["top_words"] == [("y", 2)]


def test_analyse_of_empty_text() -> None:
    assert analyse("") == {
        "characters": 0,
        "characters_no_spaces": 0,
        "words": 0,
        "unique_words": 0,
        "lines": 0,
        "sentences": 0,
        "bytes": 0,
        "average_word_length": 0.0,
        "top_words": [],
    }


def test_analyse_rounds_the_average_word_length() -> None:
    assert analyse("ab abc")["average_word_length"] == 2.5
    assert analyse("a ab ab")["average_word_length"] == 1.67


def test_analyse_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        analyse(b"bytes")  # type: ignore[arg-type]


def test_bytes_of_a_text() -> None:
    assert analyse("The cat.")["bytes"] == 8
