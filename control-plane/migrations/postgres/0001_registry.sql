-- The cellfleet registry (PostgreSQL). Keep in step with ../sqlite/0001_registry.sql: the two
-- schemas differ only in column types. Timestamps are Unix milliseconds; JSON is TEXT.

CREATE TABLE regions (
    name         TEXT PRIMARY KEY,
    jurisdiction TEXT NOT NULL,
    lat          DOUBLE PRECISION NOT NULL,
    lon          DOUBLE PRECISION NOT NULL,
    spec         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE cells (
    name          TEXT PRIMARY KEY,
    region        TEXT NOT NULL REFERENCES regions(name),
    kind          TEXT NOT NULL,
    env           TEXT NOT NULL,
    capacity      BIGINT NOT NULL,
    template      TEXT NOT NULL,
    endpoint      TEXT,
    labels        TEXT NOT NULL,
    change_window TEXT,
    state         TEXT NOT NULL,
    spec          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE tenants (
    id           TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    state_reason TEXT,
    spec         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    archived_at  BIGINT,
    -- 1 while some environment still waits for a placement (drafts, new envs).
    pending      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tenants_state ON tenants(state);
CREATE INDEX tenants_pending ON tenants(pending);

CREATE TABLE placements (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    env         TEXT NOT NULL,
    cell        TEXT NOT NULL REFERENCES cells(name),
    region      TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    explanation TEXT NOT NULL,
    placed_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, env)
);
CREATE INDEX placements_cell ON placements(cell);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    cell        TEXT REFERENCES cells(name),
    hash        TEXT NOT NULL UNIQUE,
    description TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE audit_log (
    seq            BIGINT PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    payload        TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_log_target ON audit_log(target);

-- The head of the audit chain, so that removing the newest records is detected too.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '');
