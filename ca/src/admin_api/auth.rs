//! Who is calling the admin API: a bearer token from the tokens file (RFC 6750 §2.1), or an
//! admin client certificate chaining to the configured admin roots (mTLS). The actor name —
//! the token's `name`, or the certificate subject's CN — goes into the history and the audit
//! log.
//!
//! Failures are deliberately uninformative to the caller (one 401 for "no credential", "bad
//! token", "bad certificate"), and logged in detail on our side.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderMap;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::pki::pem;
use crate::tls::PeerCertificates;

/// Shortest token accepted in the tokens file: 32 characters of an RFC 6750 token (e.g.
/// `openssl rand -hex 32` gives 64) — short or guessable tokens are a configuration error.
pub const MIN_TOKEN_LEN: usize = 32;
const MAX_NAME_LEN: usize = 64;
/// Longest admin certificate CN taken as an actor name.
const MAX_CN_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum AdminApiError {
    #[error("admin API tokens file {path}: {message}")]
    TokensFile { path: PathBuf, message: String },
    #[error("admin API client roots {path}: {message}")]
    ClientRoots { path: PathBuf, message: String },
    #[error("admin API client certificate verifier: {0}")]
    Verifier(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Token,
    ClientCertificate,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::ClientCertificate => "client_certificate",
        }
    }
}

/// The authenticated caller, put into request extensions by the auth middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub method: AuthMethod,
}

struct TokenEntry {
    name: String,
    /// SHA-256 of the token: comparisons run over equal-length digests, in constant time, so
    /// neither a token's length nor its prefix leaks through timing.
    digest: [u8; 32],
}

/// The parsed tokens file.
pub struct TokenTable {
    entries: Vec<TokenEntry>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: digests of secrets stay out of logs too.
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.name))
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// RFC 6750 §2.1 `b64token`: what may follow `Bearer ` in a header.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

impl TokenTable {
    /// Reads `name token` lines (`#` starts a comment line; blank lines are skipped). Refuses a
    /// file group or others may read or write (it holds secrets: 0600, like the CA keys),
    /// malformed lines, short tokens, and duplicate names or tokens — each with its line.
    pub fn load(path: &Path) -> Result<Self, AdminApiError> {
        let err = |message: String| AdminApiError::TokensFile {
            path: path.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "mode {mode:04o} lets group or others access it; it holds secrets \
                     (chmod 600)"
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// The file's content; errors say the line, never the token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {n}: expected `name token`"));
            };
            if name.len() > MAX_NAME_LEN
                || !name.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':')
                })
            {
                return Err(format!(
                    "line {n}: the name must be 1 to {MAX_NAME_LEN} of letters, digits, `.`, `_`, `-`, `@`, `:`"
                ));
            }
            if !is_b64token(token) {
                return Err(format!(
                    "line {n}: the token may only contain letters, digits, `-._~+/` and trailing `=` (RFC 6750)"
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {n}: the token is shorter than {MIN_TOKEN_LEN} characters"
                ));
            }
            let d = digest(token.as_bytes());
            if entries.iter().any(|e| e.name == name) {
                return Err(format!("line {n}: the name `{name}` appears twice"));
            }
            if entries.iter().any(|e| bool::from(e.digest.ct_eq(&d))) {
                return Err(format!(
                    "line {n}: this token is already used by another name"
                ));
            }
            entries.push(TokenEntry {
                name: name.to_string(),
                digest: d,
            });
        }
        if entries.is_empty() {
            return Err("no tokens (expected `name token` lines)".into());
        }
        Ok(Self { entries })
    }

    /// The name of the token, if it is one. Every entry is compared, matched or not.
    pub fn check(&self, presented: &str) -> Option<&str> {
        let d = digest(presented.as_bytes());
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&d)) {
                found = Some(e.name.as_str());
            }
        }
        found
    }
}

