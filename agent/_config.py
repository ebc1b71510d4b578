"""Agent configuration: keyword arguments of `attach`, falling back to SPIKEWATCH_* variables.

`AgentSettings` (pydantic-settings) has one field per variable (SPIKEWATCH_RUN, _ENDPOINT,
_PROFILE, _OVERHEAD_BUDGET, _SPOOL_DIR, _CURVATURE, _SAMPLE_FRACTION, _DDP_RANKS, _DISABLED,
_SERVER_KEY, _CLIENT_KEY, _CLIENT_KEY_FILE, _LOCAL_DIR). The endpoint ``local`` stands for a
server started beside the job (`agent/_local_server.py`) in _LOCAL_DIR. An argument given to
`attach` wins over the environment; the environment wins over the default; a blank variable
counts as unset. Every bad value raises `ConfigError` naming the argument (``profile=``) or the
variable (``SPIKEWATCH_PROFILE``) and the value (never a key's).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from spikewatch.agent._local_server import DEFAULT_DIR, LOCAL
from spikewatch.agent._profiles import PROFILES
from spikewatch.protocol import wire

DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5557"
DEFAULT_BUDGET: Final = 0.01
CURVATURE_CHOICES: Final = ("auto", "exact", "fd", "secant")
DDP_CHOICES: Final = ("all", "rank0")
_CHOICES: Final = {"profile": tuple(PROFILES), "curvature": CURVATURE_CHOICES,
                   "ddp_ranks": DDP_CHOICES}
_Z85_KEY: Final = r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$"
_Z85_KEY_RE: Final = re.compile(_Z85_KEY)
_KEY_HELP: Final = "expected a 40-character Z85 CURVE key"
_ARGUMENT: Final = {"client_key": "client_secret_key", "disabled": "enabled"}  # else the same
_SECRET: Final = frozenset({"server_key", "client_key"})  # values never shown in errors


class ConfigError(ValueError):
    """An invalid agent option; the message names the option and its source."""


@dataclass(frozen=True, slots=True)
class Config:
    """The resolved options of one attached monitor."""

    run: str
    endpoint: str
    profile: str
    overhead_budget: float
    spool_dir: Path | None
    curvature: str
    sample_fraction: float | None  # of the coordinates the two-secant estimator samples
    ddp_ranks: str
    enabled: bool
    server_key: str | None
    client_secret_key: str | None
    client_public_key: str | None
    local_dir: Path = DEFAULT_DIR  # the local server's folder, for endpoint="local"


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("spikewatch_agent_environ",
                                                            default=None)


class _Environment(EnvSettingsSource):
    """The variables of the mapping given to `resolve` (else os.environ), stripped; blank ones
    count as unset."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _ENVIRON.get()
        environ = os.environ if given is None else given
        return {k.lower(): v.strip() for k, v in environ.items() if v.strip()}


def _default_run() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


