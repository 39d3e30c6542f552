//! The signed identity assertion `X-Portcullis-Assertion`: an ES256 JWT (RFC 7519, RFC 7518
//! §3.4) that an upstream can verify against the gateway's JWKS (RFC 7517) without trusting the
//! network path.
//!
//! Claims: `iss`, `aud` (the request host without port), `sub` (device id), `iat`, `nbf`, `exp`
//! (`ttl` from config, never more than 5 minutes), `jti`, and the device claims `status`,
//! `serial`, `fingerprint`, `platform`, `tags`, `owner`, `attestation`.
//!
//! An ES256 signature costs tens of microseconds, so a signed assertion is cached per
//! (certificate fingerprint, audience, status snapshot generation) and re-signed once less than
//! half its lifetime remains. Consequence: **`jti` identifies a cached token, not a request** —
//! every request of a device to one audience within the same half-ttl carries the same `jti`.
//! An upstream that wants replay protection per request must not rely on `jti` alone.
//!
//! Keys: `current.pem` and `previous.pem` (PKCS#8, 0600) in `assertion.key_dir`, created if
//! missing; `rotate()` moves current → previous and generates a new current. Both keys are
//! published, so tokens signed just before a rotation still verify. `kid` is the RFC 7638 JWK
//! thumbprint (base64url SHA-256 of the canonical `{"crv","kty","x","y"}` JSON).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_policy::{DeviceIdentity, DeviceView};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where the JWKS is published, on the gateway listener and on the admin listener.
pub const JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";

/// Hard upper bound of an assertion's lifetime, whatever the config says.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(5 * 60);

const CURRENT: &str = "current.pem";
const PREVIOUS: &str = "previous.pem";

/// One P-256 signing key.
#[derive(Clone)]
struct SigningKey {
    pkcs8: Arc<[u8]>,
    kid: String,
    encoding: EncodingKey,
    /// base64url affine coordinates, for the JWK.
    x: String,
    y: String,
}

impl SigningKey {
    fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| anyhow::anyhow!("not a P-256 PKCS#8 private key: {e}"))?;
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || X (32) || Y (32).
        if point.len() != 65 || point[0] != 0x04 {
            bail!("unexpected P-256 public key encoding");
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x = b64.encode(&point[1..33]);
        let y = b64.encode(&point[33..65]);
        Ok(Self {
            pkcs8: Arc::from(der),
            kid: jwk_thumbprint(&x, &y),
            encoding: EncodingKey::from_ec_der(der),
            x,
            y,
        })
    }

    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "use": "sig",
            "alg": "ES256",
            "kid": self.kid,
        })
    }

    fn pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }
}

/// RFC 7638 §3.2: the required members of an EC key in lexicographic order, no whitespace.
fn jwk_thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    fingerprint: [u8; 32],
    audience: Box<str>,
    generation: u64,
}

struct Cached {
    value: HeaderValue,
    exp: u64,
}

/// The assertion the previous request of a connection got (see
/// [`AssertionSigner::token_for_connection`]).
pub(crate) struct TokenMemo {
    keys: Arc<KeySet>,
    audience: Box<str>,
    generation: u64,
    exp: u64,
    value: HeaderValue,
}

/// The keys in force with their JWKS and the token cache (new per key set, so a rotation never
/// serves a token signed with a key that is no longer current).
struct KeySet {
    current: SigningKey,
    jwks: Bytes,
    cache: moka::sync::Cache<CacheKey, Arc<Cached>>,
}

