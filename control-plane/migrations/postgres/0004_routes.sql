-- The routing table edge proxies read (SPEC §6): one row per routable (tenant, env), a change log
-- keyed by a table-wide version, and the version's head. Keep in step with ../sqlite/0004_routes.sql.
CREATE TABLE routes (
    tenant_id TEXT NOT NULL,
    env       TEXT NOT NULL,
    cell      TEXT NOT NULL,
    entry     TEXT NOT NULL,
    version   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, env)
);
CREATE INDEX routes_cell ON routes(cell);

CREATE TABLE route_changes (
    version   BIGINT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    env       TEXT NOT NULL,
    entry     TEXT
);

CREATE TABLE routing_head (
    id      BIGINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO routing_head (id, version) VALUES (1, 0);