/// Builds the verifier for admin client certificates from PEM files of roots. Certificates
/// equal to one in `forbidden` (the CA's own root and intermediate) are refused: with them,
/// every device certificate this CA issues — all carry clientAuth — would be an admin
/// credential.
pub fn client_verifier(
    paths: &[PathBuf],
    forbidden: &[Vec<u8>],
) -> Result<Arc<dyn ClientCertVerifier>, AdminApiError> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        let err = |message: String| AdminApiError::ClientRoots {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let ders = pem::decode_all(&text, "CERTIFICATE").map_err(|e| err(e.to_string()))?;
        if ders.is_empty() {
            return Err(err("no CERTIFICATE in the file".into()));
        }
        for der in ders {
            if forbidden.iter().any(|f| f == &der) {
                return Err(err(
                    "contains this CA's own root or intermediate; admin certificates need \
                     their own CA, or every device would be an admin"
                        .into(),
                ));
            }
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| err(format!("not a usable root certificate: {e}")))?;
        }
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    // ACME clients connect to the same listener without a certificate.
    .allow_unauthenticated()
    .build()
    .map_err(|e| AdminApiError::Verifier(e.to_string()))
}

/// The credential sources the API accepts.
pub struct AdminAuth {
    tokens: Option<TokenTable>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("tokens", &self.tokens)
            .field("client_certificates", &self.verifier.is_some())
            .finish()
    }
}

/// Why a request was not authenticated: for our log, never for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    NoCredential,
    MalformedAuthorization,
    UnknownToken,
    TokensNotConfigured,
    CertificateRejected(String),
    CertificateName(String),
}

impl AdminAuth {
    pub fn new(tokens: Option<TokenTable>, verifier: Option<Arc<dyn ClientCertVerifier>>) -> Self {
        Self { tokens, verifier }
    }

    pub fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.verifier.clone()
    }

    /// An `Authorization` header, if present, decides alone (a bad token is refused even if
    /// a good certificate was presented: the caller said which credential it means). Without
    /// one, a client certificate verified by the TLS layer is verified again here — against
    /// the admin roots and `now` — so a router mounted behind some other TLS setup can never
    /// take a device certificate for an admin.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerCertificates>,
        now: UnixTime,
    ) -> Result<Actor, Denied> {
        let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
        if let Some(value) = auth.next() {
            if auth.next().is_some() {
                return Err(Denied::MalformedAuthorization);
            }
            let value = value.to_str().map_err(|_| Denied::MalformedAuthorization)?;
            let (scheme, token) = value
                .split_once(' ')
                .ok_or(Denied::MalformedAuthorization)?;
            // RFC 9110 §11.1: the scheme is case-insensitive.
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Denied::MalformedAuthorization);
            }
            let token = token.trim_matches(' ');
            let table = self.tokens.as_ref().ok_or(Denied::TokensNotConfigured)?;
            return table
                .check(token)
                .map(|name| Actor {
                    name: name.to_string(),
                    method: AuthMethod::Token,
                })
                .ok_or(Denied::UnknownToken);
        }
        let (Some(verifier), Some(peer)) = (&self.verifier, peer) else {
            return Err(Denied::NoCredential);
        };
        let Some((leaf, intermediates)) = peer.0.split_first() else {
            return Err(Denied::NoCredential);
        };
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| Denied::CertificateRejected(e.to_string()))?;
        let name = common_name(leaf).map_err(Denied::CertificateName)?;
        Ok(Actor {
            name,
            method: AuthMethod::ClientCertificate,
        })
    }
}

