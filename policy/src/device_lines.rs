//! The text of a `devices` event (one chunk of a snapshot): a JSON header with the chunk's
//! dictionary of profiles, then one line per device, fields separated by tabs.
//!
//! ```text
//! {"devices":3,"profiles":[{"platform":"macos","tags":["eng","laptop"]},{"tags":[]}]}
//! C02XK1ABCD12→a→0→alice@corp.example
//! SN-2→q→1
//! SN-3→r→1→
//! ```
//!
//! (→ stands for a tab; SN-3 has an empty owner.)
//!
//! Fields: the id; the status (`a` active, `q` quarantined, `r` retired); the profile (a
//! decimal index into the header's `profiles`: the device's platform and tags); and the
//! owner. Three fields: no owner; a fourth, even empty, is the owner. In the id and the
//! owner a backslash escapes `\\` `\t` `\n` `\r` (backslash, tab, line feed, carriage
//! return); any other backslash sequence is an error. So a line holds no tab, LF or CR of
//! its own, and each line is one SSE `data:` line.
//!
//! Why not JSON like the other events: decoding a million devices as JSON records took
//! ≈ 2 s and five allocations per device (benches/RESULTS.md, status feed); this decodes
//! straight into the packed form, one copy of the bytes, in a fraction of that. The header
//! stays JSON: it is small and carries the sets of tags, which repeat across the fleet.
//!
//! This is input from the network: everything is checked, every error says which line and
//! what is wrong ([`DevicesError`]), nothing panics.

use std::fmt::Write as _;
use std::sync::Arc;

use portcullis_config::DeviceStatus;
use serde::{Deserialize, Serialize};

use crate::feed::FeedError;
use crate::identity::MAX_DEVICE_ID_LEN;
use crate::packed::{ArenaFull, DeviceChunk, Packed, Profile};

/// Most devices (and profiles) one `devices` event may carry; the CA sends
/// [`crate::feed::SNAPSHOT_CHUNK`].
pub const MAX_CHUNK_DEVICES: usize = 65_536;

/// What is wrong with a `devices` event (the line number is in [`FeedError::Devices`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevicesError {
    #[error("header: {0}")]
    Header(String),
    #[error("more than {max} devices or profiles in one event")]
    TooMany { max: usize },
    #[error("{found} fields, expected 3 or 4 (id, status, profile, owner)")]
    FieldCount { found: usize },
    #[error("status `{0}`, expected a, q or r")]
    Status(String),
    #[error("profile `{found}` is not an index into the {profiles} profiles")]
    Profile { found: String, profiles: usize },
    #[error("bad backslash escape in the {0} (\\\\ \\t \\n \\r only)")]
    Escape(&'static str),
    #[error("empty device id")]
    EmptyId,
    #[error("device id longer than {MAX_DEVICE_ID_LEN} bytes")]
    IdTooLong,
    #[error("{found} devices, the header announced {announced}")]
    Count { announced: usize, found: usize },
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    devices: usize,
    profiles: Vec<ProfileOut<'a>>,
}

#[derive(Serialize)]
struct ProfileOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a str>,
    tags: Vec<&'a str>,
}

#[derive(Deserialize)]
struct HeaderIn {
    devices: usize,
    profiles: Vec<ProfileIn>,
}

