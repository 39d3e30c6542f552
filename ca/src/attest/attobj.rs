//! The attestation object of `device-attest-01` (draft-ietf-acme-device-attest §5): the client
//! POSTs `{"attObj": base64url(CBOR)}` where the CBOR is the WebAuthn attestation object
//! `{fmt: tstr, attStmt: map, ? authData: bstr}` (W3C WebAuthn §6.5.4).
//!
//! Outside input: sizes and nesting are bounded before and while decoding, every malformed
//! shape has its own error, and nothing here panics.

use ciborium::value::Value;
use serde_json::{Map, Value as Json};

use super::{err, AttestError, Rule};

/// Largest CBOR attestation object accepted. Real ones are 1.5–4 KiB (two or three
/// certificates and a few TPM structures); 64 KiB leaves room for long chains.
pub const MAX_ATTOBJ_BYTES: usize = 64 * 1024;
/// Deepest CBOR nesting (arrays, maps, tags) accepted. A valid object nests three deep
/// (attObj map → attStmt map → x5c array).
pub const MAX_CBOR_DEPTH: usize = 8;
/// Most certificates accepted in an `x5c`.
pub const MAX_X5C: usize = 8;

/// A decoded attestation object.
#[derive(Debug, Clone, PartialEq)]
pub struct AttObj {
    pub fmt: String,
    pub att_stmt: AttStmt,
    /// WebAuthn `authData`; absent in ACME objects from Apple and YubiKey clients.
    pub auth_data: Option<Vec<u8>>,
}

/// The format-specific `attStmt` map, with text keys (WebAuthn §6.5.4: "attStmt ... a map
/// whose keys are text").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttStmt {
    entries: Vec<(String, Value)>,
}

impl AttStmt {
    /// Builds a statement from entries (tests, and callers that construct objects).
    pub fn from_entries(entries: Vec<(String, Value)>) -> Self {
        Self { entries }
    }

    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A required byte string field.
    pub fn bytes(&self, fmt: &str, key: &str) -> Result<&[u8], AttestError> {
        match self.get(key) {
            Some(Value::Bytes(b)) => Ok(b),
            Some(_) => err(
                Rule::StatementField,
                format!("{fmt}: attStmt.{key} is not a byte string"),
            ),
            None => err(
                Rule::StatementField,
                format!("{fmt}: attStmt.{key} is missing"),
            ),
        }
    }

    /// A required integer field (COSE algorithm identifiers, RFC 9053 / IANA COSE registry).
    pub fn int(&self, fmt: &str, key: &str) -> Result<i64, AttestError> {
        match self.get(key) {
            Some(Value::Integer(i)) => i64::try_from(*i).or_else(|_| {
                err(
                    Rule::StatementField,
                    format!("{fmt}: attStmt.{key} is out of range"),
                )
            }),
            Some(_) => err(
                Rule::StatementField,
                format!("{fmt}: attStmt.{key} is not an integer"),
            ),
            None => err(
                Rule::StatementField,
                format!("{fmt}: attStmt.{key} is missing"),
            ),
        }
    }

    /// A required text field.
    pub fn text(&self, fmt: &str, key: &str) -> Result<&str, AttestError> {
        match self.get(key) {
            Some(Value::Text(t)) => Ok(t),
            Some(_) => err(
                Rule::StatementField,
                format!("{fmt}: attStmt.{key} is not a text string"),
            ),
            None => err(
                Rule::StatementField,
                format!("{fmt}: attStmt.{key} is missing"),
            ),
        }
    }

    /// `x5c`: a non-empty array of DER certificates, leaf first (WebAuthn §8.2, §8.3).
    pub fn x5c(&self, fmt: &str) -> Result<Vec<&[u8]>, AttestError> {
        let arr = match self.get("x5c") {
            Some(Value::Array(a)) => a,
            Some(_) => {
                return err(
                    Rule::StatementField,
                    format!("{fmt}: attStmt.x5c is not an array"),
                )
            }
            None => {
                return err(
                    Rule::StatementField,
                    format!("{fmt}: attStmt.x5c is missing"),
                )
            }
        };
        if arr.is_empty() {
            return err(Rule::StatementField, format!("{fmt}: attStmt.x5c is empty"));
        }
        if arr.len() > MAX_X5C {
            return err(
                Rule::StatementField,
                format!(
                    "{fmt}: attStmt.x5c has {} certificates, more than {MAX_X5C}",
                    arr.len()
                ),
            );
        }
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Bytes(b) => Ok(&b[..]),
                _ => err(
                    Rule::StatementField,
                    format!("{fmt}: attStmt.x5c[{i}] is not a byte string"),
                ),
            })
            .collect()
    }
}

