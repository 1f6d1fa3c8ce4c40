-- Endpoint secrets sealed with ACCOMMADOR_SECRET_KEY name the key that sealed them; NULL is
-- plain text (stored before the setting, or without it). Start-up checks the distinct key ids
-- against the configured keys; `secrets reencrypt` walks the rows by rowid.
ALTER TABLE endpoint_secrets ADD COLUMN key_id TEXT;
CREATE INDEX endpoint_secrets_key ON endpoint_secrets(key_id);
