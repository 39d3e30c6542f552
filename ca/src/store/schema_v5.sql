-- Portcullis CA schema, version 5: node certificates are recorded like every other certificate
-- the intermediate signs, so they appear in the CRL and OCSP once revoked and the status feed
-- can refuse a node whose certificate was revoked (a decommissioned or compromised gateway).

-- The node name of a node certificate (`spiffe://<trust-domain>/node/<name>`); NULL for every
-- other certificate.
ALTER TABLE certificates ADD COLUMN node TEXT;
CREATE INDEX certificates_node ON certificates(node) WHERE node IS NOT NULL;
