"""`spikewatch keygen DIR`: the files that turn authentication on (docs/deploy.md).

Writes into DIR, by default all of them (`--server`, `--agent [NAME]`, `--tokens` pick some):

    server.key_secret   the server's CURVE key pair  -> SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE
    server.key          its public key                -> the agents' SPIKEWATCH_SERVER_KEY
    NAME.key_secret     an agent's key pair           -> the agent's SPIKEWATCH_CLIENT_KEY_FILE
    NAME.key            its public key
    allowed_agents      the agents' public keys       -> SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE
    api_tokens          an admin and a read token     -> SPIKEWATCH_AUTH__API_TOKENS_FILE
    admin.token, read.token   each token alone        -> SPIKEWATCH_API_TOKEN, Prometheus

Key files are ZeroMQ certificates (`zmq.auth.load_certificate` reads them). Secret files are
created with mode 0600 (0640 with `--group-readable`, for containers that read them through a
shared group); no existing file is replaced without `--force`, and then atomically. A new agent
key is added to `allowed_agents`; `--force` on an agent replaces its old key there.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth

SERVER: Final = "server"
ALLOWED: Final = "allowed_agents"
TOKENS: Final = "api_tokens"
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED: Final = frozenset({SERVER, "admin", "read"})


class KeygenError(ValueError):
    """Files that cannot be written as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class _File:
    name: str
    text: str
    secret: bool