impl KeySet {
    fn new(current: SigningKey, previous: Option<SigningKey>, ttl: Duration) -> Self {
        let keys: Vec<serde_json::Value> = std::iter::once(&current)
            .chain(previous.as_ref())
            .map(SigningKey::jwk)
            .collect();
        let jwks = serde_json::to_vec_pretty(&serde_json::json!({ "keys": keys }))
            .map(Bytes::from)
            .unwrap_or_default();
        Self {
            current,
            jwks,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    serial: &'a str,
    fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a str>,
    tags: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attestation: Option<&'a str>,
}

pub(crate) struct AssertionSigner {
    issuer: String,
    ttl: Duration,
    key_dir: Option<PathBuf>,
    keys: ArcSwap<KeySet>,
    rotating: Mutex<()>,
}

impl AssertionSigner {
    /// Loads (or creates) the keys in `cfg.key_dir`, or makes an in-memory key when unset.
    pub fn new(cfg: &portcullis_config::AssertionConfig) -> anyhow::Result<Self> {
        let ttl = cfg.ttl.min(MAX_TTL);
        if ttl < Duration::from_secs(2) {
            bail!("assertion.ttl must be at least 2s");
        }
        let (current, previous) = match &cfg.key_dir {
            Some(dir) => load_or_create(dir)?,
            None => (SigningKey::generate()?, None),
        };
        Ok(Self {
            issuer: cfg.issuer.clone(),
            ttl,
            key_dir: cfg.key_dir.clone(),
            keys: ArcSwap::from_pointee(KeySet::new(current, previous, ttl)),
            rotating: Mutex::new(()),
        })
    }

    /// True if this signer was built from an equivalent config (a reload may then keep it,
    /// with its cache).
    pub fn same_config(&self, cfg: &portcullis_config::AssertionConfig) -> bool {
        self.issuer == cfg.issuer && self.ttl == cfg.ttl.min(MAX_TTL) && self.key_dir == cfg.key_dir
    }

    /// The JWKS document (RFC 7517 §5): current key first, then the previous one.
    pub fn jwks(&self) -> Bytes {
        self.keys.load().jwks.clone()
    }

    #[cfg(test)]
    pub fn current_kid(&self) -> String {
        self.keys.load().current.kid.clone()
    }

    /// Moves current → previous and makes a new current key (on disk when `key_dir` is set).
    pub fn rotate(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.rotating.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.keys.load_full();
        let next = SigningKey::generate()?;
        if let Some(dir) = &self.key_dir {
            write_private(&dir.join(PREVIOUS), &old.current.pem())?;
            write_private(&dir.join(CURRENT), &next.pem())?;
        }
        tracing::info!(new_kid = %next.kid, previous_kid = %old.current.kid, "assertion key rotated");
        self.keys.store(Arc::new(KeySet::new(
            next,
            Some(old.current.clone()),
            self.ttl,
        )));
        Ok(())
    }

    /// The assertion for this device and audience, from the cache when it has more than half
    /// its lifetime left. `None` when the certificate names no device (no `sub` to assert).
    /// The shared-cache path alone (the gateway goes through `token_for_connection`).
    #[cfg(test)]
    pub fn token(
        &self,
        identity: &DeviceIdentity,
        record: Option<DeviceView<'_>>,
        audience: &str,
        generation: u64,
        now: SystemTime,
    ) -> anyhow::Result<Option<HeaderValue>> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let keys = self.keys.load_full();
        Ok(self
            .token_with_exp(&keys, identity, record, audience, generation, now)?
            .map(|(value, _)| value))
    }

    /// [`AssertionSigner::token`] for the requests of one connection: the token the previous
    /// request got is reused while it is for the same key set, audience and snapshot
    /// generation and has more than half its lifetime left — the same rule as the shared
    /// cache, without its hash lookup and key allocation.
    pub fn token_for_connection(
        &self,
        memo: &mut Option<TokenMemo>,
        identity: &DeviceIdentity,
        record: Option<DeviceView<'_>>,
        audience: &str,
        generation: u64,
        now: SystemTime,
    ) -> anyhow::Result<Option<HeaderValue>> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let keys = self.keys.load();
        if let Some(m) = memo.as_ref() {
            if Arc::ptr_eq(&m.keys, &keys)
                && m.generation == generation
                && *m.audience == *audience
                && m.exp.saturating_sub(now) * 2 > self.ttl.as_secs()
            {
                return Ok(Some(m.value.clone()));
            }
        }
        let keys = arc_swap::Guard::into_inner(keys);
        let Some((value, exp)) =
            self.token_with_exp(&keys, identity, record, audience, generation, now)?
        else {
            return Ok(None);
        };
        *memo = Some(TokenMemo {
            keys,
            audience: audience.into(),
            generation,
            exp,
            value: value.clone(),
        });
        Ok(Some(value))
    }

