//! Identifier checks for newOrder: syntax of DNS names and the CA's allow-list.

use super::challenge::device_attest01::{check_identifier, HARDWARE_MODULE, PERMANENT_IDENTIFIER};
use super::model::Identifier;
use super::problem::{Problem, ProblemIdentifier, ProblemType};

/// Normalises and checks a `dns` identifier value (RFC 1035 §2.3.1 / RFC 1123 §2.1 "LDH"
/// syntax): lowercase, at most 253 octets, labels of 1–63 letters, digits and hyphens, not
/// starting or ending with a hyphen, no trailing dot. Wildcards are refused: they can only be
/// validated by dns-01 (RFC 8555 §7.1.3), which this CA does not offer.
pub fn normalize_dns(value: &str) -> Result<String, String> {
    let name = value.to_ascii_lowercase();
    if name.starts_with("*.") {
        return Err("wildcard names need dns-01, which this CA does not offer".into());
    }
    if name.is_empty() || name.len() > 253 {
        return Err("a DNS name is 1 to 253 characters long".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("every label is 1 to 63 characters long".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("only letters, digits and hyphens are allowed".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with a hyphen".into());
        }
    }
    if name.parse::<std::net::IpAddr>().is_ok()
        || name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err("an IP address is not a DNS name".into());
    }
    Ok(name)
}

/// Whether `name` (normalised) is on the allow-list: exact entries, or `*.suffix` for any name
/// strictly below `suffix`.
pub fn allowed(name: &str, allow_list: &[String]) -> bool {
    allow_list.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => name == entry,
        }
    })
}

/// Whether `identifier` names a device (draft-ietf-acme-device-attest §3 `permanent-identifier`,
/// §4 `hardware-module`).
pub fn is_device_identifier(identifier: &Identifier) -> bool {
    identifier.kind == PERMANENT_IDENTIFIER || identifier.kind == HARDWARE_MODULE
}

/// The inventory id of the device a (grammar-checked) device identifier names: the
/// `device-identifier-value` of a permanent-identifier without its `/assigner-oid`, the
/// `serial` of a hardware-module. It is also the id in the certificate's SPIFFE URI.
pub fn device_id_of(identifier: &Identifier) -> Option<String> {
    let v = identifier.value.as_str();
    match identifier.kind.as_str() {
        PERMANENT_IDENTIFIER => Some(match v.rsplit_once('/') {
            Some((value, _assigner)) => value.to_string(),
            None => v.to_string(),
        }),
        HARDWARE_MODULE => v.rsplit_once('/').map(|(serial, _)| serial.to_string()),
        _ => None,
    }
}

/// Checks the identifiers of a newOrder that names a device. Rules:
/// - grammar of draft-ietf-acme-device-attest §3/§4 (`malformed`, RFC 8555 §6.7);
/// - no mixing with other identifier types, and exactly one device (`rejectedIdentifier`,
///   RFC 8555 §7.4 "the server MUST return an error if it cannot fulfill the request"): a
///   device certificate names one device, and `portcullis_policy::DeviceIdentity` treats a
///   certificate with two device ids as naming none, so such a certificate would be useless
///   and ambiguous;
/// - the device id must fit the SPIFFE URI the certificate carries (`rejectedIdentifier`).
pub fn check_device_order_identifiers(
    identifiers: &[Identifier],
) -> Result<Vec<Identifier>, Problem> {
    let mut ids = identifiers.to_vec();
    ids.sort();
    ids.dedup();
    let reject = |detail: String, ident: &Identifier| {
        Problem::new(
            ProblemType::RejectedIdentifier,
            format!("{}: {detail}", ident.value),
        )
        .with_subproblem(
            ProblemType::RejectedIdentifier,
            detail,
            Some(ProblemIdentifier {
                kind: ident.kind.clone(),
                value: ident.value.clone(),
            }),
        )
    };
    if let Some(other) = ids.iter().find(|i| !is_device_identifier(i)) {
        return Err(reject(
            format!(
                "an order for a device certificate cannot also name a `{}` identifier",
                other.kind
            ),
            other,
        ));
    }
    if ids.len() > 1 {
        return Err(reject(
            "an order for a device certificate names exactly one device".into(),
            &ids[1],
        ));
    }
    let ident = ids
        .first()
        .ok_or_else(|| Problem::malformed("an order needs at least one identifier"))?;
    check_identifier(ident).map_err(|e| Problem::malformed(format!("{}: {e}", ident.value)))?;
    let device = device_id_of(ident).unwrap_or_default();
    if !portcullis_policy::identity::is_spiffe_device_segment(&device) {
        return Err(reject(
            format!(
                "device id `{device}` cannot be a SPIFFE path segment (letters, digits, `.`, `-`, `_`)"
            ),
            ident,
        ));
    }
    Ok(ids)
}

