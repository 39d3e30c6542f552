//! Minimal PEM (RFC 7468) encoding and decoding for certificates and keys: strict labels,
//! standard base64, 64-column lines.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Encodes `der` as one PEM block with `label` (e.g. "CERTIFICATE").
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("no `{0}` PEM block found")]
    Missing(String),
    #[error("PEM block `{0}` is not terminated")]
    Unterminated(String),
    #[error("PEM block `{0}` is not valid base64")]
    Base64(String),
}

/// All blocks with `label`, in order; blocks with other labels are skipped.
pub fn decode_all(text: &str, label: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let body_start = start + begin.len();
        let Some(stop) = rest[body_start..].find(&end) else {
            return Err(PemError::Unterminated(label.to_string()));
        };
        let body: String = rest[body_start..body_start + stop]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        out.push(
            STANDARD
                .decode(body)
                .map_err(|_| PemError::Base64(label.to_string()))?,
        );
        rest = &rest[body_start + stop + end.len()..];
    }
    Ok(out)
}

/// Exactly the first block with `label`.
pub fn decode_first(text: &str, label: &str) -> Result<Vec<u8>, PemError> {
    decode_all(text, label)?
        .into_iter()
        .next()
        .ok_or_else(|| PemError::Missing(label.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_several_blocks() {
        let a: Vec<u8> = (0..=255).collect();
        let text = format!(
            "junk\n{}{}",
            encode("CERTIFICATE", &a),
            encode("CERTIFICATE", b"x")
        );
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(
            decode_all(&text, "CERTIFICATE").unwrap(),
            vec![a, b"x".to_vec()]
        );
        assert_eq!(
            decode_first(&text, "PRIVATE KEY"),
            Err(PemError::Missing("PRIVATE KEY".into()))
        );
        assert!(decode_all("-----BEGIN X-----\nAAAA", "X").is_err());
        assert!(decode_all("-----BEGIN X-----\n!!\n-----END X-----", "X").is_err());
    }
}