def _certificate(public: bytes, secret: bytes | None, whose: str) -> str:
    """A ZeroMQ certificate (the format of zmq.auth.create_certificates)."""
    kind = "Secret" if secret is not None else "Public"
    lines = [f"#   ****  Generated on {time.strftime('%Y-%m-%d %H:%M:%S')} by spikewatch keygen"
             f" ({whose})  ****",
             f"#   ZeroMQ CURVE {kind} Certificate",
             "#   Exchange securely, or use a secure mechanism to verify the contents"
             if secret is None else "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its "
             "permissions.",
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _key_pair(name: str) -> tuple[str, list[_File]]:
    """A fresh key pair as its secret and public certificate files; and its public key."""
    public, secret = zmq.curve_keypair()
    return public.decode(), [_File(f"{name}.key_secret", _certificate(public, secret, name), True),
                             _File(f"{name}.key", _certificate(public, None, name), False)]


def public_key(path: Path) -> str | None:
    """The public key of a certificate file, or None when there is none or it is unreadable."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError):
        return None
    return public.decode() if public else None


def _allowed(out: Path, add: str, replace: str | None) -> _File:
    """`allowed_agents` with `add` and without `replace` (the agent's previous key)."""
    path = out / ALLOWED
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [
        "# Public CURVE keys of the agents the server accepts, one per line (spikewatch keygen)."]
    kept = [ln for ln in lines if ln.strip() not in (add, replace)]
    return _File(ALLOWED, "\n".join([*kept, add]) + "\n", False)


def _tokens() -> list[_File]:
    admin, read = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    return [_File(TOKENS, f"# TOKEN SCOPE (spikewatch keygen)\n{admin} admin\n{read} read\n", True),
            _File("admin.token", admin + "\n", True), _File("read.token", read + "\n", True)]


def plan(out: Path, *, server: bool, agent: str | None, tokens: bool) -> list[_File]:
    """The files to write into `out`."""
    if agent is not None and (not _NAME_RE.match(agent) or agent in _RESERVED):
        raise KeygenError(f"agent name {agent!r}: 1-64 letters, digits and _.- starting with a "
                          f"letter or digit, not {', '.join(sorted(_RESERVED))}")
    files: list[_File] = []
    if server:
        files += _key_pair(SERVER)[1]
    if agent is not None:
        key, pair = _key_pair(agent)
        old = public_key(out / f"{agent}.key") or public_key(out / f"{agent}.key_secret")
        files += [*pair, _allowed(out, key, old)]
    if tokens:
        files += _tokens()
    return files


def _write(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` with exactly `mode` (not the umask's), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write(out: Path, files: list[_File], *, force: bool, group_readable: bool) -> None:
    """Write `files` into `out` (created 0700/0750); refuses to replace any without `force`."""
    clash = [f.name for f in files if f.name != ALLOWED and (out / f.name).exists()]
    if clash and not force:
        raise KeygenError(f"{out} already has {', '.join(clash)}: pass --force to replace "
                          "(agents and servers using the old ones are then refused)")
    try:
        out.mkdir(mode=0o750 if group_readable else 0o700, parents=True, exist_ok=True)
        for f in files:
            _write(out / f.name, f.text, (0o640 if group_readable else 0o600) if f.secret
                   else 0o644)
    except OSError as e:
        raise KeygenError(f"cannot write into {out}: {e.strerror or e}") from None


def settings(out: Path, agent: str | None) -> str:
    """The environment variables that use what `out` holds, for the server, agent and CLI, in
    shell syntax (values quoted where the shell needs it)."""
    d = out.resolve()

    def q(value: object) -> str:
        return shlex.quote(str(value))

    server = []
    if (d / f"{SERVER}.key_secret").is_file():
        server.append(f"  SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE={q(d / 'server.key_secret')}")
        if (d / ALLOWED).is_file():
            server.append(f"  SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE={q(d / ALLOWED)}")
    if (d / TOKENS).is_file():
        server.append(f"  SPIKEWATCH_AUTH__API_TOKENS_FILE={q(d / TOKENS)}")
    lines = ["server (environment, or the auth: section of its config file):", *server] if server \
        else []
    if agent is not None:
        server_key = public_key(d / f"{SERVER}.key") or "<the server's public key, server.key>"
        lines += [f"agent {agent!r} (the training job's environment):",
                  f"  SPIKEWATCH_SERVER_KEY={q(server_key)}",
                  f"  SPIKEWATCH_CLIENT_KEY_FILE={q(d / f'{agent}.key_secret')}"]
    if (d / "read.token").is_file():
        lines += ["CLI and HTTP clients (admin.token also allows POST /api/v1/rules/reload):",
                  f'  SPIKEWATCH_API_TOKEN="$(cat {q(d / "read.token")})"']
    return "\n".join([*lines, "Restart the server to load new keys, allowed agents or tokens."])


def main(args: argparse.Namespace) -> int:
    """Run `spikewatch keygen`; 0 on success, 2 when nothing could be written as asked."""
    if args.dir is not None and args.out is not None and args.dir != args.out:
        print("spikewatch keygen: give the directory once (DIR or --out DIR)", file=sys.stderr)
        return 2
    out = args.dir or args.out
    if out is None:
        print("spikewatch keygen: give the directory: spikewatch keygen DIR", file=sys.stderr)
        return 2
    every = not (args.server or args.agent is not None or args.tokens)
    agent = "agent" if every else args.agent
    try:
        files = plan(out, server=every or args.server, agent=agent, tokens=every or args.tokens)
        write(out, files, force=args.force, group_readable=args.group_readable)
    except KeygenError as e:
        print(f"spikewatch keygen: {e}", file=sys.stderr)
        return 2
    mode = "0640" if args.group_readable else "0600"
    print(f"wrote into {out.resolve()}: " + ", ".join(
        f"{f.name} ({mode})" if f.secret else f.name for f in files))
    print(settings(out, agent))
    return 0


def register(subparsers: Any) -> None:
    """Add `spikewatch keygen DIR [--server] [--agent [NAME]] [--tokens] [--force]`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "keygen", help="CURVE key pairs and API tokens for authentication",
        description="Write the server's and an agent's CURVE key pairs, the allow-list of agent "
        "keys and API tokens into DIR (all of them unless --server, --agent or --tokens picks), "
        "secret files with mode 0600, and print the settings that use them.")
    p.add_argument("dir", nargs="?", type=Path, default=None, metavar="DIR",
                   help="where to write (created if missing)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="the same as DIR")
    p.add_argument("--server", action="store_true", help="the server's key pair")
    p.add_argument("--agent", nargs="?", const="agent", default=None, metavar="NAME",
                   help="an agent's key pair NAME.key_secret (default name: agent), added to "
                        "allowed_agents")
    p.add_argument("--tokens", action="store_true",
                   help="an admin and a read API token (api_tokens, admin.token, read.token)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.add_argument("--group-readable", action="store_true",
                   help="secret files 0640 instead of 0600 (containers reading them through a "
                        "shared group, see deploy/compose)")
    p.set_defaults(func=main)
