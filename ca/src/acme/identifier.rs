//! Identifier checks for newOrder: syntax of DNS names and the CA's allow-list.

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
