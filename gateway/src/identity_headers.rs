//! Identity passed upstream, and the stripping of every inbound copy of it.
//!
//! The upstream trusts these headers because only the gateway can set them: no inbound copy
//! passes, whatever its case (HTTP/1 field names are case-insensitive, RFC 9110 §5.1;
//! `http::HeaderMap` stores them lowercased, and HTTP/2 forbids uppercase names outright,
//! RFC 9113 §8.2.1) and however often it is repeated: the upstream request head is written by
//! copying the client's fields one by one, and every field [`is_identity_header`] names is left
//! out (`outbound.rs`) before the gateway's own are written.
//!
//! Values derived from the certificate are built once per connection ([`CertHeaders`]); values
//! from the inventory (status, tags, owner, platform) follow the snapshot and are built per
//! request.

use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use portcullis_policy::{DeviceIdentity, DeviceView};
use rustls_pki_types::CertificateDer;

pub(crate) const DEVICE_ID: HeaderName = HeaderName::from_static("x-portcullis-device-id");
pub(crate) const DEVICE_STATUS: HeaderName = HeaderName::from_static("x-portcullis-status");
pub(crate) const DEVICE_SERIAL: HeaderName = HeaderName::from_static("x-portcullis-serial");
pub(crate) const DEVICE_FINGERPRINT: HeaderName =
    HeaderName::from_static("x-portcullis-fingerprint");
pub(crate) const DEVICE_PLATFORM: HeaderName = HeaderName::from_static("x-portcullis-platform");
pub(crate) const DEVICE_TAGS: HeaderName = HeaderName::from_static("x-portcullis-tags");
pub(crate) const DEVICE_OWNER: HeaderName = HeaderName::from_static("x-portcullis-owner");
pub(crate) const ASSERTION: HeaderName = HeaderName::from_static("x-portcullis-assertion");
/// Envoy's header; SANITIZE_SET: whatever came in is replaced by ours.
pub(crate) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// RFC 9440 §2.2.
pub(crate) const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
/// RFC 9440 §2.3.
pub(crate) const CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Inbound headers that claim identity or client provenance. `x-portcullis-*` is matched as a
/// prefix. `Forwarded` (RFC 7239) and `X-Real-IP` are stripped too: they make the same kind of
/// claim as `X-Forwarded-For`, and the gateway is the edge.
const STRIPPED: &[&str] = &[
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

/// Whether an inbound field claims identity or client provenance and so never passes.
pub(crate) fn is_identity_header(name: &str) -> bool {
    // `HeaderName::as_str` is always lowercase.
    name.starts_with("x-portcullis-") || STRIPPED.contains(&name)
}

/// Where identity headers are set: the outbound request head as it is written
/// (`h1::head::RequestHead`, inbound copies having been skipped while it was copied), or a
/// `HeaderMap` (inbound copies removed by [`strip_inbound`] first).
pub(crate) trait HeaderSink {
    /// Sets `name` to `value`, replacing what the sink holds under `name`.
    fn set(&mut self, name: &HeaderName, value: &HeaderValue);
}

impl HeaderSink for HeaderMap {
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.insert(name.clone(), value.clone());
    }
}

impl HeaderSink for crate::h1::head::RequestHead {
    fn set(&mut self, name: &HeaderName, value: &HeaderValue) {
        // The head is written once, and every inbound copy of these names was left out.
        self.header(name, value);
    }
}

/// Removes every inbound copy of every identity header from a `HeaderMap` (the outbound head
/// is written without them instead: `outbound::copy_end_to_end`).
#[cfg(test)]
pub(crate) fn strip_inbound(headers: &mut HeaderMap) {
    // Collect first: removal while iterating the keys is not possible. The common case (none
    // present) allocates nothing.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_identity_header(name.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Sets `X-Forwarded-For` (`client_ip`, the client address: the gateway is the edge, so it replaces rather
/// than appends), `X-Forwarded-Proto: https` and `X-Forwarded-Host` (the host the client asked
/// for). Call after [`strip_inbound`].
pub(crate) fn set_forwarded(
    headers: &mut impl HeaderSink,
    client_ip: &HeaderValue,
    host: Option<&HeaderValue>,
) {
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    headers.set(&X_FORWARDED_FOR, client_ip);
    headers.set(&X_FORWARDED_PROTO, &HTTPS);
    if let Some(host) = host {
        headers.set(&X_FORWARDED_HOST, host);
    }
}

/// Which identity headers a route passes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HeaderChoices {
    pub plain: bool,
    pub xfcc: bool,
    pub client_cert: bool,
    pub assertion: bool,
}

