//! Node certificates (the credentials enforcement points subscribe to the status feed with):
//! recorded in `certificates` with their node name, listed, and revoked per node.

use rusqlite::{params, OptionalExtension};

use super::{NewCert, SqliteStore, StoreError};

/// RFC 5280 §5.3.1 reasons that make sense for a node: its key leaked, it was replaced, or the
/// enforcement point is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRevocationReason {
    KeyCompromise,
    Superseded,
    CessationOfOperation,
}

impl NodeRevocationReason {
    /// The CRLReason code (RFC 5280 §5.3.1).
    pub fn code(self) -> i64 {
        match self {
            Self::KeyCompromise => 1,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
        }
    }

    /// The reason named as in RFC 5280, case-insensitively, with or without dashes
    /// (`keyCompromise`, `key-compromise`).
    pub fn parse(name: &str) -> Option<Self> {
        let folded: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        match folded.as_str() {
            "keycompromise" => Some(Self::KeyCompromise),
            "superseded" => Some(Self::Superseded),
            "cessationofoperation" => Some(Self::CessationOfOperation),
            _ => None,
        }
    }
}

/// One node certificate as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub node: String,
    /// Lowercase hex.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
    pub reason: Option<i64>,
}

impl SqliteStore {
    /// Records a node certificate the intermediate signed for `node`.
    pub fn record_node_certificate(
        &self,
        node: &str,
        cert: &NewCert<'_>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO certificates (serial, fingerprint, device_id, not_before, not_after, chain_pem, der, node)
             VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7)",
            params![
                cert.serial,
                cert.fingerprint,
                cert.not_before,
                cert.not_after,
                cert.chain_pem,
                cert.der,
                node
            ],
        )?;
        Ok(())
    }

    /// Every node certificate ever issued, by node then notBefore.
    pub fn node_certificates(&self) -> Result<Vec<NodeCert>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM certificates WHERE node IS NOT NULL
             ORDER BY node, not_before, serial"
        ))?;
        let rows = stmt.query_map([], node_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The node a certificate was issued to, `None` if `serial` (lowercase hex) is not a node
    /// certificate this CA recorded.
    pub fn node_of_certificate(&self, serial: &str) -> Result<Option<NodeCert>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM certificates WHERE node IS NOT NULL AND serial = ?1"
        ))?;
        Ok(stmt.query_row([serial], node_from_row).optional()?)
    }

    /// Revokes every unexpired, unrevoked certificate of `node` at `now`; returns their
    /// serials (empty if there was none).
    pub fn revoke_node(
        &self,
        node: &str,
        reason: NodeRevocationReason,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "UPDATE certificates SET revoked_at = ?2, revocation_reason = ?3
             WHERE node = ?1 AND revoked_at IS NULL AND not_after > ?2 RETURNING serial",
        )?;
        let rows = stmt.query_map(params![node, now, reason.code()], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const NODE_COLUMNS: &str = "node, serial, not_before, not_after, revoked_at, revocation_reason";

fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeCert> {
    Ok(NodeCert {
        node: r.get(0)?,
        serial: r.get(1)?,
        not_before: r.get(2)?,
        not_after: r.get(3)?,
        revoked_at: r.get(4)?,
        reason: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AcmeStore;

    fn cert(serial: &str, not_after: i64) -> NewCert<'_> {
        NewCert {
            serial,
            fingerprint: serial,
            der: b"der",
            chain_pem: "pem",
            not_before: 0,
            not_after,
            device_id: None,
        }
    }

    #[test]
    fn revoking_a_node_revokes_its_live_certificates_only() {
        let store = SqliteStore::open_in_memory().unwrap();
        store
            .record_node_certificate("gw-1", &cert("0a", 100))
            .unwrap();
        store
            .record_node_certificate("gw-1", &cert("0b", 10))
            .unwrap(); // expired at 50
        store
            .record_node_certificate("gw-2", &cert("0c", 100))
            .unwrap();
        store.record_certificate(&cert("0d", 100)).unwrap(); // not a node

        assert_eq!(
            store.node_of_certificate("0a").unwrap().unwrap().node,
            "gw-1"
        );
        assert_eq!(store.node_of_certificate("0d").unwrap(), None);

        let revoked = store
            .revoke_node("gw-1", NodeRevocationReason::KeyCompromise, 50)
            .unwrap();
        assert_eq!(revoked, vec!["0a".to_string()]);
        // Once is enough: a second call finds nothing left to revoke.
        assert!(store
            .revoke_node("gw-1", NodeRevocationReason::KeyCompromise, 60)
            .unwrap()
            .is_empty());

        let all = store.node_certificates().unwrap();
        assert_eq!(all.len(), 3);
        let a = all.iter().find(|c| c.serial == "0a").unwrap();
        assert_eq!((a.revoked_at, a.reason), (Some(50), Some(1)));
        assert!(all
            .iter()
            .filter(|c| c.serial != "0a")
            .all(|c| c.revoked_at.is_none()));
        // The CRL and OCSP see it like any revoked certificate.
        assert_eq!(store.revoked_serials(50).unwrap(), vec!["0a".to_string()]);
    }

    #[test]
    fn reasons_parse_as_rfc_5280_names() {
        for (name, reason) in [
            ("keyCompromise", NodeRevocationReason::KeyCompromise),
            ("key-compromise", NodeRevocationReason::KeyCompromise),
            ("superseded", NodeRevocationReason::Superseded),
            (
                "cessation_of_operation",
                NodeRevocationReason::CessationOfOperation,
            ),
        ] {
            assert_eq!(NodeRevocationReason::parse(name), Some(reason), "{name}");
        }
        assert_eq!(NodeRevocationReason::parse("certificateHold"), None);
        assert_eq!(NodeRevocationReason::parse(""), None);
    }
}
