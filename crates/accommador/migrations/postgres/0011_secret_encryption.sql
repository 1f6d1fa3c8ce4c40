-- Endpoint secrets sealed with ACCOMMADOR_SECRET_KEY name the key that sealed them; NULL is
-- plain text (stored before the setting, or without it). Start-up checks the distinct key ids
-- against the configured keys; `secrets reencrypt` walks the rows by `seq` in bounded batches.
ALTER TABLE endpoint_secrets
    ADD COLUMN key_id text,
    ADD COLUMN seq bigserial PRIMARY KEY;
CREATE INDEX endpoint_secrets_key ON endpoint_secrets(key_id);
