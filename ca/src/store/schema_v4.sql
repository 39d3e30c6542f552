-- Portcullis CA schema, version 4: open TPM enrollment (issue 4; ca/src/enroll).

-- Endorsement keys bound to inventory devices. A row is either a pin an operator set (the EK a
-- device must enrol with, which also lets it enrol with a bare EK public area) or a binding an
-- enrollment made (an EK certificate that chained to a TPM manufacturer root, proven present by
-- credential activation). One EK belongs to at most one device: the key is the EK's hash.
CREATE TABLE device_eks (
    ek_hash       TEXT PRIMARY KEY,          -- SHA-256 of the EK SubjectPublicKeyInfo DER, hex
    device_id     TEXT NOT NULL REFERENCES devices(id),
    origin        TEXT NOT NULL CHECK (origin IN ('pinned', 'enrolled')),
    tpm_manufacturer TEXT,                   -- from the EK certificate SAN (TCG EK profile)
    tpm_model     TEXT,
    tpm_version   TEXT,
    created_at    INTEGER NOT NULL,
    enrolled_at   INTEGER                    -- last successful credential activation
);
CREATE INDEX device_eks_device ON device_eks(device_id);

-- Every AK certificate the enrollment issued (the AK CA is not the issuing intermediate, so
-- these are not in `certificates`).
CREATE TABLE ak_certificates (
    serial        TEXT PRIMARY KEY,          -- lowercase hex
    device_id     TEXT NOT NULL REFERENCES devices(id),
    ek_hash       TEXT NOT NULL,             -- kept when the EK is unbound: history
    ak_name       BLOB NOT NULL,             -- TPM Name of the AK (nameAlg || H(TPMT_PUBLIC))
    not_before    INTEGER NOT NULL,
    not_after     INTEGER NOT NULL,
    der           BLOB NOT NULL,
    issued_at     INTEGER NOT NULL
);
CREATE INDEX ak_certificates_device ON ak_certificates(device_id);
