"""Alembic migration environment for the spikewatch store."""
