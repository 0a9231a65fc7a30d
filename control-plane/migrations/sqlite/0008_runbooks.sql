-- Runbooks (SPEC §9): runs are operation rows (kind 'runbook'); what their notify steps emit is
-- kept here, listable now and delivered to webhooks once they exist. Keep in step with
-- ../postgres/0008_runbooks.sql.
CREATE TABLE events (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    recipients TEXT NOT NULL,
    title      TEXT NOT NULL,
    message    TEXT NOT NULL,
    run_id     TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_created ON events (created_at);
CREATE INDEX events_run ON events (run_id);
