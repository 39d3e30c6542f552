//! The inventory document a `[inventory] file` holds (TOML or JSON):
//!
//! ```toml
//! revoked_serials = ["0a1b"]
//! [[devices]]
//! id = "SN-1234"
//! status = "active"
//! tags = ["eng"]
//! owner = "alice@example.com"
//! platform = "macos"
//! ```
//!
//! JSON has the same shape: `{"revoked_serials": [...], "devices": [{"id": ..., ...}]}`.
//! Unknown keys are refused (a misspelt `staus` must not silently mean "no status"), and so are
//! duplicate device ids (which of the two records would count?).

use std::collections::{BTreeSet, HashMap};

use portcullis_config::DeviceStatus;
use serde::Deserialize;

use crate::identity::{serial_hex, MAX_DEVICE_ID_LEN};
use crate::status::{DeviceRecord, StatusSnapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InventoryFormat {
    Toml,
    Json,
}

impl InventoryFormat {
    /// `toml` or `json` (case-insensitive), e.g. from a file name's extension.
    pub fn from_extension(ext: &str) -> Option<Self> {
        if ext.eq_ignore_ascii_case("toml") {
            Some(Self::Toml)
        } else if ext.eq_ignore_ascii_case("json") {
            Some(Self::Json)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Toml => "TOML",
            Self::Json => "JSON",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("devices[{index}]: {message}")]
    Device { index: usize, message: String },
    #[error("revoked_serials[{index}]: {message}")]
    RevokedSerial { index: usize, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    revoked_serials: Vec<String>,
    #[serde(default)]
    devices: Vec<DeviceEntry>,
}

/// Status is read as a string so that a bad one is reported against its device index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    id: String,
    status: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    platform: Option<String>,
}

/// Parses an inventory document into a snapshot (generation 0; the store assigns one).
pub fn parse_inventory(
    text: &str,
    format: InventoryFormat,
) -> Result<StatusSnapshot, InventoryError> {
    let syntax = |message: String| InventoryError::Syntax {
        format: format.name(),
        message,
    };
    let doc: Document = match format {
        InventoryFormat::Toml => toml::from_str(text).map_err(|e| syntax(e.to_string()))?,
        InventoryFormat::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?,
    };

    let mut devices: HashMap<String, DeviceRecord> = HashMap::with_capacity(doc.devices.len());
    let mut first_index: HashMap<String, usize> = HashMap::with_capacity(doc.devices.len());
    for (index, entry) in doc.devices.into_iter().enumerate() {
        let record = entry
            .into_record()
            .map_err(|message| InventoryError::Device { index, message })?;
        if let Some(first) = first_index.insert(record.id.clone(), index) {
            return Err(InventoryError::Device {
                index,
                message: format!(
                    "duplicate device id `{}` (first at devices[{first}])",
                    record.id
                ),
            });
        }
        devices.insert(record.id.clone(), record);
    }

    let revoked_serials = doc
        .revoked_serials
        .iter()
        .enumerate()
        .map(|(index, s)| {
            normalize_serial(s).ok_or_else(|| InventoryError::RevokedSerial {
                index,
                message: format!("`{s}` is not a hexadecimal serial number"),
            })
        })
        .collect::<Result<Vec<String>, _>>()?;

    Ok(StatusSnapshot::from_records(
        devices.into_values(),
        revoked_serials,
    ))
}

impl DeviceEntry {
    fn into_record(self) -> Result<DeviceRecord, String> {
        check_id(&self.id)?;
        let status: DeviceStatus = self.status.parse()?;
        let mut tags = BTreeSet::new();
        for tag in self.tags {
            if tag.is_empty() || tag.chars().any(char::is_control) {
                return Err(format!("tag {tag:?} must be non-empty text"));
            }
            tags.insert(tag);
        }
        Ok(DeviceRecord {
            id: self.id,
            status,
            tags,
            owner: self.owner,
            platform: self.platform,
        })
    }
}

/// Inventory ids must be usable as certificate ids (identity.rs): non-empty, bounded, no
/// control characters; and no surrounding blanks, which would never match a certificate.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id must not be empty".into());
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!("id longer than {MAX_DEVICE_ID_LEN} bytes"));
    }
    if id.chars().any(char::is_control) || id.trim() != id {
        return Err(format!(
            "id {id:?} has control characters or surrounding blanks"
        ));
    }
    Ok(())
}

