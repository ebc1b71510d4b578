"""Initial schema: runs, sessions, scalars, layer values, histograms, events, partials,
latest values and alerts (mirrors server/store/_models.py; a test compares the two).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.Column('last_step', sa.BigInteger(), nullable=True),
    sa.Column('world_size', sa.Integer(), server_default='1', nullable=False),
    sa.Column('meta', sa.Text(), server_default='{}', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_runs_name'))
    )
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('rule', sa.String(length=128), nullable=False),
    sa.Column('labels_key', sa.String(length=512), server_default='', nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('first_step', sa.BigInteger(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('fired_step', sa.BigInteger(), nullable=True),
    sa.Column('fired_at', sa.Float(), nullable=True),
    sa.Column('resolved_step', sa.BigInteger(), nullable=True),
    sa.Column('resolved_at', sa.Float(), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('value_nf', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('labels', sa.Text(), server_default='{}', nullable=False),
    sa.Column('annotations', sa.Text(), server_default='{}', nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_alerts_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_index('ix_alerts_open', 'alerts', ['run_id', 'rule', 'state'])
    op.create_index('ix_alerts_state', 'alerts', ['state'])

    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('data', sa.Text(), server_default='{}', nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_events_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    op.create_index('ix_events_run_step', 'events', ['run_id', 'step'])

    op.create_table('histograms',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('layer', sa.String(length=128), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('lo', sa.Float(), nullable=False),
    sa.Column('hi', sa.Float(), nullable=False),
    sa.Column('counts', sa.Text(), nullable=False),
    sa.Column('nonfinite', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_histograms_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_histograms'))
    )
    op.create_index('ix_histograms_series', 'histograms', ['run_id', 'metric', 'step'])
    op.create_index('ix_histograms_time', 'histograms', ['time'])

    op.create_table('latest',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('value_nf', sa.SmallInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_latest_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'metric', name=op.f('pk_latest'))
    )
    op.create_table('layer_values',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('layer', sa.String(length=128), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('value_nf', sa.SmallInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_layer_values_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_layer_values'))
    )
    op.create_index('ix_layer_values_series', 'layer_values', ['run_id', 'metric', 'layer', 'step'])
    op.create_index('ix_layer_values_time', 'layer_values', ['time'])

    op.create_table('partials',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('op', sa.String(length=16), nullable=False),
    sa.Column('num', sa.Float(), nullable=True),
    sa.Column('num_nf', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('den', sa.Float(), nullable=True),
    sa.Column('den_nf', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('world_size', sa.Integer(), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_partials_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'metric', 'step', 'rank', name=op.f('pk_partials'))
    )
    op.create_table('scalars',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=64), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('time', sa.Float(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('value_nf', sa.SmallInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_scalars_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scalars'))
    )
    op.create_index('ix_scalars_series', 'scalars', ['run_id', 'metric', 'rank', 'step'])

    op.create_table('sessions',
    sa.Column('session', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('world_size', sa.Integer(), nullable=False),
    sa.Column('high_seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('seen', sa.Text(), server_default='[]', nullable=False),
    sa.Column('meta', sa.Text(), server_default='{}', nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_sessions_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session', name=op.f('pk_sessions'))
    )
    op.create_index('ix_sessions_run', 'sessions', ['run_id'])



def downgrade() -> None:
    op.drop_index('ix_sessions_run', table_name='sessions')

    op.drop_table('sessions')
    op.drop_index('ix_scalars_series', table_name='scalars')

    op.drop_table('scalars')
    op.drop_table('partials')
    op.drop_index('ix_layer_values_time', table_name='layer_values')
    op.drop_index('ix_layer_values_series', table_name='layer_values')

    op.drop_table('layer_values')
    op.drop_table('latest')
    op.drop_index('ix_histograms_time', table_name='histograms')
    op.drop_index('ix_histograms_series', table_name='histograms')

    op.drop_table('histograms')
    op.drop_index('ix_events_run_step', table_name='events')

    op.drop_table('events')
    op.drop_index('ix_alerts_state', table_name='alerts')
    op.drop_index('ix_alerts_open', table_name='alerts')

    op.drop_table('alerts')
    op.drop_table('runs')
