//! ACME resource states (RFC 8555 §7.1.6) and identifiers, shared by the server and the store.

use serde::{Deserialize, Serialize};

macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

status_enum!(
    /// §7.1.6 account states: `deactivated` by the client, `revoked` by the server.
    AccountStatus { Valid => "valid", Deactivated => "deactivated", Revoked => "revoked" }
);

status_enum!(
    /// §7.1.6 order states: pending → ready → processing → valid, or invalid from any of them.
    OrderStatus {
        Pending => "pending",
        Ready => "ready",
        Processing => "processing",
        Valid => "valid",
        Invalid => "invalid",
    }
);

status_enum!(
    /// §7.1.6 authorization states.
    AuthzStatus {
        Pending => "pending",
        Valid => "valid",
        Invalid => "invalid",
        Deactivated => "deactivated",
        Expired => "expired",
        Revoked => "revoked",
    }
);

status_enum!(
    /// §7.1.6 challenge states: pending → processing → valid | invalid.
    ChallengeStatus {
        Pending => "pending",
        Processing => "processing",
        Valid => "valid",
        Invalid => "invalid",
    }
);

/// An identifier object (§7.1.3/§9.7.7). Only `dns` is accepted in this issue; the
/// device-attest draft adds `permanent-identifier` and `hardware-module`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Identifier {
    pub fn dns(value: impl Into<String>) -> Self {
        Self {
            kind: "dns".into(),
            value: value.into(),
        }
    }
}

/// RFC 5280 §5.3.1 CRLReason codes a subscriber may ask for when revoking (RFC 8555 §7.6).
/// Not accepted: cACompromise (2) and aACompromise (10), which are about CAs; certificateHold (6)
/// and removeFromCRL (8), because revocation here is final; 7 is unassigned.
pub fn revocation_reason_allowed(code: i64) -> bool {
    matches!(code, 0 | 1 | 3 | 4 | 5 | 9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in ["pending", "ready", "processing", "valid", "invalid"] {
            assert_eq!(s.parse::<OrderStatus>().unwrap().as_str(), s);
        }
        assert!("done".parse::<OrderStatus>().is_err());
        assert_eq!(
            serde_json::to_string(&AuthzStatus::Expired).unwrap(),
            "\"expired\""
        );
    }

    #[test]
    fn revocation_reasons_follow_rfc5280() {
        assert!(revocation_reason_allowed(0) && revocation_reason_allowed(1));
        for bad in [2, 6, 7, 8, 10, 11, -1] {
            assert!(!revocation_reason_allowed(bad), "{bad}");
        }
    }
}
