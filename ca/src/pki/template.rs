//! Certificate templates: what an issued certificate may look like, decided by configuration,
//! never by the requester. A CSR contributes its public key and nothing else; names come from
//! the validated order, usages and lifetime from the template.

use std::time::Duration;

use super::PkiError;

/// The shortest lifetime a template may ask for. Below a few minutes clock skew between
/// devices and enforcement points makes certificates unusable.
pub const MIN_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Device certificates are short-lived by design (see ARCHITECTURE.md: renewal at 2/3).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The CA-wide ceiling unless configured otherwise.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// notBefore is set this far in the past (unless the order asked for a notBefore) so that a
/// verifier whose clock is slightly behind does not reject a certificate it just received.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Who the certificate is for; decides the extended key usage (RFC 5280 §4.2.1.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A device proving itself to enforcement points: EKU id-kp-clientAuth only.
    Device,
    /// A workload serving TLS (http-01 issuance): EKU id-kp-serverAuth only.
    Workload,
}

/// Key usages (RFC 5280 §4.2.1.3) a leaf may carry. Never keyCertSign or cRLSign: a template
/// cannot make a CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    DigitalSignature,
    KeyEncipherment,
    KeyAgreement,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTemplate {
    pub name: String,
    pub purpose: Purpose,
    pub lifetime: Duration,
    pub key_usages: Vec<KeyUsage>,
}

impl CertTemplate {
    pub fn device() -> Self {
        Self {
            name: "device".into(),
            purpose: Purpose::Device,
            lifetime: DEFAULT_LIFETIME,
            key_usages: vec![KeyUsage::DigitalSignature],
        }
    }

    pub fn workload() -> Self {
        Self {
            name: "workload".into(),
            purpose: Purpose::Workload,
            lifetime: DEFAULT_LIFETIME,
            // keyEncipherment for RSA keys in TLS 1.2 RSA key exchange; harmless for ECDSA
            // keys, which verifiers check against digitalSignature.
            key_usages: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        }
    }

    /// Checks the template against the CA's lifetime policy.
    pub fn validate(&self, policy: &LifetimePolicy) -> Result<(), PkiError> {
        policy
            .check(self.lifetime)
            .map_err(|e| PkiError::Template(format!("template `{}`: {e}", self.name)))?;
        if self.key_usages.is_empty() {
            return Err(PkiError::Template(format!(
                "template `{}` has no key usage",
                self.name
            )));
        }
        Ok(())
    }
}

/// Where relying parties check a leaf's revocation: the CRL Distribution Points extension
/// (RFC 5280 §4.2.1.13) and the Authority Information Access extension with an id-ad-ocsp
/// access method (§4.2.2.1, RFC 6960 §3.1). Plain `http://` URLs: fetching them must not
/// depend on the certificates whose status they tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationUrls {
    pub crl: Option<String>,
    pub ocsp: Option<String>,
}

impl RevocationUrls {
    /// Adds the extensions to a leaf's parameters (both non-critical, as §4.2.1.13 and
    /// §4.2.2.1 recommend).
    pub fn apply(&self, params: &mut rcgen::CertificateParams) {
        if let Some(crl) = &self.crl {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![crl.clone()],
            }];
        }
        if let Some(ocsp) = &self.ocsp {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 5, 5, 7, 1, 1],
                    aia_ocsp(ocsp),
                ));
        }
    }
}

/// `AuthorityInfoAccessSyntax ::= SEQUENCE OF AccessDescription` with one
/// `AccessDescription { accessMethod id-ad-ocsp, accessLocation uniformResourceIdentifier [6] }`.
fn aia_ocsp(url: &str) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            // URLs are configuration, far below 64 KiB; validation keeps them short.
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    let id_ad_ocsp = tlv(0x06, &[0x2b, 6, 1, 5, 5, 7, 48, 1]);
    let location = tlv(0x86, url.as_bytes());
    let description = tlv(0x30, &[id_ad_ocsp, location].concat());
    tlv(0x30, &description)
}

/// The lifetimes the CA allows, whatever a template or an order asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifetimePolicy {
    pub min: Duration,
    pub max: Duration,
}

impl Default for LifetimePolicy {
    fn default() -> Self {
        Self {
            min: MIN_LIFETIME,
            max: DEFAULT_MAX_LIFETIME,
        }
    }
}

impl LifetimePolicy {
    pub fn new(max: Duration) -> Result<Self, PkiError> {
        if max < MIN_LIFETIME {
            return Err(PkiError::Template(format!(
                "maximum lifetime {}s is below the {}s minimum",
                max.as_secs(),
                MIN_LIFETIME.as_secs()
            )));
        }
        Ok(Self {
            min: MIN_LIFETIME,
            max,
        })
    }

    /// The longest lifetime allowed.
    pub fn max(&self) -> Duration {
        self.max
    }

    pub fn check(&self, lifetime: Duration) -> Result<(), String> {
        if lifetime < self.min {
            return Err(format!(
                "lifetime {}s is below the {}s minimum",
                lifetime.as_secs(),
                self.min.as_secs()
            ));
        }
        if lifetime > self.max {
            return Err(format!(
                "lifetime {}s exceeds the CA maximum of {}s",
                lifetime.as_secs(),
                self.max.as_secs()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_bounded() {
        let policy = LifetimePolicy::default();
        assert!(CertTemplate::device().validate(&policy).is_ok());
        let mut t = CertTemplate::device();
        t.lifetime = Duration::from_secs(60);
        assert!(t.validate(&policy).is_err());
        t.lifetime = Duration::from_secs(365 * 24 * 3600);
        assert!(t.validate(&policy).is_err());
        t.lifetime = MIN_LIFETIME;
        assert!(t.validate(&policy).is_ok());
        assert!(LifetimePolicy::new(Duration::from_secs(1)).is_err());
        let mut t = CertTemplate::workload();
        t.key_usages.clear();
        assert!(t.validate(&policy).is_err());
    }
}

#[cfg(test)]
mod revocation_url_tests {
    use super::*;

    #[test]
    fn aia_carries_one_ocsp_uri() {
        let url = "http://ca.test:8080/ocsp";
        let der = aia_ocsp(url);
        let mut expected = vec![
            0x30, 0x26, 0x30, 0x24, 0x06, 0x08, 0x2b, 6, 1, 5, 5, 7, 48, 1,
        ];
        expected.extend([0x86, url.len() as u8]);
        expected.extend(url.as_bytes());
        assert_eq!(der, expected);
        assert_eq!(aia_ocsp(&"x".repeat(300))[..4], [0x30, 0x82, 0x01, 0x3e]);
    }
}
