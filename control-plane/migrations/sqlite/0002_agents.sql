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
