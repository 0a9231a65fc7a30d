-- Long-running operations (moves today; trains, runbooks and provisioning next): one row each,
-- advanced by compare-and-swap on `version`; a lease names the control-plane replica driving it.
-- Keep in step with ../sqlite/0006_operations.sql.
CREATE TABLE operations (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    phase       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL,
    -- A cell whose capacity the operation holds (a move's target until the cut-over, its source
    -- during the rollback window): counted in the cell's load.
    reserves    TEXT,
    lease_owner TEXT,
    lease_until BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    finished_at BIGINT
);
-- At most one open operation per subject (a tenant environment, a cell, …).
CREATE UNIQUE INDEX operations_open_subject ON operations (subject) WHERE finished_at IS NULL;
CREATE INDEX operations_finished ON operations (finished_at);
CREATE INDEX operations_reserves ON operations (reserves) WHERE finished_at IS NULL;

-- A move's data in flight: numbered chunks per direction ('fwd' source → target, 'rev' back),
-- deleted once applied, and each stream's positions.
CREATE TABLE move_chunks (
    move_id    TEXT NOT NULL,
    dir        TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (move_id, dir, seq)
);

CREATE TABLE move_streams (
    move_id    TEXT NOT NULL,
    dir        TEXT NOT NULL,
    state      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (move_id, dir)
);

-- What each side of a move reported (capture installed, fenced at, cleaned …).
CREATE TABLE move_sides (
    move_id     TEXT NOT NULL,
    cell        TEXT NOT NULL,
    report      TEXT NOT NULL,
    reported_at BIGINT NOT NULL,
    PRIMARY KEY (move_id, cell)
);

-- Edge routers as seen on their watches: the table version each acknowledged, and when.
CREATE TABLE routers (
    id            TEXT PRIMARY KEY,
    acked_version BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    first_seen    BIGINT NOT NULL
);
