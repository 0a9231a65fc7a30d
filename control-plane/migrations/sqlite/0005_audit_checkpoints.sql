-- Signed checkpoints of the audit chain's head (see control-plane/src/audit.rs). The signing key
-- is not in the registry; copies of each checkpoint also live outside it. Keep in step with
-- ../postgres/0005_audit_checkpoints.sql.
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL,
    at        INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);
