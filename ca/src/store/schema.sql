-- Portcullis CA schema, version 1. Migrations are numbered; `store::sqlite` applies the ones a
-- database has not seen, each in its own transaction, recording it in `schema_migrations`.

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    thumbprint    TEXT NOT NULL UNIQUE,      -- RFC 7638 thumbprint of the account key
    jwk           TEXT NOT NULL,             -- the key as the client sent it (JSON)
    status        TEXT NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    contact       TEXT NOT NULL DEFAULT '[]',-- JSON array of URLs
    tos_agreed    INTEGER NOT NULL DEFAULT 0,
    eab_kid       TEXT,
    created_at    INTEGER NOT NULL
);

CREATE TABLE orders (
    id            INTEGER PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES accounts(id),
    status        TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'processing', 'valid', 'invalid')),
    identifiers   TEXT NOT NULL,             -- JSON array of {type, value}
    not_before    INTEGER,
    not_after     INTEGER,
    expires       INTEGER NOT NULL,
    error         TEXT,                      -- problem document JSON
    cert_serial   TEXT REFERENCES certificates(serial),
    created_at    INTEGER NOT NULL
);

CREATE TABLE authorizations (
    id            INTEGER PRIMARY KEY,
    order_id      INTEGER NOT NULL REFERENCES orders(id),
    account_id    INTEGER NOT NULL REFERENCES accounts(id),
    id_type       TEXT NOT NULL,
    id_value      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'valid', 'invalid', 'deactivated', 'expired', 'revoked')),
    expires       INTEGER NOT NULL
);

CREATE TABLE challenges (
    id            INTEGER PRIMARY KEY,
    authz_id      INTEGER NOT NULL REFERENCES authorizations(id),
    type          TEXT NOT NULL,
    token         TEXT NOT NULL UNIQUE,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    validated_at  INTEGER,
    error         TEXT
);

-- One row per certificate ever issued. `serial` is UNIQUE: a serial can never be used twice,
-- even by a finalization that crashed half-way and was retried.
CREATE TABLE certificates (
    serial        TEXT PRIMARY KEY,          -- lowercase hex
    order_id      INTEGER REFERENCES orders(id),
    account_id    INTEGER REFERENCES accounts(id),
    fingerprint   TEXT NOT NULL UNIQUE,      -- SHA-256 of the DER, hex
    device_id     TEXT,
    not_before    INTEGER NOT NULL,
    not_after     INTEGER NOT NULL,
    chain_pem     TEXT NOT NULL,
    revoked_at    INTEGER,
    revocation_reason INTEGER
);
CREATE INDEX certificates_device ON certificates(device_id);

CREATE TABLE devices (
    id            TEXT PRIMARY KEY,          -- permanent identifier
    hw_module_id  TEXT,
    platform      TEXT,
    owner         TEXT,
    tags          TEXT NOT NULL DEFAULT '[]',
    status        TEXT NOT NULL CHECK (status IN ('active', 'quarantined', 'retired')),
    source        TEXT NOT NULL DEFAULT 'manual',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE device_history (
    id            INTEGER PRIMARY KEY,
    device_id     TEXT NOT NULL REFERENCES devices(id),
    at            INTEGER NOT NULL,
    from_status   TEXT,
    to_status     TEXT NOT NULL,
    actor         TEXT NOT NULL,
    reason        TEXT NOT NULL
);