/// Checks all identifiers of a newOrder; the result is the normalised, de-duplicated, sorted
/// list, or one problem (a `compound` with a subproblem per bad identifier when there are
/// several, RFC 8555 §6.7.1).
pub fn check_order_identifiers(
    identifiers: &[Identifier],
    allow_list: Option<&[String]>,
) -> Result<Vec<Identifier>, Problem> {
    if identifiers.is_empty() {
        return Err(Problem::malformed("an order needs at least one identifier"));
    }
    let mut good = Vec::new();
    let mut bad: Vec<(ProblemType, String, Identifier)> = Vec::new();
    for ident in identifiers {
        if ident.kind != "dns" {
            bad.push((
                ProblemType::UnsupportedIdentifier,
                format!("identifier type `{}` is not supported", ident.kind),
                ident.clone(),
            ));
            continue;
        }
        match normalize_dns(&ident.value) {
            Err(why) => bad.push((ProblemType::RejectedIdentifier, why, ident.clone())),
            Ok(name) => match allow_list {
                None => bad.push((
                    ProblemType::RejectedIdentifier,
                    "this CA does not issue for DNS names (http-01 is disabled)".into(),
                    ident.clone(),
                )),
                Some(list) if !allowed(&name, list) => bad.push((
                    ProblemType::RejectedIdentifier,
                    format!("`{name}` is not on this CA's allow-list"),
                    ident.clone(),
                )),
                Some(_) => good.push(Identifier::dns(name)),
            },
        }
    }
    match bad.len() {
        0 => {
            good.sort();
            good.dedup();
            Ok(good)
        }
        1 => {
            let (kind, detail, ident) = bad.remove(0);
            Err(
                Problem::new(kind, format!("{}: {detail}", ident.value)).with_subproblem(
                    kind,
                    detail,
                    Some(ProblemIdentifier {
                        kind: ident.kind,
                        value: ident.value,
                    }),
                ),
            )
        }
        _ => {
            let mut p = Problem::new(
                ProblemType::Compound,
                format!("{} identifiers were refused", bad.len()),
            );
            for (kind, detail, ident) in bad {
                p = p.with_subproblem(
                    kind,
                    detail,
                    Some(ProblemIdentifier {
                        kind: ident.kind,
                        value: ident.value,
                    }),
                );
            }
            Err(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_orders_name_one_device_and_nothing_else() {
        let id = |k: &str, v: &str| Identifier {
            kind: k.into(),
            value: v.into(),
        };
        let ok = check_device_order_identifiers(&[
            id(PERMANENT_IDENTIFIER, "5970478"),
            id(PERMANENT_IDENTIFIER, "5970478"),
        ])
        .unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(
            device_id_of(&id(PERMANENT_IDENTIFIER, "dev-1/1.3.6.1.4.1.311")).as_deref(),
            Some("dev-1")
        );
        assert_eq!(
            device_id_of(&id(HARDWARE_MODULE, "ab12/1.3.6.1.4.1.41482")).as_deref(),
            Some("ab12")
        );
        let kind = |ids: &[Identifier]| check_device_order_identifiers(ids).unwrap_err().kind;
        assert_eq!(
            kind(&[id(PERMANENT_IDENTIFIER, "1"), Identifier::dns("a.example")]),
            ProblemType::RejectedIdentifier
        );
        assert_eq!(
            kind(&[id(PERMANENT_IDENTIFIER, "1"), id(PERMANENT_IDENTIFIER, "2")]),
            ProblemType::RejectedIdentifier
        );
        assert_eq!(kind(&[id(HARDWARE_MODULE, "ab12")]), ProblemType::Malformed);
        assert_eq!(
            kind(&[id(PERMANENT_IDENTIFIER, "a:b")]),
            ProblemType::RejectedIdentifier
        );
    }

    #[test]
    fn dns_syntax() {
        assert_eq!(normalize_dns("Svc.Example.COM").unwrap(), "svc.example.com");
        assert_eq!(normalize_dns("localhost").unwrap(), "localhost");
        for bad in [
            "",
            "*.example.com",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a.b.",
            "10.0.0.1",
            "é.com",
            &"a".repeat(64),
        ] {
            assert!(normalize_dns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_list_matches_exact_names_and_strict_subdomains() {
        let list = vec!["svc.example.com".to_string(), "*.lab.example".to_string()];
        assert!(allowed("svc.example.com", &list));
        assert!(allowed("a.lab.example", &list));
        assert!(allowed("a.b.lab.example", &list));
        assert!(!allowed("lab.example", &list));
        assert!(!allowed("evillab.example", &list));
        assert!(!allowed("x.svc.example.com", &list));
    }

    #[test]
    fn bad_identifiers_become_one_problem_or_a_compound() {
        let list = vec!["*.lab.example".to_string()];
        let ok = check_order_identifiers(
            &[
                Identifier::dns("B.lab.example"),
                Identifier::dns("a.lab.example"),
                Identifier::dns("b.lab.example"),
            ],
            Some(&list),
        )
        .unwrap();
        assert_eq!(
            ok,
            vec![
                Identifier::dns("a.lab.example"),
                Identifier::dns("b.lab.example")
            ]
        );
        let p = check_order_identifiers(&[Identifier::dns("x.other")], Some(&list)).unwrap_err();
        assert_eq!(p.kind, ProblemType::RejectedIdentifier);
        let p = check_order_identifiers(
            &[
                Identifier::dns("x.other"),
                Identifier {
                    kind: "ip".into(),
                    value: "10.0.0.1".into(),
                },
            ],
            Some(&list),
        )
        .unwrap_err();
        assert_eq!(p.kind, ProblemType::Compound);
        assert_eq!(p.subproblems.len(), 2);
        assert_eq!(
            check_order_identifiers(&[], Some(&list)).unwrap_err().kind,
            ProblemType::Malformed
        );
        assert_eq!(
            check_order_identifiers(&[Identifier::dns("a.lab.example")], None)
                .unwrap_err()
                .kind,
            ProblemType::RejectedIdentifier
        );
    }
}
