"""The SQL schema (SQLAlchemy Core tables). Migrations in `migrations/versions` create the same.

Every float that may be non-finite has a companion `*_nf` marker column (see `_codec`).
Global scalars combined from all ranks' partial sums are stored with rank -1.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
Id = BigInteger().with_variant(Integer(), "sqlite")


def _run_fk() -> Column[int]:
    return Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)


def _sample(*layer: Column[str]) -> tuple[Column[Any], ...]:
    """The leading columns of a per-step sample table: id, run, metric[, layer], rank, step,
    time (each table gets its own Column objects)."""
    return (Column("id", Id, primary_key=True, autoincrement=True), _run_fk(),
            Column("metric", String(64), nullable=False), *layer,
            Column("rank", Integer, nullable=False), Column("step", BigInteger, nullable=False),
            Column("time", Float, nullable=False))


def _value() -> tuple[Column[Any], ...]:
    """A float value with its non-finite marker (`store._codec`)."""
    return (Column("value", Float, nullable=True),
            Column("value_nf", SmallInteger, nullable=False, server_default="0"))


runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("last_step", BigInteger, nullable=True),
    Column("world_size", Integer, nullable=False, server_default="1"),
    Column("meta", Text, nullable=False, server_default="{}"),
)

sessions = Table(
    "sessions", metadata,
    Column("session", String(32), primary_key=True),
    _run_fk(),
    Column("rank", Integer, nullable=False),
    Column("world_size", Integer, nullable=False),
    Column("high_seq", BigInteger, nullable=False, server_default="0"),  # highest contiguous seq
    Column("seen", Text, nullable=False, server_default="[]"),  # JSON list of seqs > high_seq
    Column("meta", Text, nullable=False, server_default="{}"),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)
Index("ix_sessions_run", sessions.c.run_id)

scalars = Table(
    "scalars", metadata,
    *_sample(),
    *_value(),
)
Index("ix_scalars_series", scalars.c.run_id, scalars.c.metric, scalars.c.rank, scalars.c.step)

layer_values = Table(
    "layer_values", metadata,
    *_sample(Column("layer", String(128), nullable=False)),
    *_value(),
)
Index("ix_layer_values_series", layer_values.c.run_id, layer_values.c.metric,
      layer_values.c.layer, layer_values.c.step)
Index("ix_layer_values_time", layer_values.c.time)

histograms = Table(
    "histograms", metadata,
    *_sample(Column("layer", String(128), nullable=False)),
    Column("lo", Float, nullable=False),
    Column("hi", Float, nullable=False),
    Column("counts", Text, nullable=False),  # JSON list of ints
    Column("nonfinite", BigInteger, nullable=False, server_default="0"),
)
Index("ix_histograms_series", histograms.c.run_id, histograms.c.metric, histograms.c.step)
Index("ix_histograms_time", histograms.c.time)

events = Table(
    "events", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _run_fk(),
    Column("rank", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("time", Float, nullable=False),
    Column("type", String(64), nullable=False),
    Column("data", Text, nullable=False, server_default="{}"),
)
Index("ix_events_run_step", events.c.run_id, events.c.step)

partials = Table(
    "partials", metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("metric", String(64), nullable=False, primary_key=True),
    Column("step", BigInteger, nullable=False, primary_key=True),
    Column("rank", Integer, nullable=False, primary_key=True),
    Column("op", String(16), nullable=False),
    Column("num", Float, nullable=True),
    Column("num_nf", SmallInteger, nullable=False, server_default="0"),
    Column("den", Float, nullable=True),
    Column("den_nf", SmallInteger, nullable=False, server_default="0"),
    Column("world_size", Integer, nullable=False),
    Column("time", Float, nullable=False),
)

alerts = Table(
    "alerts", metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _run_fk(),
    Column("rule", String(128), nullable=False),
    Column("labels_key", String(512), nullable=False, server_default=""),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("first_step", BigInteger, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("fired_step", BigInteger, nullable=True),
    Column("fired_at", Float, nullable=True),
    Column("resolved_step", BigInteger, nullable=True),
    Column("resolved_at", Float, nullable=True),
    Column("value", Float, nullable=True),
    Column("value_nf", SmallInteger, nullable=False, server_default="0"),
    Column("labels", Text, nullable=False, server_default="{}"),
    Column("annotations", Text, nullable=False, server_default="{}"),
    Column("updated_at", Float, nullable=False),
)
Index("ix_alerts_open", alerts.c.run_id, alerts.c.rule, alerts.c.state)
Index("ix_alerts_state", alerts.c.state)

latest = Table(
    "latest", metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("step", BigInteger, nullable=False),
    Column("time", Float, nullable=False),
    Column("value", Float, nullable=True),
    Column("value_nf", SmallInteger, nullable=False, server_default="0"),
)
"""The latest global value of each metric of a run (kept by the writer; read per scrape)."""
