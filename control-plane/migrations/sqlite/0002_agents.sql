-- Cell agents (SPEC §7): each cell's desired state is versioned by a generation that increases
-- whenever the document changes (tracked through its hash), and each agent's last report is kept.
-- Keep in step with ../postgres/0002_agents.sql.

ALTER TABLE cells ADD COLUMN desired_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cells ADD COLUMN desired_hash TEXT NOT NULL DEFAULT '';

CREATE TABLE cell_reports (
    cell        TEXT PRIMARY KEY REFERENCES cells(name),
    report      TEXT NOT NULL,
    reported_at INTEGER NOT NULL
);

-- The fleet-wide, append-only stream of cell-database migrations (not to be confused with these
-- registry migrations): every cell applies all of them, in version order.
CREATE TABLE cell_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    phase      TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    sql        TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
