-- The read-only role Grafana's "spikewatch store" datasource logs in as
-- (provisioning/datasources/postgres.yml). Run it as the store's owner once `spikewatch serve` has
-- created the tables (it migrates the database when it starts), and again after an upgrade that
-- adds tables the dashboards read; it is idempotent and sets the password each time:
--
--   psql "postgresql://spikewatch@HOST:5432/spikewatch" \
--        -v reader_password="$GRAFANA_DB_PASSWORD" -f deploy/grafana/store-reader.sql
--
-- The role reads the four tables the dashboards query and nothing else; its sessions are
-- read-only by default and a statement is cancelled after 30 s.
\set ON_ERROR_STOP on

SELECT 'CREATE ROLE spikewatch_grafana'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'spikewatch_grafana') \gexec

ALTER ROLE spikewatch_grafana WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    PASSWORD :'reader_password';
ALTER ROLE spikewatch_grafana SET default_transaction_read_only = on;
ALTER ROLE spikewatch_grafana SET statement_timeout = '30s';

GRANT CONNECT ON DATABASE :"DBNAME" TO spikewatch_grafana;
GRANT USAGE ON SCHEMA public TO spikewatch_grafana;
GRANT SELECT ON runs, scalars, events, alerts TO spikewatch_grafana;