class AgentSettings(BaseSettings):
    """The SPIKEWATCH_* variables; a field's description is what its error message says."""

    model_config = SettingsConfigDict(env_prefix="SPIKEWATCH_", extra="forbid",
                                      coerce_numbers_to_str=True)

    run: str = Field(default_factory=_default_run, pattern=wire.RUN_RE.pattern,
                     description="a run name is 1-128 characters of letters, digits and _.:- "
                                 "starting with a letter or digit")
    endpoint: str = Field(default=DEFAULT_ENDPOINT,
                          pattern=rf"^((tcp|ipc|inproc)://\S+|{LOCAL})$",
                          description="expected a ZeroMQ endpoint such as tcp://127.0.0.1:5557, "
                                      f"or {LOCAL!r} (a server started beside the job)")
    profile: str = Field(default="default",
                         description=f"choose one of {', '.join(_CHOICES['profile'])}")
    overhead_budget: float = Field(default=DEFAULT_BUDGET, gt=0.0,
                                   description="a positive fraction of step time, e.g. 0.01 "
                                               "(inf: never stretch cadences)")
    spool_dir: Path | None = Field(default=None, description="a directory (created if missing)")
    curvature: str = Field(default="auto",
                           description=f"choose one of {', '.join(CURVATURE_CHOICES)}")
    sample_fraction: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="a fraction of the coordinates in (0, 1] (unset: 1 % of the model's bytes, "
                    "at least 512 coordinates)")
    ddp_ranks: str = Field(default="all", description=f"choose one of {', '.join(DDP_CHOICES)}")
    disabled: bool = Field(default=False, description="use 1/true/yes or 0/false/no")
    server_key: str | None = Field(default=None, pattern=_Z85_KEY, description=_KEY_HELP)
    client_key: str | None = Field(default=None, pattern=_Z85_KEY, description=_KEY_HELP)
    client_key_file: Path | None = Field(
        default=None, description="a ZeroMQ secret certificate file (zmq.auth)")
    local_dir: Path = Field(default=DEFAULT_DIR, description="a directory (created if missing)")

    @field_validator("profile", "curvature", "ddp_ranks", mode="before")
    @classmethod
    def _one_of(cls, value: object, info: ValidationInfo) -> str:
        chosen = str(value).lower()
        if chosen not in _CHOICES[str(info.field_name)]:
            raise ValueError(cls.model_fields[str(info.field_name)].description)
        return chosen

    @field_validator("spool_dir", "local_dir")
    @classmethod
    def _directory(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError("exists and is not a directory")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments first, then the variables (`_Environment`); no .env or secret files."""
        return init_settings, _Environment(settings_cls)


def _config_error(error: ValidationError, given: Mapping[str, object]) -> ConfigError:
    """One message naming, for each bad value, the argument or variable and the value."""
    problems = []
    for err in error.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        where = f"{_ARGUMENT.get(name, name)}=" if name in given else f"SPIKEWATCH_{name.upper()}"
        field = AgentSettings.model_fields.get(name)
        detail = (str(err["ctx"]["error"]) if err["type"] == "value_error"
                  else (field.description if field is not None else None) or err["msg"])
        shown = "" if name in _SECRET else f" {_shown(err['input'])}"
        problems.append(f"{where}{shown}: {detail}")
    return ConfigError("; ".join(problems))


def _shown(value: Any) -> str:
    return repr(os.fspath(value) if isinstance(value, os.PathLike) else value)


def _check_key(key: str, what: str) -> str:
    if not _Z85_KEY_RE.match(key):
        raise ConfigError(f"{what}: {_KEY_HELP}")
    return key


def _read_client_key_file(path: Path, what: str) -> tuple[str, str]:
    """(secret, public) from a ZeroMQ certificate file written by zmq.auth.create_certificates."""
    import zmq.auth

    if not path.is_file():
        raise ConfigError(f"{what}: no such file {str(path)!r}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: {str(path)!r} is not a ZeroMQ certificate ({e})") from None
    if secret is None:
        raise ConfigError(f"{what}: {str(path)!r} holds no secret-key (use the .key_secret file)")
    return (_check_key(secret.decode("ascii", "replace"), what),
            _check_key(public.decode("ascii", "replace"), what))


def _public_from_secret(secret: str, what: str) -> str:
    import zmq

    try:
        return str(zmq.curve_public(secret.encode()).decode())
    except Exception as e:  # zmq raises ZMQError / ValueError for bad keys
        raise ConfigError(f"{what}: not a valid CURVE secret key ({e})") from None


def _client_keys(settings: AgentSettings, secret: str | None,
                 public: str | None) -> tuple[str | None, str | None]:
    """The client's CURVE pair: the arguments, else SPIKEWATCH_CLIENT_KEY(_FILE); the public
    key derived from the secret one where it is not given."""
    if secret is None:
        if settings.client_key is not None and settings.client_key_file is not None:
            raise ConfigError("set SPIKEWATCH_CLIENT_KEY or SPIKEWATCH_CLIENT_KEY_FILE, not both")
        secret = settings.client_key
        if settings.client_key_file is not None:
            secret, public = _read_client_key_file(settings.client_key_file,
                                                   "SPIKEWATCH_CLIENT_KEY_FILE")
    else:
        secret = _check_key(secret, "client_secret_key=")
    if public is not None:
        public = _check_key(public, "client_public_key=")
    if secret is not None and public is None:
        public = _public_from_secret(secret, "client key")
    return secret, public


def resolve(
    *,
    run: str | None = None,
    endpoint: str | None = None,
    profile: str | None = None,
    overhead_budget: float | str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    curvature: str | None = None,
    sample_fraction: float | str | None = None,
    ddp_ranks: str | None = None,
    enabled: bool | None = None,
    server_key: str | None = None,
    client_secret_key: str | None = None,
    client_public_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Merge arguments over SPIKEWATCH_* environment variables (`env`, default os.environ) over
    defaults, and validate."""
    given: dict[str, Any] = {
        k: v for k, v in (("run", run), ("endpoint", endpoint), ("profile", profile),
                          ("overhead_budget", overhead_budget), ("spool_dir", spool_dir),
                          ("curvature", curvature), ("sample_fraction", sample_fraction),
                          ("ddp_ranks", ddp_ranks), ("server_key", server_key),
                          ("client_key", client_secret_key))
        if v is not None}
    if enabled is not None:
        given["disabled"] = not enabled
    token = _ENVIRON.set(env)
    try:
        settings = AgentSettings(**given)
    except ValidationError as e:
        raise _config_error(e, given) from None
    finally:
        _ENVIRON.reset(token)
    secret, public = _client_keys(settings, client_secret_key, client_public_key)
    if (secret is None) != (settings.server_key is None):
        raise ConfigError("CURVE needs both the server's public key (server_key / "
                          "SPIKEWATCH_SERVER_KEY) and a client key (client_secret_key / "
                          "SPIKEWATCH_CLIENT_KEY[_FILE]), or neither")
    if settings.endpoint == LOCAL and settings.server_key is not None:
        raise ConfigError(f"endpoint={LOCAL!r} starts a server without CURVE on 127.0.0.1: "
                          "drop server_key / SPIKEWATCH_SERVER_KEY and the client key")
    return Config(run=settings.run, endpoint=settings.endpoint, profile=settings.profile,
                  overhead_budget=settings.overhead_budget, spool_dir=settings.spool_dir,
                  curvature=settings.curvature, sample_fraction=settings.sample_fraction,
                  ddp_ranks=settings.ddp_ranks, enabled=not settings.disabled,
                  server_key=settings.server_key, client_secret_key=secret,
                  client_public_key=public, local_dir=settings.local_dir)
