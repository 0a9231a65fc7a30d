-- Release trains (SPEC §8). Keep in step with ../sqlite/0007_trains.sql.

-- Fleet-wide facts trains read: whether the line is stopped (and why), how far contract
-- migrations have been released. One row per key, JSON values.
CREATE TABLE fleet_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Fleet feature flags: a value for a target (tenants, cells, a percentage, or everyone); a
-- killed flag is false for every tenant.
CREATE TABLE fleet_flags (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    target     TEXT NOT NULL,
    killed     BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- How far a cell's migration stream goes: the newest migration any release assigned to it
-- needs (never lowered: expand migrations stay when a cell rolls back). NULL: the whole stream
-- (cells whose releases declare no migrations).
ALTER TABLE cells ADD COLUMN migrations_up_to BIGINT;
