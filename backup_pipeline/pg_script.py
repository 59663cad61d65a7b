"""A lexer for the plain SQL scripts pg_dump writes, so a restore can edit them safely.

A restore must be able to drop ownership and privileges from a dump that has them (as pg_restore's
`--no-owner --no-privileges` does) and to see the psql meta-commands a script holds. Filtering
lines is unsafe: a dollar-quoted function body may hold the line `GRANT SELECT ON t TO r;`. So the
script is split the way psql splits it: a `;` ends a statement only outside comments, strings,
quoted identifiers and dollar quotes, outside parentheses (a rule's `DO (...; ...)`), and outside
a SQL-standard body (`CREATE FUNCTION ... BEGIN ATOMIC ...; END;`), using psql's own heuristic.

Assumes what pg_dump sets: `standard_conforming_strings = on` (a backslash is literal in '...').
Offsets are indexes into the `str`, not bytes. Stdlib only: no Dagster here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENT = "A-Za-z_\x80-\U0010ffff"
_TOKEN = re.compile(
    rf"""(?P<space>[ \t\n\r\f\v]+)
    | (?P<comment>--[^\n]*)
    | (?P<string>[eE]'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'?)  # E'...': backslash escapes, '' too
    | (?P<plain>'[^']*(?:''[^']*)*'?)
    | (?P<quoted>"[^"]*(?:""[^"]*)*"?)
    | (?P<dollar>\$(?:[{_IDENT}][{_IDENT}0-9]*)?\$)      # $$ or $tag$, never $1
    | (?P<word>[{_IDENT}][{_IDENT}0-9$]*)                 # a$b$c is one identifier
    | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_COMMENT_MARK = re.compile(r"/\*|\*/")
_GAP = ("space", "comment")
# The statement starts after which psql counts BEGIN/CASE/END to find where a body ends.
_ROUTINE_HEADS = (
    ("create", "function"),
    ("create", "procedure"),
    ("create", "or", "replace", "function"),
    ("create", "or", "replace", "procedure"),
)


@dataclass(frozen=True)
class Statement:
    """One SQL statement or psql meta-command, as it is in the script (`script[start:end]`)."""

    text: str
    kind: str  # "sql" or "meta"
    line: int  # 1-based line of its first character
    start: int
    end: int


def _token(script: str, pos: int) -> tuple[str, int]:
    """(kind, end) of the token at `pos`; an unterminated quote or comment runs to the end."""
    if script.startswith("/*", pos):
        depth = 0
        for mark in _COMMENT_MARK.finditer(script, pos):
            depth += 1 if mark.group() == "/*" else -1
            if depth == 0:
                return "comment", mark.end()
        return "comment", len(script)
    match = _TOKEN.match(script, pos)
    assert match is not None and match.lastgroup is not None  # `other` matches any character
    if match.lastgroup == "dollar":
        close = script.find(match.group(), match.end())
        return "dollar", len(script) if close < 0 else close + len(match.group())
    return match.lastgroup, match.end()


def _tokens(text: str) -> list[tuple[str, str]]:
    """The (kind, text) of the tokens of `text` that are neither whitespace nor comments."""
    found, pos = [], 0
    while pos < len(text):
        kind, end = _token(text, pos)
        if kind not in _GAP:
            found.append((kind, text[pos:end]))
        pos = end
    return found


def _sql_end(script: str, pos: int) -> int:
    """Where the SQL statement starting at `pos` ends: after the `;` psql would stop at.

    Without such a `;`, it ends after its last token that is not whitespace or a comment.
    """
    parens = begins = 0
    words: list[str] = []
    last = pos
    while pos < len(script):
        kind, end = _token(script, pos)
        text = script[pos:end]
        if kind not in _GAP:
            last = end
        if text == ";" and parens == begins == 0:
            return end
        if text == "(":
            parens += 1
        elif text == ")":
            parens = max(parens - 1, 0)
        elif kind == "word":
            word = text.lower()
            if len(words) < 4:
                words.append(word)
            if parens == 0 and any(tuple(words[: len(head)]) == head for head in _ROUTINE_HEADS):
                if word == "begin" or (word == "case" and begins):
                    begins += 1
                elif word == "end" and begins:
                    begins -= 1
        pos = end
    return last


def statements(script: str) -> list[Statement]:
    """The statements and meta-commands of `script`, in order, with the gaps between them skipped.

    Gaps hold only whitespace and comments; a comment inside a statement stays in its text. A
    meta-command is a backslash where a statement would start, up to its end of line (newline
    excluded). Text after the last `;` that is not whitespace or comments is returned as a final
    statement without `;`, so that nothing in the script is ever silently lost.
    """
    found: list[Statement] = []
    pos, line, counted = 0, 1, 0
    while pos < len(script):
        kind, end = _token(script, pos)
        if kind in _GAP:
            pos = end
            continue
        if script[pos] == "\\":
            newline = script.find("\n", pos)
            end, kind = (len(script) if newline < 0 else newline), "meta"
        else:
            end, kind = _sql_end(script, pos), "sql"
        line += script.count("\n", counted, pos)
        counted = pos
        found.append(Statement(script[pos:end], kind, line, pos, end))
        pos = end
    return found


def is_ownership_or_privilege(statement: Statement) -> bool:
    """Whether pg_dump wrote `statement` for ownership or privileges, which `--no-owner` drops.

    That is `GRANT`, `REVOKE`, `ALTER DEFAULT PRIVILEGES`, and any `ALTER` whose trailing clause,
    at top level, is `OWNER TO role`.
    """
    if statement.kind != "sql":
        return False
    tokens = _tokens(statement.text)
    if tokens[-1:] == [("other", ";")]:
        tokens.pop()
    words = [text.upper() if kind == "word" else text for kind, text in tokens]
    if words[:1] in (["GRANT"], ["REVOKE"]) or words[:3] == ["ALTER", "DEFAULT", "PRIVILEGES"]:
        return True
    return (len(words) >= 5 and words[0] == "ALTER" and words[-3:-1] == ["OWNER", "TO"]
            and tokens[-1][0] in ("word", "quoted"))


def without_ownership(script: str) -> str:
    """`script` without its ownership and privilege statements; every other byte is kept."""
    kept, pos = [], 0
    for statement in statements(script):
        if is_ownership_or_privilege(statement):
            kept.append(script[pos : statement.start])
            pos = statement.end
    kept.append(script[pos:])
    return "".join(kept)
