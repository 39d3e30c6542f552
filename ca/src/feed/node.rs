//! Node certificates: how enforcement points authenticate to the status feed. The CA issues
//! them (`portcullis ca node-cert NAME`) from its intermediate, with the URI SAN
//! `spiffe://<trust-domain>/node/<name>` and EKU clientAuth; the feed accepts a client chain
//! only if it verifies to this CA's root and names a node. A device certificate from the same
//! CA names `/device/` and is refused, so a device cannot read the fleet's inventory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::clock::unix_seconds;
use crate::pki::{Authority, CertTemplate, IssueRequest, IssuedCert, PkiError};
use crate::store::{NewCert, SqliteStore};

/// Node certificates live this long unless asked otherwise (bounded by the CA's
/// `max_lifetime`): re-issue them like any other service credential.
pub const DEFAULT_NODE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

pub fn node_uri(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/node/{name}")
}

/// A node name: 1–63 of `a-z 0-9 . _ -`, so it is a safe URI path segment and log field.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A fresh P-256 key and a node certificate for it, recorded in `store` (so that it can be
/// revoked and the feed knows it). Returns the issued certificate (its `chain_pem` is leaf +
/// intermediate) and the private key as PKCS#8 PEM.
pub fn issue(
    pki: &Authority,
    store: &SqliteStore,
    trust_domain: &str,
    name: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<(IssuedCert, String), PkiError> {
    if !valid_node_name(name) {
        return Err(PkiError::Request(format!(
            "node name `{name}`: 1-63 characters of a-z 0-9 . _ -"
        )));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Request(format!("node key: {e}")))?;
    let lifetime = lifetime.min(pki.policy().max());
    let template = CertTemplate {
        name: "node".into(),
        lifetime,
        ..CertTemplate::device()
    };
    let cert = pki.issue(
        &IssueRequest {
            spki_der: &rcgen::PublicKeyData::subject_public_key_info(&key),
            template: &template,
            dns_names: &[],
            ip_addresses: &[],
            uris: &[node_uri(trust_domain, name)],
            not_before: None,
            not_after: None,
        },
        now,
    )?;
    store
        .record_node_certificate(
            name,
            &NewCert {
                serial: &cert.serial.to_hex(),
                fingerprint: &cert.fingerprint,
                der: &cert.der,
                chain_pem: &cert.chain_pem,
                not_before: unix_seconds(cert.not_before),
                not_after: unix_seconds(cert.not_after),
                device_id: None,
            },
        )
        .map_err(|e| PkiError::Request(format!("recording the node certificate: {e}")))?;
    Ok((cert, key.serialize_pem()))
}

/// Refuses a node whose certificate this CA did not record or has revoked. Run at
/// subscription; the open stream watches the feed's revoked set from then on.
pub fn check_recorded(store: &SqliteStore, node: Node) -> Result<Node, NodeAuthError> {
    match store.node_of_certificate(&node.serial) {
        Ok(Some(recorded)) if recorded.node == node.name && recorded.revoked_at.is_none() => {
            Ok(node)
        }
        Ok(Some(recorded)) if recorded.node == node.name => Err(NodeAuthError::Revoked {
            node: node.name,
            serial: node.serial,
        }),
        Ok(_) => Err(NodeAuthError::NotRecorded {
            node: node.name,
            serial: node.serial,
        }),
        Err(e) => Err(NodeAuthError::Store(e.to_string())),
    }
}

/// Why a feed client was refused (for our log; the client gets a bare 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeAuthError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate does not verify to this CA: {0}")]
    Untrusted(String),
    #[error("client certificate names no node of trust domain {0} (a device certificate?)")]
    NotANode(String),
    #[error("node certificate {serial} of `{node}` is not in this CA's records")]
    NotRecorded { node: String, serial: String },
    #[error("node certificate {serial} of `{node}` is revoked")]
    Revoked { node: String, serial: String },
    #[error("CA database: {0}")]
    Store(String),
}

/// A node the feed accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The certificate's serial, lowercase hex: the key the store revokes it by.
    pub serial: String,
    /// The certificate's notAfter: the feed ends the subscription then, so that a connection
    /// cannot outlive the credential that opened it.
    pub not_after: SystemTime,
}