#[derive(Deserialize)]
struct ProfileIn {
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

fn status_code(status: DeviceStatus) -> char {
    match status {
        DeviceStatus::Active => 'a',
        DeviceStatus::Quarantined => 'q',
        DeviceStatus::Retired => 'r',
    }
}

/// Writes `chunk`: the header, then each device on a line starting with `line_start`
/// (`"data: "` for SSE), lines separated by LF, no LF after the last.
pub(crate) fn encode(chunk: &DeviceChunk, line_start: &str, out: &mut String) {
    let packed = &chunk.packed;
    let header = HeaderOut {
        devices: packed.len(),
        profiles: packed
            .profiles()
            .iter()
            .map(|p| ProfileOut {
                platform: p.platform(),
                tags: p.tags().collect(),
            })
            .collect(),
    };
    out.reserve(packed.text_len() + packed.len() * (line_start.len() + 8) + 256);
    out.push_str(line_start);
    // Plain structs with string keys: serializing cannot fail.
    out.push_str(&serde_json::to_string(&header).unwrap_or_default());
    for pos in 0..packed.len() as u32 {
        let (Some(d), Some(profile)) = (packed.view(pos), packed.profile_id(pos)) else {
            continue;
        };
        out.push('\n');
        out.push_str(line_start);
        escape_into(d.id(), out);
        out.push('\t');
        out.push(status_code(d.status()));
        out.push('\t');
        let _ = write!(out, "{profile}");
        if let Some(owner) = d.owner() {
            out.push('\t');
            escape_into(owner, out);
        }
    }
}

fn escape_into(s: &str, out: &mut String) {
    if !s
        .bytes()
        .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn unescape_into(field: &str, out: &mut String, which: &'static str) -> Result<(), DevicesError> {
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        out.push(match rest.as_bytes().get(at + 1) {
            Some(b'\\') => '\\',
            Some(b't') => '\t',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            _ => return Err(DevicesError::Escape(which)),
        });
        // The escaped character is ASCII: `at + 2` is a character boundary.
        rest = rest.get(at + 2..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(())
}

/// Decodes a `devices` event's data.
pub(crate) fn decode(data: &str) -> Result<DeviceChunk, FeedError> {
    let at = |line: usize| move |error: DevicesError| FeedError::Devices { line, error };
    // No line after the header: no devices. Otherwise every line is a device, even an
    // empty one (a stray LF is an error, not a separator).
    let (head, body) = match data.split_once('\n') {
        Some((head, body)) => (head, Some(body)),
        None => (data, None),
    };
    let header: HeaderIn =
        serde_json::from_str(head).map_err(|e| at(1)(DevicesError::Header(e.to_string())))?;
    if header.devices > MAX_CHUNK_DEVICES || header.profiles.len() > MAX_CHUNK_DEVICES {
        return Err(at(1)(DevicesError::TooMany {
            max: MAX_CHUNK_DEVICES,
        }));
    }
    let mut packed = Packed::default();
    packed.reserve(header.devices, body.map_or(0, str::len));
    for p in &header.profiles {
        packed.push_profile(Arc::new(Profile::new(
            p.platform.as_deref(),
            p.tags.iter().map(String::as_str),
        )));
    }
    let profiles = header.profiles.len();
    let mut found = 0;
    if let Some(body) = body {
        for (i, line) in body.split('\n').enumerate() {
            found += 1;
            if found > header.devices {
                break;
            }
            device_line(line, profiles, &mut packed).map_err(at(i + 2))?;
        }
    }
    if found != header.devices {
        return Err(at(found.min(header.devices) + 2)(DevicesError::Count {
            announced: header.devices,
            found,
        }));
    }
    Ok(DeviceChunk::from_packed(packed))
}

fn device_line(line: &str, profiles: usize, packed: &mut Packed) -> Result<(), DevicesError> {
    let mut fields = line.split('\t');
    let (Some(id), Some(status), Some(profile)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(DevicesError::FieldCount {
            found: line.split('\t').count(),
        });
    };
    let owner = fields.next();
    if fields.next().is_some() {
        return Err(DevicesError::FieldCount {
            found: line.split('\t').count(),
        });
    }
    let status = match status {
        "a" => DeviceStatus::Active,
        "q" => DeviceStatus::Quarantined,
        "r" => DeviceStatus::Retired,
        other => return Err(DevicesError::Status(other.chars().take(16).collect())),
    };
    let index = Some(profile)
        .filter(|p| (1..=9).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|&i| i < profiles)
        .ok_or_else(|| DevicesError::Profile {
            found: profile.chars().take(16).collect(),
            profiles,
        })?;
    if id.is_empty() {
        return Err(DevicesError::EmptyId);
    }
    let pushed = packed.push_with(status, index as u32, owner.is_some(), |text| {
        let start = text.len();
        unescape_into(id, text, "id")?;
        let id_len = text.len() - start;
        if id_len > MAX_DEVICE_ID_LEN {
            return Err(DevicesError::IdTooLong);
        }
        if let Some(owner) = owner {
            unescape_into(owner, text, "owner")?;
        }
        Ok(id_len)
    })?;
    // A chunk is bounded by the event size (16 MiB): it cannot fill a 4 GiB arena.
    pushed.map_err(|ArenaFull| DevicesError::TooMany {
        max: MAX_CHUNK_DEVICES,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DeviceRecord;

    fn record(id: &str, status: DeviceStatus, owner: Option<&str>, tags: &[&str]) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            status,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            owner: owner.map(Into::into),
            platform: (!tags.is_empty()).then(|| "macos".into()),
        }
    }

    fn text(chunk: &DeviceChunk) -> String {
        let mut out = String::new();
        encode(chunk, "", &mut out);
        out
    }

    fn error(data: &str) -> (usize, DevicesError) {
        match decode(data) {
            Err(FeedError::Devices { line, error }) => (line, error),
            other => panic!("expected a devices error for {data:?}, got {other:?}"),
        }
    }

    const HEAD: &str = r#"{"devices":1,"profiles":[{"tags":[]}]}"#;

    #[test]
    fn chunks_round_trip_with_escapes_and_owners() {
        let records = [
            record(
                "C02XK1ABCD12",
                DeviceStatus::Active,
                Some("alice@corp.example"),
                &["eng", "laptop"],
            ),
            record("tab\there", DeviceStatus::Quarantined, None, &[]),
            record(
                "back\\slash",
                DeviceStatus::Retired,
                Some(""),
                &["laptop", "eng"],
            ),
            record(
                "x",
                DeviceStatus::Active,
                Some("line\nfeed\r\tand \\ ünïcode"),
                &["eng"],
            ),
        ];
        let chunk = DeviceChunk::from_records(&records);
        let data = text(&chunk);
        assert_eq!(
            data.lines().count(),
            5,
            "a header and one line per device:\n{data}"
        );
        assert!(data.lines().nth(2).unwrap() == "tab\\there\tq\t1");
        assert!(
            data.lines().nth(3).unwrap().ends_with("\tr\t0\t"),
            "an empty owner"
        );
        let back = decode(&data).unwrap();
        assert_eq!(back, chunk);
        for (v, r) in back.iter().zip(&records) {
            assert_eq!(v.to_record(), *r);
        }
        // An empty chunk, and the SSE form (each line a `data:` line).
        assert_eq!(decode(&text(&DeviceChunk::default())).unwrap().len(), 0);
        let mut sse = String::new();
        encode(&chunk, "data: ", &mut sse);
        assert!(sse.lines().all(|l| l.starts_with("data: ")));
    }

    #[test]
    fn garbage_is_refused_with_the_line_and_the_reason() {
        use DevicesError::*;
        let line = |l: &str| format!("{HEAD}\n{l}");
        assert!(matches!(error("not json").1, Header(_)));
        assert!(
            matches!(error(r#"{"devices":1}"#).1, Header(_)),
            "no profiles"
        );
        assert_eq!(error(&line("a\ta")), (2, FieldCount { found: 2 }));
        assert_eq!(
            error(&line("a\ta\t0\to\textra")),
            (2, FieldCount { found: 5 })
        );
        assert_eq!(error(&line("")), (2, FieldCount { found: 1 }));
        assert_eq!(error(&line("a\tactive\t0")), (2, Status("active".into())));
        for bad in ["1", "-1", "+0", "", "0x0", "99999999999999999999"] {
            assert!(
                matches!(
                    error(&line(&format!("a\ta\t{bad}"))).1,
                    Profile { profiles: 1, .. }
                ),
                "{bad:?}"
            );
        }
        assert_eq!(error(&line("a\\x\ta\t0")), (2, Escape("id")));
        assert_eq!(error(&line("a\ta\t0\towner\\")), (2, Escape("owner")));
        assert_eq!(error(&line("\ta\t0")), (2, EmptyId));
        let long = "i".repeat(MAX_DEVICE_ID_LEN + 1);
        assert_eq!(error(&line(&format!("{long}\ta\t0"))), (2, IdTooLong));
        assert_eq!(
            error(HEAD),
            (
                2,
                Count {
                    announced: 1,
                    found: 0
                }
            ),
            "a device short"
        );
        assert_eq!(
            error(&format!("{HEAD}\na\ta\t0\nb\ta\t0")),
            (
                3,
                Count {
                    announced: 1,
                    found: 2
                }
            ),
            "a device more"
        );
        let many = format!(r#"{{"devices":{},"profiles":[]}}"#, MAX_CHUNK_DEVICES + 1);
        assert_eq!(
            error(&many),
            (
                1,
                TooMany {
                    max: MAX_CHUNK_DEVICES
                }
            )
        );
        // A trailing newline is an empty line, not the end.
        assert_eq!(
            error(&format!("{HEAD}\na\ta\t0\n")).1,
            Count {
                announced: 1,
                found: 2
            }
        );
    }
}
