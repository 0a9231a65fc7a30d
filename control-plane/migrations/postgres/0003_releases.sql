-- Releases (SPEC §2, §8): immutable application versions, and the release each cell should run.
-- Keep in step with ../sqlite/0003_releases.sql.
CREATE TABLE releases (
    version    TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
ALTER TABLE cells ADD COLUMN desired_release TEXT REFERENCES releases(version);
