-- The routing table's epoch: an identity of its history. A watcher holding a version under
-- another epoch, or a version ahead of the head (the registry was restored from an older copy),
-- gets a snapshot instead of changes. Rotated at every start and whenever a watcher is seen
-- ahead. Keep in step with the other backend's copy.
ALTER TABLE routing_head ADD COLUMN epoch TEXT NOT NULL DEFAULT 'initial';