/// The subject's one CN: printable, bounded. None, several, or odd ones are refused (the
/// actor name must say unambiguously who acted).
fn common_name(der: &CertificateDer<'_>) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let mut cns = cert.subject().iter_common_name();
    let (Some(cn), None) = (cns.next(), cns.next()) else {
        return Err("the subject must have exactly one CN".into());
    };
    let cn = cn
        .as_str()
        .map_err(|_| "the CN is not a string".to_string())?;
    if cn.is_empty() || cn.len() > MAX_CN_LEN || cn.chars().any(char::is_control) {
        return Err("the CN is empty, too long or has control characters".into());
    }
    Ok(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef0123456789abcdef";
    const T2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn tokens_file_parses_and_checks() {
        let t = TokenTable::parse(&format!("# admins\n\nalice {T1}\n  bob\t{T2}  \n")).unwrap();
        assert_eq!(t.check(T1), Some("alice"));
        assert_eq!(t.check(T2), Some("bob"));
        assert_eq!(t.check("0123456789abcdef0123456789abcdeX"), None);
        assert_eq!(t.check(""), None);
    }

    #[test]
    fn tokens_file_errors_name_the_line_and_never_the_token() {
        for (text, want) in [
            ("alice\n".to_string(), "line 1: expected `name token`"),
            ("a b c\n".to_string(), "line 1: expected"),
            (
                "#x\nalice short\n".to_string(),
                "line 2: the token is shorter",
            ),
            (format!("al/ice {T1}\n"), "line 1: the name"),
            (
                format!("alice {T1}\nalice {T2}\n"),
                "line 2: the name `alice` appears twice",
            ),
            (
                format!("alice {T1}\nbob {T1}\n"),
                "line 2: this token is already used",
            ),
            (format!("alice {T1}\"\n"), "line 1: the token may only"),
            ("# nothing\n".to_string(), "no tokens"),
        ] {
            let e = TokenTable::parse(&text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains(T1), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn tokens_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("alice {T1}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = TokenTable::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0640"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(TokenTable::load(&path).is_ok());
    }

    #[test]
    fn authorization_header_rules() {
        let auth = AdminAuth::new(
            Some(TokenTable::parse(&format!("alice {T1}")).unwrap()),
            None,
        );
        let now = UnixTime::now();
        let with = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for v in v {
                h.append(http::header::AUTHORIZATION, v.parse().unwrap());
            }
            auth.authenticate(&h, None, now)
        };
        assert_eq!(with(&[&format!("Bearer {T1}")]).unwrap().name, "alice");
        assert_eq!(
            with(&[&format!("bearer {T1}")]).unwrap().method,
            AuthMethod::Token
        );
        assert_eq!(with(&[]), Err(Denied::NoCredential));
        assert_eq!(
            with(&[&format!("Basic {T1}")]),
            Err(Denied::MalformedAuthorization)
        );
        assert_eq!(with(&["Bearer nope"]), Err(Denied::UnknownToken));
        assert_eq!(
            with(&[&format!("Bearer {T1}"), &format!("Bearer {T1}")]),
            Err(Denied::MalformedAuthorization)
        );
        let no_tokens = AdminAuth::new(None, None);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {T1}").parse().unwrap(),
        );
        assert_eq!(
            no_tokens.authenticate(&h, None, now),
            Err(Denied::TokensNotConfigured)
        );
    }

    fn ca(cn: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap()
    }

    /// (rcgen keeps one value per attribute type, so "two CNs" cannot be built here.)
    fn leaf(
        issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        cns: &[&str],
    ) -> PeerCertificates {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for cn in cns {
            p.distinguished_name.push(rcgen::DnType::CommonName, *cn);
        }
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, issuer).unwrap();
        PeerCertificates(vec![cert.der().clone()].into())
    }

    #[test]
    fn client_certificates_are_verified_again_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let admin = ca("Admin Root");
        let roots = dir.path().join("roots.pem");
        std::fs::write(&roots, admin.pem()).unwrap();
        let verifier = client_verifier(std::slice::from_ref(&roots), &[]).unwrap();
        let auth = AdminAuth::new(None, Some(verifier));
        let now = UnixTime::now();
        let none = HeaderMap::new();
        let ok = auth
            .authenticate(&none, Some(&leaf(&admin, &["ops"])), now)
            .unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.method),
            ("ops", AuthMethod::ClientCertificate)
        );
        // A chain the TLS layer of some other mount might have accepted: not ours.
        let rogue = ca("Admin Root");
        assert!(matches!(
            auth.authenticate(&none, Some(&leaf(&rogue, &["ops"])), now),
            Err(Denied::CertificateRejected(_))
        ));
        // Expired by the time of the request (rcgen's default end is 4096-01-01).
        let far = UnixTime::since_unix_epoch(std::time::Duration::from_secs(100_000_000_000));
        assert!(matches!(
            auth.authenticate(&none, Some(&leaf(&admin, &["ops"])), far),
            Err(Denied::CertificateRejected(_))
        ));
        assert!(matches!(
            auth.authenticate(&none, Some(&leaf(&admin, &[])), now),
            Err(Denied::CertificateName(_))
        ));
        assert_eq!(
            auth.authenticate(&none, None, now),
            Err(Denied::NoCredential)
        );
        // A header decides alone: a bad token is not rescued by a good certificate.
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {T1}").parse().unwrap(),
        );
        assert_eq!(
            auth.authenticate(&h, Some(&leaf(&admin, &["ops"])), now),
            Err(Denied::TokensNotConfigured)
        );
        // The CA's own certificates may not be admin roots.
        let der = admin.der().to_vec();
        let e = client_verifier(&[roots], &[der]).err().unwrap().to_string();
        assert!(e.contains("own root or intermediate"), "{e}");
    }
}
