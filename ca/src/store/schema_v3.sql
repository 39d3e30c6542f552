-- Portcullis CA schema, version 3: device-attest-01 (draft-ietf-acme-device-attest).

-- What a valid device-attest-01 challenge proved, on its authorization: finalize requires the
-- CSR key to equal `attested_spki`, and issuance records `device_id` on the certificate row
-- (so that quarantining the device revokes it) and `attested_format` in an extension.
ALTER TABLE authorizations ADD COLUMN device_id TEXT;
ALTER TABLE authorizations ADD COLUMN attested_spki BLOB;   -- SubjectPublicKeyInfo DER
ALTER TABLE authorizations ADD COLUMN attested_format TEXT; -- attObj fmt: tpm, apple, step
ALTER TABLE authorizations ADD COLUMN attested_details TEXT;-- JSON: platform, model, firmware...
ALTER TABLE authorizations ADD COLUMN attested_at INTEGER;