/// A serial number as people write it (`0A:1B`, `0a1b`, `a1b`, `00:8a:01`) in the form of
/// `DeviceIdentity::serial`: lowercase hex without colons and without the DER sign octet.
/// `None` if it is not hex.
pub fn normalize_serial(text: &str) -> Option<String> {
    let mut digits: String = text
        .trim()
        .chars()
        .filter(|&c| c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let bytes = hex::decode(&digits).ok()?;
    Some(serial_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML_DOC: &str = r#"
revoked_serials = ["0A:1B", "00:8a:01"]

[[devices]]
id = "SN-1234"
status = "active"
tags = ["eng", "laptop"]
owner = "alice@example.com"
platform = "macos"

[[devices]]
id = "SN-5678"
status = "quarantined"
"#;

    #[test]
    fn parses_toml() {
        let snap = parse_inventory(TOML_DOC, InventoryFormat::Toml).unwrap();
        assert_eq!(snap.generation, 0);
        let d = snap.device("SN-1234").unwrap();
        assert_eq!(d.status(), DeviceStatus::Active);
        assert!(d.has_tag("eng") && d.has_tag("laptop"));
        assert_eq!(d.owner(), Some("alice@example.com"));
        assert_eq!(d.platform(), Some("macos"));
        let q = snap.device("SN-5678").unwrap();
        assert_eq!(q.status(), DeviceStatus::Quarantined);
        assert_eq!(q.tags().len(), 0);
        let mut serials: Vec<_> = snap.revoked_serials().iter().cloned().collect();
        serials.sort();
        assert_eq!(serials, vec!["0a1b", "8a01"]);
    }

    #[test]
    fn parses_json() {
        let json = r#"{"revoked_serials": ["ff"], "devices": [
            {"id": "A", "status": "retired", "tags": ["x"]}]}"#;
        let snap = parse_inventory(json, InventoryFormat::Json).unwrap();
        assert_eq!(snap.device("A").unwrap().status(), DeviceStatus::Retired);
        assert!(snap.revoked_serials().contains("ff"));
        // An empty document is an empty inventory.
        assert!(
            parse_inventory("{}", InventoryFormat::Json)
                .unwrap()
                .device_count()
                == 0
        );
        assert!(
            parse_inventory("", InventoryFormat::Toml)
                .unwrap()
                .device_count()
                == 0
        );
    }

    #[test]
    fn syntax_errors() {
        let e = parse_inventory("[[devices]\nid = ", InventoryFormat::Toml).unwrap_err();
        assert!(
            matches!(e, InventoryError::Syntax { format: "TOML", .. }),
            "{e:?}"
        );
        let e = parse_inventory("{\"devices\": [", InventoryFormat::Json).unwrap_err();
        assert!(
            matches!(e, InventoryError::Syntax { format: "JSON", .. }),
            "{e:?}"
        );
        // Missing status is a shape error.
        let e = parse_inventory("[[devices]]\nid = \"a\"\n", InventoryFormat::Toml).unwrap_err();
        assert!(e.to_string().contains("status"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse_inventory(
            "[[devices]]\nid = \"a\"\nstatus = \"active\"\nstaus = 1\n",
            InventoryFormat::Toml,
        )
        .unwrap_err();
        assert!(e.to_string().contains("staus"), "{e}");
        let e = parse_inventory(r#"{"device": []}"#, InventoryFormat::Json).unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
    }

    #[test]
    fn duplicate_ids_name_both_indexes() {
        let doc = r#"{"devices": [
            {"id": "A", "status": "active"},
            {"id": "B", "status": "active"},
            {"id": "A", "status": "retired"}]}"#;
        match parse_inventory(doc, InventoryFormat::Json).unwrap_err() {
            InventoryError::Device { index, message } => {
                assert_eq!(index, 2);
                assert!(message.contains("duplicate device id `A`"), "{message}");
                assert!(message.contains("devices[0]"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_status_and_bad_ids() {
        let e = parse_inventory(
            r#"{"devices": [{"id": "A", "status": "active"}, {"id": "B", "status": "lost"}]}"#,
            InventoryFormat::Json,
        )
        .unwrap_err();
        assert!(
            matches!(e, InventoryError::Device { index: 1, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("`lost` is not a device status"),
            "{e}"
        );

        for bad_id in ["", " A", "A\n", "A\u{0}"] {
            let doc = serde_json::json!({"devices": [{"id": bad_id, "status": "active"}]});
            let e = parse_inventory(&doc.to_string(), InventoryFormat::Json).unwrap_err();
            assert!(
                matches!(e, InventoryError::Device { index: 0, .. }),
                "{bad_id:?}: {e:?}"
            );
        }
        let e = parse_inventory(
            r#"{"devices": [{"id": "A", "status": "active", "tags": [""]}]}"#,
            InventoryFormat::Json,
        )
        .unwrap_err();
        assert!(
            matches!(e, InventoryError::Device { index: 0, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn bad_revoked_serials() {
        let e = parse_inventory(r#"revoked_serials = ["0a", "xyz"]"#, InventoryFormat::Toml)
            .unwrap_err();
        assert!(
            matches!(e, InventoryError::RevokedSerial { index: 1, .. }),
            "{e:?}"
        );
        let e = parse_inventory(r#"revoked_serials = [""]"#, InventoryFormat::Toml).unwrap_err();
        assert!(
            matches!(e, InventoryError::RevokedSerial { index: 0, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn serial_normalization() {
        assert_eq!(normalize_serial("0A:1B").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial("a1b").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial("00:8A:01").as_deref(), Some("8a01"));
        assert_eq!(normalize_serial("8a01").as_deref(), Some("8a01"));
        assert_eq!(normalize_serial("00").as_deref(), Some("00"));
        assert_eq!(normalize_serial("0x1f"), None);
        assert_eq!(normalize_serial(":"), None);
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            InventoryFormat::from_extension("TOML"),
            Some(InventoryFormat::Toml)
        );
        assert_eq!(
            InventoryFormat::from_extension("json"),
            Some(InventoryFormat::Json)
        );
        assert_eq!(InventoryFormat::from_extension("yaml"), None);
    }
}
