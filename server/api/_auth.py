"""Bearer-token auth with two scopes: ``read`` (GET everything) and ``admin`` (also changes).

Tokens come from a file of ``<token> <scope>`` lines (``#`` comments and blank lines allowed). Auth
is off when no token file is configured. Presented tokens are compared with `hmac.compare_digest`
against every configured token (no early exit); tokens never appear in errors or logs.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

MIN_TOKEN_LEN: Final = 16
MAX_TOKEN_LEN: Final = 512


class Scope(StrEnum):
    READ = "read"
    ADMIN = "admin"  # implies read

    def allows(self, needed: Scope) -> bool:
        """Whether a token of this scope may call an endpoint that needs `needed`."""
        return self is Scope.ADMIN or needed is Scope.READ


class TokenFileError(ValueError):
    """The token file is malformed; the message names the line, never the token."""


@dataclass(frozen=True, slots=True)
class Tokens:
    """The configured tokens and their scopes."""

    entries: tuple[tuple[bytes, Scope], ...]

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<tokens>") -> Tokens:
        """Parse ``token scope`` lines. Raises `TokenFileError` with the line number."""
        entries: list[tuple[bytes, Scope]] = []
        for n, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TokenFileError(f"{source}:{n}: expected '<token> <scope>'")
            token, scope = parts
            if not MIN_TOKEN_LEN <= len(token) <= MAX_TOKEN_LEN or not token.isascii():
                raise TokenFileError(
                    f"{source}:{n}: a token must be {MIN_TOKEN_LEN}..{MAX_TOKEN_LEN} ASCII chars")
            try:
                entries.append((token.encode(), Scope(scope)))
            except ValueError:
                raise TokenFileError(
                    f"{source}:{n}: scope must be one of {[s.value for s in Scope]}") from None
        if not entries:
            raise TokenFileError(f"{source}: no tokens (remove the setting to disable auth)")
        return cls(tuple(entries))

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        """Read a token file (see module docstring)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenFileError(f"{p}: cannot read token file: {type(e).__name__}") from None
        return cls.from_lines(text.splitlines(), str(p))

    def scope_of(self, presented: str) -> Scope | None:
        """The scope of a presented token, or None. Constant-time per configured token."""
        given = presented.encode("utf-8", "surrogateescape")
        found: Scope | None = None
        for token, scope in self.entries:
            if hmac.compare_digest(token, given) and (found is None or scope is Scope.ADMIN):
                found = scope
        return found

    def __repr__(self) -> str:
        return f"Tokens(<{len(self.entries)} tokens>)"
