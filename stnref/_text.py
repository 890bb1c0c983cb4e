r"""User-supplied text and numbers in one-line messages.

A path, an id or an argument may hold a newline, a terminal escape or, from an
undecodable file name, a lone surrogate that no terminal can print: :func:`shown`
writes such characters as Python escapes, so every message stays one line.  A long
text or a number of many digits is cut, saying how long it was.  No dependencies:
the command line imports this before anything heavy.
"""

from __future__ import annotations

SHOWN_CHARS = 200   # user text longer than this is cut in a message
SHOWN_DIGITS = 30   # an int of more digits is shown by its first digits and its length


def shown(text, limit=SHOWN_CHARS):
    r"""``text`` for a one-line message: non-printable characters escaped, at most ``limit`` kept.

    Parameters
    ----------
    text : object
        Shown as ``str(text)``.
    limit : int or None
        Characters kept; None keeps all.

    Returns
    -------
    str

    Examples
    --------
    >>> print(shown("runs/a\nb\x1b[2J"))
    runs/a\nb\x1b[2J
    >>> shown("x" * 500, limit=3)
    'xxx... (500 characters)'
    """
    text = str(text)
    cut = limit is not None and len(text) > limit
    kept = text[:limit] if cut else text
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in kept)
    return f"{escaped}... ({len(text)} characters)" if cut else escaped


def int_shown(value):
    """An int for a message: whole if short, else its sign, first digits and number of digits.

    Examples
    --------
    >>> int_shown(10**400)
    '10000000... (401 digits)'
    """
    digits = str(abs(value))
    if len(digits) <= SHOWN_DIGITS:
        return str(value)
    return f"{'-' if value < 0 else ''}{digits[:8]}... ({len(digits)} digits)"