/// Reads the challenge response payload `{"attObj": "<base64url>"}`; other members are
/// ignored (RFC 8555 §7.5.1 lets challenge types define their payload; unknown fields are
/// ignored as everywhere in ACME).
pub fn parse_payload(payload: &Map<String, Json>) -> Result<AttObj, AttestError> {
    let b64 = match payload.get("attObj") {
        Some(Json::String(s)) => s,
        Some(_) => return err(Rule::PayloadShape, "payload: attObj is not a string"),
        None => return err(Rule::PayloadShape, "payload: attObj is missing"),
    };
    from_base64url(b64)
}

/// base64url without padding (RFC 8555 §6.1, RFC 4648 §5) → [`parse`].
pub fn from_base64url(b64: &str) -> Result<AttObj, AttestError> {
    use base64::Engine as _;
    if b64.len() > MAX_ATTOBJ_BYTES.div_ceil(3) * 4 {
        return err(
            Rule::CborTooLarge,
            format!("attObj: larger than {MAX_ATTOBJ_BYTES} bytes"),
        );
    }
    let cbor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.as_bytes())
        .map_err(|e| {
            AttestError::new(
                Rule::PayloadBase64,
                format!("attObj: not base64url without padding (RFC 8555 §6.1): {e}"),
            )
        })?;
    parse(&cbor)
}

/// Decodes the CBOR attestation object (RFC 8949; shape from W3C WebAuthn §6.5.4).
pub fn parse(cbor: &[u8]) -> Result<AttObj, AttestError> {
    if cbor.len() > MAX_ATTOBJ_BYTES {
        return err(
            Rule::CborTooLarge,
            format!(
                "attObj: {} bytes, larger than {MAX_ATTOBJ_BYTES}",
                cbor.len()
            ),
        );
    }
    if cbor.is_empty() {
        return err(Rule::CborMalformed, "attObj: empty CBOR");
    }
    let mut reader = cbor;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_CBOR_DEPTH)
        .map_err(|e| match e {
            ciborium::de::Error::RecursionLimitExceeded => AttestError::new(
                Rule::CborTooDeep,
                format!("attObj: CBOR nests deeper than {MAX_CBOR_DEPTH}"),
            ),
            other => AttestError::new(
                Rule::CborMalformed,
                format!("attObj: malformed CBOR (RFC 8949): {other}"),
            ),
        })?;
    if !reader.is_empty() {
        return err(
            Rule::CborTrailingBytes,
            format!(
                "attObj: {} bytes after the CBOR data item (RFC 8949 §5.1)",
                reader.len()
            ),
        );
    }
    let Value::Map(top) = value else {
        return err(
            Rule::AttObjShape,
            "attObj: top level is not a CBOR map (WebAuthn §6.5.4)",
        );
    };
    let mut fmt = None;
    let mut att_stmt = None;
    let mut auth_data = None;
    for (k, v) in top {
        let Value::Text(k) = k else {
            return err(Rule::AttObjShape, "attObj: a top-level key is not text");
        };
        let slot_taken = match k.as_str() {
            "fmt" => match v {
                Value::Text(t) => fmt.replace(t).is_some(),
                _ => return err(Rule::AttObjShape, "attObj: fmt is not a text string"),
            },
            "attStmt" => match v {
                Value::Map(m) => {
                    let mut entries: Vec<(String, Value)> = Vec::with_capacity(m.len());
                    for (sk, sv) in m {
                        let Value::Text(sk) = sk else {
                            return err(Rule::AttObjShape, "attObj: an attStmt key is not text");
                        };
                        if entries.iter().any(|(e, _)| *e == sk) {
                            return err(
                                Rule::AttObjShape,
                                format!("attObj: attStmt key {sk:?} appears twice (RFC 8949 §5.6)"),
                            );
                        }
                        entries.push((sk, sv));
                    }
                    att_stmt.replace(AttStmt { entries }).is_some()
                }
                _ => return err(Rule::AttObjShape, "attObj: attStmt is not a map"),
            },
            "authData" => match v {
                Value::Bytes(b) => auth_data.replace(b).is_some(),
                _ => return err(Rule::AttObjShape, "attObj: authData is not a byte string"),
            },
            other => {
                return err(
                    Rule::AttObjShape,
                    format!("attObj: unexpected top-level key {other:?} (WebAuthn §6.5.4)"),
                )
            }
        };
        if slot_taken {
            return err(
                Rule::AttObjShape,
                format!("attObj: key {k:?} appears twice (RFC 8949 §5.6)"),
            );
        }
    }
    let Some(fmt) = fmt else {
        return err(Rule::AttObjShape, "attObj: fmt is missing");
    };
    let Some(att_stmt) = att_stmt else {
        return err(Rule::AttObjShape, "attObj: attStmt is missing");
    };
    Ok(AttObj {
        fmt,
        att_stmt,
        auth_data,
    })
}

