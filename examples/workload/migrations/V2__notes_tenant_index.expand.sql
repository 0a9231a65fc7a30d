CREATE INDEX notes_tenant ON notes (tenant_id, id);
