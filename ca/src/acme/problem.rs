//! RFC 7807 problem documents with the ACME error types of RFC 8555 §6.7.

use serde::Serialize;

/// `urn:ietf:params:acme:error:<type>` (RFC 8555 §6.7, registry in §9.7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProblemType {
    AccountDoesNotExist,
    AlreadyRevoked,
    BadCsr,
    BadNonce,
    BadPublicKey,
    BadRevocationReason,
    BadSignatureAlgorithm,
    Caa,
    Compound,
    Connection,
    Dns,
    ExternalAccountRequired,
    IncorrectResponse,
    InvalidContact,
    Malformed,
    OrderNotReady,
    RateLimited,
    RejectedIdentifier,
    ServerInternal,
    Tls,
    Unauthorized,
    UnsupportedContact,
    UnsupportedIdentifier,
    UserActionRequired,
    /// draft-ietf-acme-device-attest: the attestation statement failed verification.
    BadAttestationStatement,
}

impl ProblemType {
    /// The camelCase name used in the URN.
    pub fn name(self) -> &'static str {
        use ProblemType::*;
        match self {
            AccountDoesNotExist => "accountDoesNotExist",
            AlreadyRevoked => "alreadyRevoked",
            BadCsr => "badCSR",
            BadNonce => "badNonce",
            BadPublicKey => "badPublicKey",
            BadRevocationReason => "badRevocationReason",
            BadSignatureAlgorithm => "badSignatureAlgorithm",
            Caa => "caa",
            Compound => "compound",
            Connection => "connection",
            Dns => "dns",
            ExternalAccountRequired => "externalAccountRequired",
            IncorrectResponse => "incorrectResponse",
            InvalidContact => "invalidContact",
            Malformed => "malformed",
            OrderNotReady => "orderNotReady",
            RateLimited => "rateLimited",
            RejectedIdentifier => "rejectedIdentifier",
            ServerInternal => "serverInternal",
            Tls => "tls",
            Unauthorized => "unauthorized",
            UnsupportedContact => "unsupportedContact",
            UnsupportedIdentifier => "unsupportedIdentifier",
            UserActionRequired => "userActionRequired",
            BadAttestationStatement => "badAttestationStatement",
        }
    }

    pub fn urn(self) -> String {
        format!("urn:ietf:params:acme:error:{}", self.name())
    }

    /// The HTTP status RFC 8555 implies for the type (§6.7 examples; 400 by default).
    pub fn http_status(self) -> u16 {
        use ProblemType::*;
        match self {
            Unauthorized | AccountDoesNotExist => 403,
            ServerInternal => 500,
            RateLimited => 429,
            OrderNotReady => 403,
            // §7.3.3: new terms of service to agree to, shown as 403 in the RFC's example.
            UserActionRequired => 403,
            _ => 400,
        }
    }
}

/// An identifier a subproblem is about (RFC 8555 §6.7.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemIdentifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subproblem {
    #[serde(rename = "type")]
    pub kind: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<ProblemIdentifier>,
}

/// A problem document as sent to the client: what it needs to act, nothing internal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}: {detail}", kind.name())]
pub struct Problem {
    #[serde(skip)]
    pub kind: ProblemType,
    #[serde(rename = "type")]
    pub urn: String,
    pub detail: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<Subproblem>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            urn: kind.urn(),
            detail: detail.into(),
            status: kind.http_status(),
            subproblems: Vec::new(),
        }
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Malformed, detail)
    }

    pub fn with_subproblem(
        mut self,
        kind: ProblemType,
        detail: impl Into<String>,
        id: Option<ProblemIdentifier>,
    ) -> Self {
        self.subproblems.push(Subproblem {
            kind: kind.urn(),
            detail: detail.into(),
            identifier: id,
        });
        self
    }

    /// `application/problem+json` body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"type\":\"{}\"}}", self.urn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_rfc7807_with_the_acme_urn() {
        let p = Problem::new(
            ProblemType::BadCsr,
            "CSR names an identifier the order does not have",
        )
        .with_subproblem(
            ProblemType::RejectedIdentifier,
            "not in the order",
            Some(ProblemIdentifier {
                kind: "dns".into(),
                value: "extra.example".into(),
            }),
        );
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["type"], "urn:ietf:params:acme:error:badCSR");
        assert_eq!(v["status"], 400);
        assert_eq!(
            v["subproblems"][0]["type"],
            "urn:ietf:params:acme:error:rejectedIdentifier"
        );
        assert_eq!(v["subproblems"][0]["identifier"]["value"], "extra.example");
    }

    #[test]
    fn unauthorized_is_403() {
        assert_eq!(Problem::new(ProblemType::Unauthorized, "x").status, 403);
    }
}