    fn token_with_exp(
        &self,
        keys: &KeySet,
        identity: &DeviceIdentity,
        record: Option<DeviceView<'_>>,
        audience: &str,
        generation: u64,
        now: u64,
    ) -> anyhow::Result<Option<(HeaderValue, u64)>> {
        let Some(device_id) = identity.device_id.as_deref() else {
            return Ok(None);
        };
        let key = CacheKey {
            fingerprint: identity.fingerprint,
            audience: audience.into(),
            generation,
        };
        if let Some(hit) = keys.cache.get(&key) {
            if hit.exp.saturating_sub(now) * 2 > self.ttl.as_secs() {
                return Ok(Some((hit.value.clone(), hit.exp)));
            }
        }
        let exp = now + self.ttl.as_secs();
        let claims = Claims {
            iss: &self.issuer,
            aud: audience,
            sub: device_id,
            iat: now,
            nbf: now,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
            status: record.map(|r| r.status().as_str()),
            serial: &identity.serial,
            fingerprint: identity.fingerprint_hex(),
            platform: record
                .and_then(|r| r.platform())
                .or(identity.platform.as_deref()),
            tags: record.map(|r| r.tags().collect()).unwrap_or_default(),
            owner: record.and_then(|r| r.owner()),
            attestation: identity.attestation.as_deref(),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(keys.current.kid.clone());
        let jwt = jsonwebtoken::encode(&header, &claims, &keys.current.encoding)
            .context("cannot sign the identity assertion")?;
        let value = HeaderValue::from_str(&jwt).context("assertion is not a header value")?;
        keys.cache.insert(
            key,
            Arc::new(Cached {
                value: value.clone(),
                exp,
            }),
        );
        Ok(Some((value, exp)))
    }
}

fn load_or_create(dir: &Path) -> anyhow::Result<(SigningKey, Option<SigningKey>)> {
    if !dir.exists() {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(dir)
            .with_context(|| format!("assertion.key_dir: cannot create {}", dir.display()))?;
    }
    let current_path = dir.join(CURRENT);
    let current = match read_key(&current_path)? {
        Some(key) => key,
        None => {
            let key = SigningKey::generate()?;
            write_private(&current_path, &key.pem())?;
            tracing::info!(kid = %key.kid, path = %current_path.display(), "generated assertion signing key");
            key
        }
    };
    let previous = read_key(&dir.join(PREVIOUS))?;
    Ok((current, previous))
}

/// Reads a PKCS#8 P-256 key; `None` if the file does not exist.
fn read_key(path: &Path) -> anyhow::Result<Option<SigningKey>> {
    let pem = match fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "assertion signing key is readable by group or others; expected 0600");
            }
        }
    }
    let der = match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(rustls_pki_types::PrivateKeyDer::Pkcs8(der))) => der,
        Ok(Some(_)) => bail!(
            "{}: the key must be PKCS#8 (BEGIN PRIVATE KEY)",
            path.display()
        ),
        Ok(None) => bail!("{}: no private key in the file", path.display()),
        Err(e) => bail!("{}: not a PEM file: {e}", path.display()),
    };
    SigningKey::from_pkcs8(der.secret_pkcs8_der())
        .map(Some)
        .with_context(|| format!("{}", path.display()))
}