/// Encodes an attestation object as CBOR (for tests and the agent side).
pub fn to_cbor(att: &AttObj) -> Vec<u8> {
    let mut top = vec![
        (Value::Text("fmt".into()), Value::Text(att.fmt.clone())),
        (
            Value::Text("attStmt".into()),
            Value::Map(
                att.att_stmt
                    .entries
                    .iter()
                    .map(|(k, v)| (Value::Text(k.clone()), v.clone()))
                    .collect(),
            ),
        ),
    ];
    if let Some(a) = &att.auth_data {
        top.push((Value::Text("authData".into()), Value::Bytes(a.clone())));
    }
    let mut out = Vec::new();
    // Writing into a Vec cannot fail for a Value tree.
    if ciborium::ser::into_writer(&Value::Map(top), &mut out).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn minimal() -> Value {
        Value::Map(vec![
            (t("fmt"), t("apple")),
            (
                t("attStmt"),
                Value::Map(vec![(t("x5c"), Value::Array(vec![Value::Bytes(vec![1])]))]),
            ),
        ])
    }

    #[test]
    fn attest_attobj_minimal_roundtrip() {
        let att = parse(&enc(&minimal())).unwrap();
        assert_eq!(att.fmt, "apple");
        assert_eq!(att.auth_data, None);
        assert_eq!(att.att_stmt.x5c("apple").unwrap(), vec![&[1u8][..]]);
        assert_eq!(parse(&to_cbor(&att)).unwrap(), att);
    }

    fn rule_of(bytes: &[u8]) -> Rule {
        parse(bytes).unwrap_err().rule
    }

    #[test]
    fn attest_attobj_malformed_cases_each_have_their_rule() {
        assert_eq!(rule_of(&[]), Rule::CborMalformed);
        assert_eq!(rule_of(&[0xff, 0x00, 0x13]), Rule::CborMalformed);
        // Truncated: a map of 2 with nothing after.
        assert_eq!(rule_of(&[0xa2]), Rule::CborMalformed);
        let good = enc(&minimal());
        assert_eq!(rule_of(&good[..good.len() - 1]), Rule::CborMalformed);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(rule_of(&trailing), Rule::CborTrailingBytes);
        assert_eq!(rule_of(&enc(&Value::Array(vec![]))), Rule::AttObjShape);
        assert_eq!(
            rule_of(&vec![0u8; MAX_ATTOBJ_BYTES + 1]),
            Rule::CborTooLarge
        );
        // Deep nesting: 1000 nested arrays.
        let mut deep = vec![0x81u8; 1000];
        deep.push(0x00);
        assert_eq!(rule_of(&deep), Rule::CborTooDeep);
        // Lying length: a byte string that claims 2^62 bytes.
        let lying = [0x5b, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x01];
        assert_eq!(rule_of(&lying), Rule::CborMalformed);
        // A map that claims u64::MAX entries.
        let lying_map = [0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(rule_of(&lying_map), Rule::CborMalformed);
    }

    #[test]
    fn attest_attobj_shape_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (
                Value::Map(vec![(t("attStmt"), Value::Map(vec![]))]),
                "fmt is missing",
            ),
            (Value::Map(vec![(t("fmt"), t("tpm"))]), "attStmt is missing"),
            (
                Value::Map(vec![
                    (t("fmt"), Value::Integer(1.into())),
                    (t("attStmt"), Value::Map(vec![])),
                ]),
                "fmt is not a text string",
            ),
            (
                Value::Map(vec![
                    (t("fmt"), t("tpm")),
                    (t("attStmt"), Value::Array(vec![])),
                ]),
                "attStmt is not a map",
            ),
            (
                Value::Map(vec![
                    (t("fmt"), t("tpm")),
                    (t("attStmt"), Value::Map(vec![])),
                    (t("authData"), t("x")),
                ]),
                "authData is not a byte string",
            ),
            (
                Value::Map(vec![
                    (t("fmt"), t("tpm")),
                    (t("fmt"), t("tpm")),
                    (t("attStmt"), Value::Map(vec![])),
                ]),
                "appears twice",
            ),
            (
                Value::Map(vec![
                    (t("fmt"), t("tpm")),
                    (
                        t("attStmt"),
                        Value::Map(vec![(t("a"), Value::Null), (t("a"), Value::Null)]),
                    ),
                ]),
                "attStmt key \"a\" appears twice",
            ),
            (
                Value::Map(vec![(Value::Integer(1.into()), t("tpm"))]),
                "top-level key is not text",
            ),
            (
                Value::Map(vec![
                    (t("fmt"), t("tpm")),
                    (t("attStmt"), Value::Map(vec![])),
                    (t("extra"), Value::Null),
                ]),
                "unexpected top-level key",
            ),
        ];
        for (v, want) in cases {
            let e = parse(&enc(&v)).unwrap_err();
            assert_eq!(e.rule, Rule::AttObjShape, "{want}: {e}");
            assert!(e.detail.contains(want), "want {want:?}, got {e}");
        }
    }

    #[test]
    fn attest_attobj_statement_field_errors() {
        let s = AttStmt::from_entries(vec![
            ("sig".into(), Value::Text("x".into())),
            ("alg".into(), Value::Integer((-7).into())),
            ("x5c".into(), Value::Array(vec![Value::Text("no".into())])),
            ("big".into(), Value::Integer(u64::MAX.into())),
        ]);
        assert_eq!(s.int("tpm", "alg").unwrap(), -7);
        for (r, want) in [
            (
                s.bytes("tpm", "sig").map(|_| ()),
                "attStmt.sig is not a byte string",
            ),
            (
                s.bytes("tpm", "nope").map(|_| ()),
                "attStmt.nope is missing",
            ),
            (
                s.int("tpm", "sig").map(|_| ()),
                "attStmt.sig is not an integer",
            ),
            (
                s.int("tpm", "big").map(|_| ()),
                "attStmt.big is out of range",
            ),
            (
                s.text("tpm", "alg").map(|_| ()),
                "attStmt.alg is not a text string",
            ),
            (
                s.x5c("tpm").map(|_| ()),
                "attStmt.x5c[0] is not a byte string",
            ),
        ] {
            let e = r.unwrap_err();
            assert_eq!(e.rule, Rule::StatementField);
            assert!(e.detail.contains(want), "want {want:?}, got {e}");
        }
        let empty = AttStmt::from_entries(vec![("x5c".into(), Value::Array(vec![]))]);
        assert!(empty.x5c("step").unwrap_err().detail.contains("empty"));
        let many = AttStmt::from_entries(vec![(
            "x5c".into(),
            Value::Array(vec![Value::Bytes(vec![0]); MAX_X5C + 1]),
        )]);
        assert!(many.x5c("step").unwrap_err().detail.contains("more than"));
    }

    #[test]
    fn attest_payload_parse() {
        let good = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(enc(&minimal()))
        };
        let mut m = Map::new();
        m.insert("attObj".into(), Json::String(good.clone()));
        m.insert("unknownField".into(), Json::Bool(true));
        assert_eq!(parse_payload(&m).unwrap().fmt, "apple");
        assert_eq!(
            parse_payload(&Map::new()).unwrap_err().rule,
            Rule::PayloadShape
        );
        m.insert("attObj".into(), Json::Bool(true));
        assert_eq!(parse_payload(&m).unwrap_err().rule, Rule::PayloadShape);
        assert_eq!(
            from_base64url("a+b/").unwrap_err().rule,
            Rule::PayloadBase64
        );
        assert_eq!(
            from_base64url(&format!("{good}==")).unwrap_err().rule,
            Rule::PayloadBase64
        );
        assert_eq!(
            from_base64url(&"A".repeat(MAX_ATTOBJ_BYTES * 2))
                .unwrap_err()
                .rule,
            Rule::CborTooLarge
        );
    }
}
