CREATE TABLE notes (
    id         BIGINT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