impl HeaderChoices {
    pub fn from_config(list: &[portcullis_config::IdentityHeader]) -> Self {
        use portcullis_config::IdentityHeader as H;
        let mut c = Self::default();
        for h in list {
            match h {
                H::Plain => c.plain = true,
                H::Xfcc => c.xfcc = true,
                H::ClientCert => c.client_cert = true,
                H::Assertion => c.assertion = true,
            }
        }
        c
    }
}

/// Header values derived from the certificate, built once per connection.
#[derive(Debug, Clone)]
pub(crate) struct CertHeaders {
    pub device_id: Option<HeaderValue>,
    pub serial: HeaderValue,
    pub fingerprint: HeaderValue,
    /// The platform the certificate records, used when the inventory has none.
    pub cert_platform: Option<HeaderValue>,
    pub xfcc: HeaderValue,
    pub client_cert: HeaderValue,
    pub client_cert_chain: Option<HeaderValue>,
}

impl CertHeaders {
    /// `chain` is the chain the client presented, leaf first.
    pub fn build(identity: &DeviceIdentity, chain: &[CertificateDer<'_>]) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let client_cert = chain
            .first()
            .map(|leaf| sf_binary(&b64.encode(leaf.as_ref())))
            .unwrap_or_else(|| HeaderValue::from_static("::"));
        let client_cert_chain = (chain.len() > 1).then(|| {
            // RFC 9440 §2.3: an sf-list of sf-binary, the certificates after the leaf, in the
            // order presented.
            let list: Vec<String> = chain[1..]
                .iter()
                .map(|c| format!(":{}:", b64.encode(c.as_ref())))
                .collect();
            HeaderValue::from_str(&list.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
        });
        Self {
            device_id: identity.device_id.as_deref().map(sanitized),
            serial: sanitized(&identity.serial),
            fingerprint: sanitized(&identity.fingerprint_hex()),
            cert_platform: identity.platform.as_deref().map(sanitized),
            xfcc: xfcc(identity),
            client_cert,
            client_cert_chain,
        }
    }
}

/// RFC 8941 §3.3.5 Byte Sequence: `:` base64 `:`; base64 is always a valid header value.
fn sf_binary(b64: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(":{b64}:")).unwrap_or_else(|_| HeaderValue::from_static("::"))
}

/// Envoy's `X-Forwarded-Client-Cert` element: `Hash=<hex sha256>;Subject="...";URI=...;DNS=...`.
/// Subject is always quoted; other values are quoted when they contain `,`, `;`, `=` or `"`;
/// inside quotes `"` and `\` are backslash-escaped (Envoy's rules). URI and DNS repeat per SAN.
pub(crate) fn xfcc(identity: &DeviceIdentity) -> HeaderValue {
    let mut out = String::with_capacity(256);
    out.push_str("Hash=");
    out.push_str(&identity.fingerprint_hex());
    out.push_str(";Subject=");
    push_quoted(&mut out, &identity.subject);
    for uri in &identity.uri_sans {
        out.push_str(";URI=");
        push_value(&mut out, uri);
    }
    for dns in &identity.dns_sans {
        out.push_str(";DNS=");
        push_value(&mut out, dns);
    }
    sanitized(&out)
}

fn push_value(out: &mut String, value: &str) {
    if value.contains([',', ';', '=', '"']) {
        push_quoted(out, value);
    } else {
        out.push_str(value);
    }
}

fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// A header value from text that may hold anything a certificate or inventory can carry:
/// visible ASCII and space pass, every other byte (controls, DEL, UTF-8) is percent-encoded as
/// `%XX`, so the value is always valid (RFC 9110 §5.5) and never splits a header.
pub(crate) fn sanitized(text: &str) -> HeaderValue {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%') {
        if let Ok(v) = HeaderValue::from_str(text) {
            return v;
        }
    }
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Header values from the device's inventory record (status, tags, owner, platform). They
/// follow the status snapshot, so a connection builds them once per snapshot generation.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecordHeaders {
    status: Option<HeaderValue>,
    tags: Option<HeaderValue>,
    owner: Option<HeaderValue>,
    platform: Option<HeaderValue>,
}

