"""Names that look like other names (protocol 1.2): the Unicode data behind the rules.

Two things the 1.2 rules need are not in Python's ``unicodedata``: the property
Default_Ignorable_Code_Point (characters that render as nothing, such as U+034F
COMBINING GRAPHEME JOINER, the variation selectors, the Hangul fillers) and the
confusable *skeleton* of Unicode Technical Standard #39, section 4 (``alice``
spelt with a Cyrillic U+0430 for its ``a`` has the skeleton ``alice``). Both come from
ICU, the reference implementation of UTS #39, through PyICU's ``icu`` module:
``SpoofChecker.getSkeleton`` and ``Char.hasBinaryProperty``. No table here is
written by hand; a new ICU brings the new Unicode data with it.

The distribution is ``icukit-pyicu``, which builds ICU into the wheel: PyICU
proper compiles against the system's ICU (a compiler, ``libicu-dev``, and
minutes of build on every new machine), and Debian 12's ICU 72 carries Unicode
15.0 data, while the wheel carries the current ICU (78, Unicode 17). The module
is PyICU's own, so moving to the ``PyICU`` distribution is a change of one line
in ``pyproject.toml``.

What stays with ``unicodedata``: NFC/NFKC, case folding and general categories
(the 1.1 rules use them already).

A skeleton depends on the Unicode data it was computed with: keys stored by one
ICU version are compared with keys computed by the next. Confusables data rarely
changes for letters people type; docs/protocol.md says what an upgrade means.
"""

from __future__ import annotations

import hashlib
import unicodedata
from functools import cache

import icu

BRAILLE_PATTERN_BLANK = "\u2800"
MAX_MARKS_IN_A_ROW = 3

UNICODE_VERSION: str = icu.UNICODE_VERSION
"""The version of the Unicode data the skeletons come from (ICU's)."""


@cache
def _spoof_checker() -> icu.SpoofChecker:
    return icu.SpoofChecker()


def is_default_ignorable(char: str) -> bool:
    """Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt)."""
    return bool(icu.Char.hasBinaryProperty(ord(char), icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT))


def is_mark(char: str) -> bool:
    """A combining mark: general category M (Mn, Mc or Me)."""
    return unicodedata.category(char).startswith("M")


def _is_base(char: str) -> bool:
    """What a combining mark may follow: a letter (L*) or a decimal digit (Nd)."""
    category = unicodedata.category(char)
    return category.startswith("L") or category == "Nd"


def lookalike_problem(name: str) -> str | None:
    """What the 1.2 rules refuse in ``name`` (already NFC), said for a person; None if
    nothing. Default-ignorable code points, U+2800, a combining mark that does not
    follow a letter or digit, more than ``MAX_MARKS_IN_A_ROW`` marks in a row."""
    run = 0
    base = False
    for char in name:
        code = f"U+{ord(char):04X}"
        if is_default_ignorable(char):
            return f"must not contain invisible characters (found {code})"
        if char == BRAILLE_PATTERN_BLANK:
            return f"must not contain U+2800 BRAILLE PATTERN BLANK (found {code})"
        if is_mark(char):
            if not base:
                return f"a combining mark must follow a letter or digit (found {code})"
            run += 1
            if run > MAX_MARKS_IN_A_ROW:
                return (
                    f"must not have more than {MAX_MARKS_IN_A_ROW} combining marks in a row"
                    f" (found {code})"
                )
        else:
            run = 0
            base = _is_base(char)
    return None


def folded(name: str) -> str:
    """The NFKC case-folded form: NFKC, case folding, NFKC again (folding can
    un-normalise, and compatibility forms such as fullwidth U+FF41 fold to ``a``)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def skeleton(text: str) -> str:
    """The UTS #39 confusable skeleton of ``text`` (ICU's implementation)."""
    return str(_spoof_checker().getSkeleton(0, text))


def lookalike_key(name: str) -> bytes:
    """The key two names share when one looks like the other: the SHA-256 of the
    skeleton of the NFKC case-folded form. Equal folded forms give equal skeletons, so
    this one key covers both halves of the protocol's rule. A digest because a
    skeleton can be many times longer than the name (NFKC and the confusables
    mapping both expand), and an index wants a short, fixed-size key."""
    return hashlib.sha256(skeleton(folded(name)).encode("utf-8", "surrogatepass")).digest()