/// The node of a verified client chain (leaf first): it must chain to `root` (this CA's
/// root, DER) for clientAuth at `now` and carry a node URI of `trust_domain`.
pub fn authenticate(
    chain: Option<&[CertificateDer<'static>]>,
    root: &[u8],
    trust_domain: &str,
    now: SystemTime,
) -> Result<Node, NodeAuthError> {
    let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
        return Err(NodeAuthError::NoCertificate);
    };
    let root = CertificateDer::from(root);
    let anchor: TrustAnchor<'_> = webpki::anchor_from_trusted_cert(&root)
        .map_err(|e| NodeAuthError::Untrusted(format!("CA root: {e}")))?;
    let end_entity = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| NodeAuthError::Untrusted(e.to_string()))?;
    let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            intermediates,
            at,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| NodeAuthError::Untrusted(e.to_string()))?;
    let prefix = format!("spiffe://{trust_domain}/node/");
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| NodeAuthError::Untrusted(e.to_string()))?;
    let not_after = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0));
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    if let Some(node) = uri.strip_prefix(&prefix) {
                        if valid_node_name(node) {
                            return Ok(Node {
                                name: node.to_string(),
                                serial: portcullis_policy::identity::serial_hex(cert.raw_serial()),
                                not_after,
                            });
                        }
                    }
                }
            }
        }
    }
    Err(NodeAuthError::NotANode(trust_domain.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CaPaths, InitOptions, LifetimePolicy};

    fn chain(issued: &IssuedCert) -> Vec<CertificateDer<'static>> {
        crate::pki::pem::decode_all(&issued.chain_pem, "CERTIFICATE")
            .unwrap()
            .into_iter()
            .map(CertificateDer::from)
            .collect()
    }

    /// A new root + intermediate in a temporary directory, and the root's DER.
    fn new_ca(now: SystemTime) -> (tempfile::TempDir, Authority, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(&dir.path().join("pki"));
        Authority::init(&paths, &InitOptions::default(), now).unwrap();
        let pki = Authority::load(&paths, LifetimePolicy::default()).unwrap();
        let root = crate::pki::pem::decode_first(pki.root_pem(), "CERTIFICATE").unwrap();
        (dir, pki, root)
    }

    #[test]
    fn only_an_unexpired_node_certificate_of_this_ca_is_a_node() {
        let now = SystemTime::now();
        let (_dir, pki, root) = new_ca(now);
        let day = Duration::from_secs(24 * 3600);

        let store = SqliteStore::open_in_memory().unwrap();
        let (cert, key) = issue(&pki, &store, "corp.test", "gw-1", day, now).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let node = authenticate(Some(&chain(&cert)), &root, "corp.test", now).unwrap();
        assert_eq!(node.name, "gw-1");
        assert_eq!(node.serial, cert.serial.to_hex());
        assert!(node.not_after > now + day - Duration::from_secs(120));
        assert!(matches!(
            authenticate(Some(&chain(&cert)), &root, "other.test", now),
            Err(NodeAuthError::NotANode(_))
        ));
        assert!(matches!(
            authenticate(Some(&chain(&cert)), &root, "corp.test", now + 2 * day),
            Err(NodeAuthError::Untrusted(_))
        ));
        assert_eq!(
            authenticate(None, &root, "corp.test", now),
            Err(NodeAuthError::NoCertificate)
        );
        // A device certificate of the same CA names /device/, not /node/.
        let device_key = rcgen::KeyPair::generate().unwrap();
        let device = pki
            .issue(
                &IssueRequest {
                    spki_der: &rcgen::PublicKeyData::subject_public_key_info(&device_key),
                    template: &CertTemplate::device(),
                    dns_names: &[],
                    ip_addresses: &[],
                    uris: &["spiffe://corp.test/device/gw-1".to_string()],
                    not_before: None,
                    not_after: None,
                },
                now,
            )
            .unwrap();
        assert!(matches!(
            authenticate(Some(&chain(&device)), &root, "corp.test", now),
            Err(NodeAuthError::NotANode(_))
        ));
        // Another CA's root: untrusted.
        let (_other, _, other_root) = new_ca(now);
        assert!(matches!(
            authenticate(Some(&chain(&cert)), &other_root, "corp.test", now),
            Err(NodeAuthError::Untrusted(_))
        ));
        for bad in ["", "GW", "a/b", &"x".repeat(64)] {
            assert!(
                issue(&pki, &store, "corp.test", bad, day, now).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_a_recorded_unrevoked_node_certificate_subscribes() {
        let now = SystemTime::now();
        let (_dir, pki, root) = new_ca(now);
        let day = Duration::from_secs(24 * 3600);
        let store = SqliteStore::open_in_memory().unwrap();
        let elsewhere = SqliteStore::open_in_memory().unwrap();

        let (cert, _) = issue(&pki, &store, "corp.test", "gw-1", day, now).unwrap();
        let node = || authenticate(Some(&chain(&cert)), &root, "corp.test", now).unwrap();
        assert_eq!(check_recorded(&store, node()).unwrap().name, "gw-1");
        // Signed by our intermediate but never recorded (another database, or a key used
        // outside `node-cert`): refused.
        assert!(matches!(
            check_recorded(&elsewhere, node()),
            Err(NodeAuthError::NotRecorded { .. })
        ));
        let revoked = store
            .revoke_node(
                "gw-1",
                crate::store::NodeRevocationReason::KeyCompromise,
                unix_seconds(now),
            )
            .unwrap();
        assert_eq!(revoked, vec![cert.serial.to_hex()]);
        assert!(matches!(
            check_recorded(&store, node()),
            Err(NodeAuthError::Revoked { .. })
        ));
    }
}
