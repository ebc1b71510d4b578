"""Server settings: defaults < config file (YAML or TOML, `--config`) < environment
(``SPIKEWATCH_*``, nested with ``__``) < command-line flags.

Example config file (YAML)::

    db: postgresql+psycopg://spikewatch@db:5432/spikewatch
    zmq: tcp://0.0.0.0:5557
    http_port: 8000
    rules: /etc/spikewatch/rules.yaml
    alertmanager_urls: [http://alertmanager:9093]
    retention: {layers: {keep_every: 10, thin_after_days: 7}}
    auth: {curve_secret_key_file: /etc/spikewatch/server.key_secret}

A wrong file or value raises `ConfigError` naming the field and where it came from.
"""

from __future__ import annotations

import contextvars
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from spikewatch.server._cardinality import Limits
from spikewatch.server.store import KindPolicy, RetentionPolicy

_FILE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("_FILE", default=None)


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KindRetention(_Model):
    """Ageing of one kind of series: keep one row per `keep_every` steps after `thin_after_days`,
    delete everything after `drop_after_days` (None = never)."""

    keep_every: int = Field(default=1, ge=1)
    thin_after_days: float | None = Field(default=None, ge=0)
    drop_after_days: float | None = Field(default=None, ge=0)


class LayerRetention(KindRetention):
    """Per-layer series: thinned to every 10th step after a week by default."""

    keep_every: int = Field(default=10, ge=1)
    thin_after_days: float | None = Field(default=7.0, ge=0)


class HistogramRetention(KindRetention):
    """Histograms: thinned to every 10th step after three days by default."""

    keep_every: int = Field(default=10, ge=1)
    thin_after_days: float | None = Field(default=3.0, ge=0)


class RetentionSettings(_Model):
    """Retention/downsampling per series kind, applied every `interval_s` by the daemon."""

    interval_s: float = Field(default=3600.0, gt=0)
    scalars: KindRetention = KindRetention()
    layers: LayerRetention = LayerRetention()
    histograms: HistogramRetention = HistogramRetention()
    events: KindRetention = KindRetention()
    partials_max_age_hours: float = Field(default=24.0, gt=0)

    def policy(self) -> RetentionPolicy:
        def k(x: KindRetention) -> KindPolicy:
            return KindPolicy(x.keep_every, x.thin_after_days, x.drop_after_days)
        return RetentionPolicy(k(self.scalars), k(self.layers), k(self.histograms),
                               k(self.events), self.partials_max_age_hours)


class IngestSettings(_Model):
    """Collector and writer tuning."""

    queue_size: int = Field(default=10000, ge=1)  # messages waiting for the writer
    batch_max_messages: int = Field(default=512, ge=1)  # messages per write transaction
    batch_max_wait_s: float = Field(default=0.005, ge=0)  # gathering time per transaction
    max_frame_bytes: int = Field(default=1 << 20, ge=1024)  # larger: nack "oversize"
    # cardinality (server._cardinality): new runs beyond max_runs are nacked "too_many"; metric
    # and layer names beyond the per-run limits are left out; both counted as refused series
    max_runs: int = Field(default=10_000, ge=1)
    max_metrics_per_run: int = Field(default=512, ge=1)
    max_layers_per_run: int = Field(default=8192, ge=1)
    max_names: int = Field(default=2_000_000, ge=1)  # metric + layer names over all runs

    def limits(self) -> Limits:
        """The cardinality limits for the collector."""
        return Limits(self.max_runs, self.max_metrics_per_run, self.max_layers_per_run,
                      self.max_names)


class AuthSettings(_Model):
    """Authentication (issue 7).

    `curve_secret_key_file`: the server's CURVE key pair (a zmq.auth secret certificate file);
    with it the collector requires CURVE. `curve_allowed_clients_file`: one Z85 client public key
    per line (``#`` comments); when set, other agents are refused and counted.
    `api_tokens_file`: ``TOKEN SCOPE`` lines (scope read|admin) for the HTTP API's bearer tokens.
    """

    curve_secret_key_file: Path | None = None
    curve_allowed_clients_file: Path | None = None
    api_tokens_file: Path | None = None


class _FileSource(PydanticBaseSettingsSource):
    """Values from the config file given to `load_settings`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_FILE.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE.get() or {})


class Settings(BaseSettings):
    """Everything `spikewatch serve` can be told."""

    model_config = SettingsConfigDict(env_prefix="SPIKEWATCH_", env_nested_delimiter="__",
                                      extra="forbid")

    db: str = "sqlite:///spikewatch.db"
    zmq: str = "tcp://127.0.0.1:5557"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    rules: Path | None = None  # YAML rule file; None = the built-in default pack
    alertmanager_urls: list[str] = []
    webhook_urls: list[str] = []
    active_window_s: float = Field(default=900.0, gt=0)  # a run seen within it is active
    log_level: str = "INFO"
    retention: RetentionSettings = RetentionSettings()
    ingest: IngestSettings = IngestSettings()
    auth: AuthSettings = AuthSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML (.yaml/.yml) or TOML (.toml) config file into a mapping."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid "
                          f"{'TOML' if path.suffix == '.toml' else 'YAML'}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, `config_file`, the environment and `overrides` (None ignored)."""
    data = read_config_file(config_file) if config_file is not None else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    token = _FILE.set(data)
    try:
        return Settings(**given)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            top = str(err["loc"][0]) if err["loc"] else ""
            where = ("command line" if top in given else
                     f"config file {config_file}" if top in data else
                     "environment (SPIKEWATCH_*)")
            problems.append(f"setting '{loc}' from {where}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    finally:
        _FILE.reset(token)
