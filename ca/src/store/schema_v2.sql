-- Portcullis CA schema, version 2: what ACME finalization and its crash recovery need.

-- The accepted CSR (DER) is stored when an order moves to `processing`, in the same statement.
-- If the process dies before the certificate is committed, recovery re-issues from it with a
-- new serial; the client, which was never told about a certificate, sees `processing` → `valid`.
ALTER TABLE orders ADD COLUMN csr BLOB;
-- The leaf alone (DER), so revocation can compare a submitted certificate byte for byte.
ALTER TABLE certificates ADD COLUMN der BLOB;

-- An external account binding key binds one ACME account (RFC 8555 §7.3.4).
CREATE UNIQUE INDEX accounts_eab_kid ON accounts(eab_kid) WHERE eab_kid IS NOT NULL;

CREATE INDEX orders_account ON orders(account_id);
CREATE INDEX orders_status ON orders(status);
CREATE INDEX authorizations_order ON authorizations(order_id);
CREATE INDEX challenges_authz ON challenges(authz_id);
CREATE INDEX challenges_status ON challenges(status);
CREATE INDEX certificates_order ON certificates(order_id);