impl RecordHeaders {
    /// `record` is the device's inventory record, if it has one.
    pub fn build(record: Option<DeviceView<'_>>) -> Self {
        let Some(record) = record else {
            return Self::default();
        };
        Self {
            status: Some(HeaderValue::from_static(record.status().as_str())),
            tags: (record.tags().len() > 0).then(|| {
                let tags: Vec<&str> = record.tags().collect();
                sanitized(&tags.join(","))
            }),
            owner: record.owner().map(sanitized),
            platform: record.platform().map(sanitized),
        }
    }
}

/// Adds the route's identity headers. `record` holds the values from the device's inventory
/// record; `assertion` the signed JWT when the route asks for one.
pub(crate) fn inject(
    headers: &mut impl HeaderSink,
    choices: HeaderChoices,
    cert: &CertHeaders,
    record: &RecordHeaders,
    assertion: Option<HeaderValue>,
) {
    if choices.plain {
        if let Some(id) = &cert.device_id {
            headers.set(&DEVICE_ID, id);
        }
        headers.set(&DEVICE_SERIAL, &cert.serial);
        headers.set(&DEVICE_FINGERPRINT, &cert.fingerprint);
        if let Some(status) = &record.status {
            headers.set(&DEVICE_STATUS, status);
        }
        if let Some(tags) = &record.tags {
            headers.set(&DEVICE_TAGS, tags);
        }
        if let Some(owner) = &record.owner {
            headers.set(&DEVICE_OWNER, owner);
        }
        // The inventory's platform wins over the one the certificate records.
        if let Some(platform) = record.platform.as_ref().or(cert.cert_platform.as_ref()) {
            headers.set(&DEVICE_PLATFORM, platform);
        }
    }
    if choices.xfcc {
        headers.set(&XFCC, &cert.xfcc);
    }
    if choices.client_cert {
        headers.set(&CLIENT_CERT, &cert.client_cert);
        if let Some(chain) = &cert.client_cert_chain {
            headers.set(&CLIENT_CERT_CHAIN, chain);
        }
    }
    if let Some(jwt) = assertion {
        headers.set(&ASSERTION, &jwt);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    pub(crate) fn identity() -> DeviceIdentity {
        DeviceIdentity {
            device_id: Some("SN-1234".into()),
            id_source: Some(portcullis_policy::IdSource::PermanentIdentifier),
            serial: "0a1b2c".into(),
            fingerprint: [0xab; 32],
            spki_sha256: [0xcd; 32],
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            issuer: "CN=Portcullis Issuing CA".into(),
            subject: "CN=SN-1234,O=Acme \"Labs\", Inc.".into(),
            dns_sans: vec!["dev1.example.com".into()],
            uri_sans: vec!["spiffe://portcullis.local/device/SN-1234".into()],
            attestation: Some("tpm".into()),
            platform: Some("linux".into()),
        }
    }

    fn spoofed() -> HeaderMap {
        // HTTP/1 field names arrive in any case; `HeaderName::from_bytes` folds them to
        // lowercase exactly as hyper's parser does. Several are repeated.
        let raw: &[(&[u8], &str)] = &[
            (b"X-Portcullis-Device-Id", "evil"),
            (b"x-portcullis-device-id", "evil2"),
            (b"X-PORTCULLIS-STATUS", "active"),
            (b"X-Portcullis-Assertion", "eyJ..."),
            (b"x-portcullis-anything-new", "x"),
            (b"X-Forwarded-Client-Cert", "Hash=00"),
            (b"x-forwarded-client-cert", "Hash=11"),
            (b"Client-Cert", ":AAAA:"),
            (b"CLIENT-CERT-CHAIN", ":AAAA:"),
            (b"X-Forwarded-For", "10.0.0.1"),
            (b"x-forwarded-for", "10.0.0.2"),
            (b"X-Forwarded-Proto", "http"),
            (b"X-Forwarded-Host", "evil.example"),
            (b"Forwarded", "for=10.0.0.3"),
            (b"X-Real-IP", "10.0.0.4"),
            (b"Accept", "*/*"),
            (b"X-PortcullisFoo", "kept: not our prefix"),
        ];
        let mut h = HeaderMap::new();
        for (name, value) in raw {
            h.append(
                HeaderName::from_bytes(name).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        h
    }

    #[test]
    fn strips_every_case_and_repetition() {
        let mut h = spoofed();
        strip_inbound(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "x-portcullisfoo"]);
    }

    #[test]
    fn spoofed_values_never_survive_injection() {
        let mut h = spoofed();
        strip_inbound(&mut h);
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("192.0.2.7"),
            Some(&HeaderValue::from_static("app.example.com:8443")),
        );
        let cert = CertHeaders::build(&identity(), &[CertificateDer::from(vec![1u8, 2, 3])]);
        let all = HeaderChoices {
            plain: true,
            xfcc: true,
            client_cert: true,
            assertion: true,
        };
        inject(
            &mut h,
            all,
            &cert,
            &RecordHeaders::build(None),
            Some(HeaderValue::from_static("jwt")),
        );
        let all_values = |name: &str| -> Vec<String> {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .collect()
        };
        assert_eq!(all_values("x-portcullis-device-id"), vec!["SN-1234"]);
        assert_eq!(all_values("x-forwarded-for"), vec!["192.0.2.7"]);
        assert_eq!(all_values("x-forwarded-proto"), vec!["https"]);
        assert_eq!(all_values("x-forwarded-host"), vec!["app.example.com:8443"]);
        assert_eq!(all_values("x-portcullis-assertion"), vec!["jwt"]);
        assert_eq!(all_values("client-cert"), vec![":AQID:"]);
        assert!(all_values("client-cert-chain").is_empty());
        assert!(
            all_values("x-portcullis-status").is_empty(),
            "no record → no status"
        );
        assert!(all_values("x-portcullis-anything-new").is_empty());
        assert!(all_values("forwarded").is_empty());
        assert_eq!(all_values("x-forwarded-client-cert").len(), 1);
        assert_eq!(all_values("x-portcullis-platform"), vec!["linux"]);
    }

    #[test]
    fn plain_headers_follow_the_inventory_record() {
        let mut h = HeaderMap::new();
        let cert = CertHeaders::build(&identity(), &[CertificateDer::from(vec![1u8])]);
        let record = portcullis_policy::DeviceRecord {
            id: "SN-1234".into(),
            status: portcullis_policy::DeviceStatus::Active,
            tags: ["eng".to_string(), "admin".to_string()]
                .into_iter()
                .collect(),
            owner: Some("alice@example.com".into()),
            platform: Some("macos".into()),
        };
        let plain = HeaderChoices {
            plain: true,
            ..Default::default()
        };
        inject(
            &mut h,
            plain,
            &cert,
            &RecordHeaders::build(Some(record.view())),
            None,
        );
        assert_eq!(h["x-portcullis-status"], "active");
        assert_eq!(h["x-portcullis-tags"], "admin,eng");
        assert_eq!(h["x-portcullis-owner"], "alice@example.com");
        assert_eq!(h["x-portcullis-platform"], "macos");
        assert_eq!(h["x-portcullis-serial"], "0a1b2c");
        assert_eq!(h["x-portcullis-fingerprint"], "ab".repeat(32).as_str());
        assert!(h.get("x-forwarded-client-cert").is_none());
        assert!(h.get("client-cert").is_none());
        assert!(h.get("x-portcullis-assertion").is_none());
    }

    #[test]
    fn xfcc_format_quotes_and_escapes() {
        let v = xfcc(&identity());
        assert_eq!(
            v.to_str().expect("ascii"),
            format!(
                "Hash={};Subject=\"CN=SN-1234,O=Acme \\\"Labs\\\", Inc.\";\
                 URI=spiffe://portcullis.local/device/SN-1234;DNS=dev1.example.com",
                "ab".repeat(32)
            )
        );
        let mut id = identity();
        id.uri_sans = vec!["spiffe://x/a;b".into(), "https://y/z".into()];
        id.dns_sans.clear();
        let v = xfcc(&id);
        assert!(v
            .to_str()
            .expect("ascii")
            .ends_with(";URI=\"spiffe://x/a;b\";URI=https://y/z"));
    }

    #[test]
    fn client_cert_is_rfc9440_sf_binary_and_chain_is_a_list() {
        let leaf = CertificateDer::from(b"leaf-der".to_vec());
        let inter = CertificateDer::from(b"inter".to_vec());
        let h = CertHeaders::build(&identity(), &[leaf, inter]);
        assert_eq!(h.client_cert, ":bGVhZi1kZXI=:");
        assert_eq!(
            h.client_cert_chain
                .as_ref()
                .map(|v| v.to_str().unwrap_or("")),
            Some(":aW50ZXI=:")
        );
    }

    #[test]
    fn sanitized_values_cannot_split_or_smuggle() {
        assert_eq!(sanitized("plain value"), "plain value");
        assert_eq!(sanitized("a\r\nX-Evil: 1"), "a%0D%0AX-Evil: 1");
        assert_eq!(sanitized("Zoë"), "Zo%C3%AB");
        assert_eq!(sanitized("100%"), "100%25");
    }
}