/// Writes a secret atomically (temp file 0600 + rename).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity_headers::tests::identity;
    use jsonwebtoken::{DecodingKey, Validation};

    fn config(dir: Option<PathBuf>) -> portcullis_config::AssertionConfig {
        portcullis_config::AssertionConfig {
            issuer: "https://gw.example.com".into(),
            ttl: Duration::from_secs(120),
            key_dir: dir,
        }
    }

    fn record() -> portcullis_policy::DeviceRecord {
        portcullis_policy::DeviceRecord {
            id: "SN-1234".into(),
            status: portcullis_policy::DeviceStatus::Active,
            tags: ["eng".to_string()].into_iter().collect(),
            owner: Some("alice@example.com".into()),
            platform: Some("macos".into()),
        }
    }

    /// Verifies `jwt` with the JWKS document only, as an upstream would.
    fn verify(jwks: &[u8], jwt: &str, aud: &str) -> serde_json::Value {
        let header = jsonwebtoken::decode_header(jwt).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        let kid = header.kid.expect("kid");
        let jwks: serde_json::Value = serde_json::from_slice(jwks).expect("jwks json");
        let jwk = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .expect("kid published");
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["alg"], "ES256");
        let x = jwk["x"].as_str().expect("x");
        let y = jwk["y"].as_str().expect("y");
        assert_eq!(kid, jwk_thumbprint(x, y), "kid is the RFC 7638 thumbprint");
        let key = DecodingKey::from_ec_components(x, y).expect("ec key");
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[aud]);
        validation.set_issuer(&["https://gw.example.com"]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
            .expect("assertion verifies against the JWKS")
            .claims
    }

    #[test]
    fn claims_verify_against_the_jwks() {
        let signer = AssertionSigner::new(&config(None)).expect("signer");
        let jwt = signer
            .token(
                &identity(),
                Some(record().view()),
                "app.example.com",
                7,
                SystemTime::now(),
            )
            .expect("sign")
            .expect("device id present");
        let claims = verify(
            &signer.jwks(),
            jwt.to_str().expect("ascii"),
            "app.example.com",
        );
        assert_eq!(claims["sub"], "SN-1234");
        assert_eq!(claims["aud"], "app.example.com");
        assert_eq!(claims["status"], "active");
        assert_eq!(claims["serial"], "0a1b2c");
        assert_eq!(claims["fingerprint"], "ab".repeat(32));
        assert_eq!(claims["platform"], "macos");
        assert_eq!(claims["tags"], serde_json::json!(["eng"]));
        assert_eq!(claims["owner"], "alice@example.com");
        assert_eq!(claims["attestation"], "tpm");
        let iat = claims["iat"].as_u64().expect("iat");
        assert_eq!(claims["exp"].as_u64(), Some(iat + 120));
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().expect("jti")).is_ok());
    }

    #[test]
    fn ttl_is_capped_at_five_minutes() {
        let mut cfg = config(None);
        cfg.ttl = Duration::from_secs(3600);
        let signer = AssertionSigner::new(&cfg).expect("signer");
        let jwt = signer
            .token(&identity(), None, "a", 1, SystemTime::now())
            .expect("sign")
            .expect("token");
        let claims = verify(&signer.jwks(), jwt.to_str().expect("ascii"), "a");
        let ttl = claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0);
        assert_eq!(ttl, 300);
    }

    #[test]
    fn cached_per_device_audience_generation_and_resigned_after_half_ttl() {
        let signer = AssertionSigner::new(&config(None)).expect("signer");
        let id = identity();
        let t0 = SystemTime::now();
        let sign = |aud: &str, gen: u64, at: SystemTime| {
            signer
                .token(&id, Some(record().view()), aud, gen, at)
                .expect("sign")
                .expect("token")
        };
        let a = sign("a.example", 1, t0);
        assert_eq!(
            a,
            sign("a.example", 1, t0 + Duration::from_secs(30)),
            "cache hit"
        );
        assert_ne!(a, sign("b.example", 1, t0), "per audience");
        assert_ne!(a, sign("a.example", 2, t0), "per snapshot generation");
        assert_ne!(
            a,
            sign("a.example", 1, t0 + Duration::from_secs(61)),
            "re-signed once less than half the ttl remains"
        );
        let mut no_id = identity();
        no_id.device_id = None;
        assert!(signer
            .token(&no_id, None, "a", 1, t0)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn a_connection_reuses_its_token_by_the_same_rules_as_the_cache() {
        let signer = AssertionSigner::new(&config(None)).expect("signer");
        let id = identity();
        let t0 = SystemTime::now();
        let mut memo = None;
        let mut sign = |aud: &str, gen: u64, at: SystemTime| {
            signer
                .token_for_connection(&mut memo, &id, Some(record().view()), aud, gen, at)
                .expect("sign")
                .expect("token")
        };
        let a = sign("a.example", 1, t0);
        assert_eq!(a, sign("a.example", 1, t0 + Duration::from_secs(30)));
        assert_ne!(a, sign("a.example", 2, t0), "per snapshot generation");
        let b = sign("b.example", 2, t0);
        assert_ne!(a, b, "per audience");
        assert_ne!(
            b,
            sign("b.example", 2, t0 + Duration::from_secs(61)),
            "re-signed once less than half the ttl remains"
        );
        let before = sign("c.example", 1, t0);
        signer.rotate().expect("rotate");
        let after = sign("c.example", 1, t0);
        assert_ne!(
            before, after,
            "after a rotation the old key's token is not reused"
        );
    }

    #[test]
    fn keys_persist_0600_and_rotation_keeps_the_previous_key_published() {
        let dir = std::env::temp_dir().join(format!("pc-keys-{}", uuid::Uuid::new_v4()));
        let signer = AssertionSigner::new(&config(Some(dir.clone()))).expect("signer");
        let kid0 = signer.current_kid();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(CURRENT))
                .expect("current.pem")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Same directory → same key.
        let again = AssertionSigner::new(&config(Some(dir.clone()))).expect("reload");
        assert_eq!(again.current_kid(), kid0);

        let before = signer
            .token(&identity(), None, "app", 1, SystemTime::now())
            .expect("sign")
            .expect("token");
        signer.rotate().expect("rotate");
        let kid1 = signer.current_kid();
        assert_ne!(kid0, kid1);
        let jwks: serde_json::Value = serde_json::from_slice(&signer.jwks()).expect("json");
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert_eq!(kids, vec![kid1.as_str(), kid0.as_str()]);
        // A token signed before the rotation still verifies; new ones use the new key.
        verify(&signer.jwks(), before.to_str().expect("ascii"), "app");
        let after = signer
            .token(&identity(), None, "app", 1, SystemTime::now())
            .expect("sign")
            .expect("token");
        let header = jsonwebtoken::decode_header(after.to_str().expect("ascii")).expect("hdr");
        assert_eq!(header.kid.as_deref(), Some(kid1.as_str()));
        // On disk too.
        let reloaded = AssertionSigner::new(&config(Some(dir.clone()))).expect("reload");
        assert_eq!(reloaded.current_kid(), kid1);
        assert_eq!(reloaded.jwks(), signer.jwks());
        let _ = fs::remove_dir_all(&dir);
    }
}
