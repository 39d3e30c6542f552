//! Inventory imports: devices as an MDM/ITAM export lists them, in CSV or JSON.
//!
//! Parsing is all or nothing. Every row is checked and every problem is reported with its line
//! (the CSV line a record starts on; for JSON, the line of the array element), and if there is
//! a single problem nothing is applied: a half-applied export would leave the inventory in a
//! state nobody asked for. Input is never trusted to be well-formed: no panics, a specific
//! message per fault, and anything not understood (an unknown column or field, an unknown
//! status, a stray quote) is refused rather than guessed at.
//!
//! Fields: `id` (required: the permanent identifier), `hardware_module`, `platform`, `owner`,
//! `tags`, `status` (`active` | `quarantined` | `retired`), `source`. A field the file does
//! not have is left as it is on an existing device (a new device: no value, `active`, the
//! default source); an empty CSV cell or a JSON `null` clears it.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_config::DeviceStatus;
use serde::Deserialize;
use serde_json::Value;

use crate::store::{Device, NewDevice};

/// Longest device id: enough for any serial number or TPM EK hash in hex, short enough to
/// sit in a URL path and a certificate SAN.
pub const MAX_ID_LEN: usize = 256;
/// Longest free-text value (owner, platform, hardware module, source).
pub const MAX_TEXT_LEN: usize = 256;
pub const MAX_TAG_LEN: usize = 64;
pub const MAX_TAGS: usize = 64;
/// More errors than this are not listed one by one: the file is wrong as a whole.
pub const MAX_REPORTED_ERRORS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    Json,
}

impl std::str::FromStr for ImportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(ImportFormat::Csv),
            "json" => Ok(ImportFormat::Json),
            other => Err(format!("`{other}` is not an import format (csv, json)")),
        }
    }
}

impl ImportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::Csv => "csv",
            ImportFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A partial statement about a device, as an import row makes it: `None` = the row does not
/// say (keep the current value; for a new device: none, `active`, the default source);
/// `Some(None)` = the row says "no value" (clear it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevicePatch {
    pub id: String,
    pub hw_module_id: Option<Option<String>>,
    pub platform: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    pub tags: Option<BTreeSet<String>>,
    pub status: Option<DeviceStatus>,
    pub source: Option<String>,
}

impl DevicePatch {
    /// The device this patch makes of `current` (the stored row, if any).
    pub fn resolve(&self, current: Option<&Device>, default_source: &str) -> NewDevice {
        let keep = |stated: &Option<Option<String>>, cur: Option<&Option<String>>| match stated {
            Some(v) => v.clone(),
            None => cur.cloned().flatten(),
        };
        NewDevice {
            id: self.id.clone(),
            hw_module_id: keep(&self.hw_module_id, current.map(|c| &c.hw_module_id)),
            platform: keep(&self.platform, current.map(|c| &c.platform)),
            owner: keep(&self.owner, current.map(|c| &c.owner)),
            tags: match (&self.tags, current) {
                (Some(t), _) => t.clone(),
                (None, Some(c)) => c.tags.clone(),
                (None, None) => BTreeSet::new(),
            },
            // A new device the row says nothing about is `active`: being in the export of
            // the MDM is what makes it inventoried.
            status: self
                .status
                .or(current.map(|c| c.status))
                .unwrap_or(DeviceStatus::Active),
            source: match (&self.source, current) {
                (Some(s), _) => s.clone(),
                (None, Some(c)) => c.source.clone(),
                (None, None) => default_source.to_string(),
            },
        }
    }
}

/// One parsed row and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// 1-based line of the CSV record or of the JSON array element.
    pub line: u64,
    pub patch: DevicePatch,
}

/// What is wrong with one row (or with the file, then `line` is where it was noticed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("line {line}{}: {message}", field.as_ref().map(|f| format!(", {f}")).unwrap_or_default())]
pub struct RowError {
    pub line: u64,
    /// 1-based column, when the parser knows it (JSON syntax errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// The row's device id, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The field at fault, by its canonical name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl RowError {
    fn new(line: u64, message: impl Into<String>) -> Self {
        Self {
            line,
            column: None,
            id: None,
            field: None,
            message: message.into(),
        }
    }

    fn field(line: u64, id: Option<&str>, field: Field, message: impl Into<String>) -> Self {
        Self {
            line,
            column: None,
            id: id.map(str::to_string),
            field: Some(field.name().to_string()),
            message: message.into(),
        }
    }
}

/// Parses an export. `Err` lists every problem found (at most [`MAX_REPORTED_ERRORS`] plus a
/// last one saying that more were cut); `Ok` only if there are none.
pub fn parse(body: &[u8], format: ImportFormat) -> Result<Vec<ImportRow>, Vec<RowError>> {
    let mut errors = Errors::default();
    let rows = match format {
        ImportFormat::Csv => parse_csv(body, &mut errors),
        ImportFormat::Json => parse_json(body, &mut errors),
    };
    check_duplicates(&rows, &mut errors);
    if errors.list.is_empty() {
        Ok(rows)
    } else {
        Err(errors.finish())
    }
}

#[derive(Default)]
struct Errors {
    list: Vec<RowError>,
    dropped: usize,
}

impl Errors {
    fn push(&mut self, e: RowError) {
        if self.list.len() < MAX_REPORTED_ERRORS {
            self.list.push(e);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Vec<RowError> {
        self.list.sort_by_key(|e| e.line);
        if self.dropped > 0 {
            let line = self.list.last().map(|e| e.line).unwrap_or(1);
            self.list.push(RowError::new(
                line,
                format!("{} more errors not listed", self.dropped),
            ));
        }
        self.list
    }
}

fn check_duplicates(rows: &[ImportRow], errors: &mut Errors) {
    let mut first: BTreeMap<&str, u64> = BTreeMap::new();
    for row in rows {
        if let Some(line) = first.get(row.patch.id.as_str()) {
            errors.push(RowError::field(
                row.line,
                Some(&row.patch.id),
                Field::Id,
                format!(
                    "duplicate id `{}` (first on line {line}); one file may state a device once",
                    row.patch.id
                ),
            ));
        } else {
            first.insert(&row.patch.id, row.line);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fields and their rules (shared with the admin API, which validates single devices the same
// way).

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Id,
    HardwareModule,
    Platform,
    Owner,
    Tags,
    Status,
    Source,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::HardwareModule => "hardware_module",
            Field::Platform => "platform",
            Field::Owner => "owner",
            Field::Tags => "tags",
            Field::Status => "status",
            Field::Source => "source",
        }
    }

    const ALL: [Field; 7] = [
        Field::Id,
        Field::HardwareModule,
        Field::Platform,
        Field::Owner,
        Field::Tags,
        Field::Status,
        Field::Source,
    ];
}

/// CSV column names as common MDM/ITAM exports spell them (compared case-insensitively, with
/// spaces and dashes read as `_`). Deliberately short: a column we would have to guess about
/// (`name`, `user`) is refused, so the operator renames it knowingly.
const CSV_ALIASES: &[(&str, Field)] = &[
    ("id", Field::Id),
    ("device_id", Field::Id),
    ("serial", Field::Id),
    ("serial_number", Field::Id),
    ("serialnumber", Field::Id),
    ("permanent_identifier", Field::Id),
    ("hardware_module", Field::HardwareModule),
    ("hardware_module_name", Field::HardwareModule),
    ("hw_module_id", Field::HardwareModule),
    ("platform", Field::Platform),
    ("os", Field::Platform),
    ("owner", Field::Owner),
    ("owner_email", Field::Owner),
    ("assigned_user", Field::Owner),
    ("tags", Field::Tags),
    ("status", Field::Status),
    ("source", Field::Source),
];

fn csv_field(header: &str) -> Option<Field> {
    let norm: String = header
        .trim()
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    CSV_ALIASES
        .iter()
        .find(|(name, _)| *name == norm)
        .map(|(_, f)| *f)
}

/// A device id: one SPIFFE path segment (letters, digits, `.`, `-`, `_`; not `.` or `..`),
/// the same rule the policy crate applies to `spiffe://<td>/device/<id>` — so every inventoried
/// id can appear in a certificate and in the admin API's URL paths without escaping.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the device id is empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("the device id is longer than {MAX_ID_LEN} bytes"));
    }
    if id == "." || id == ".." {
        return Err(format!("`{id}` is not a device id"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "the device id contains {c:?}; allowed are letters, digits, `.`, `-` and `_`"
        ));
    }
    Ok(())
}

/// Free text (owner, platform, hardware module, source): bounded, no control characters
/// (they would forge lines in logs and headers downstream).
pub fn check_text(value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(format!("longer than {MAX_TEXT_LEN} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(())
}

/// One tag: non-empty, no whitespace, `;` or `,` (the CSV separators), no control characters.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("a tag is empty".into());
    }
    if tag.chars().count() > MAX_TAG_LEN {
        return Err(format!(
            "tag `{tag}` is longer than {MAX_TAG_LEN} characters"
        ));
    }
    if tag
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ';' || c == ',')
    {
        return Err(format!(
            "tag {tag:?} contains whitespace, `;`, `,` or a control character"
        ));
    }
    Ok(())
}

pub fn check_tags<'a>(tags: impl IntoIterator<Item = &'a str>) -> Result<BTreeSet<String>, String> {
    let mut set = BTreeSet::new();
    for tag in tags {
        check_tag(tag)?;
        set.insert(tag.to_string());
    }
    if set.len() > MAX_TAGS {
        return Err(format!("more than {MAX_TAGS} tags"));
    }
    Ok(set)
}

/// Status names are case-insensitive in imports (MDM exports write `Active`).
pub fn parse_status(s: &str) -> Result<DeviceStatus, String> {
    s.trim().to_ascii_lowercase().parse()
}

// ---------------------------------------------------------------------------------------------
// CSV (RFC 4180, with a header row)

fn parse_csv(body: &[u8], errors: &mut Errors) -> Vec<ImportRow> {
    // Excel and several MDM consoles write a UTF-8 byte order mark.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if let Err(e) = check_csv_quoting(body) {
        errors.push(e);
        return Vec::new();
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        // Rows with the wrong number of cells are reported by us, with the line.
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let mut records = reader.records();
    let header = match records.next() {
        None => {
            errors.push(RowError::new(
                1,
                "the file is empty; a header row naming the columns is required",
            ));
            return Vec::new();
        }
        Some(Err(e)) => {
            errors.push(csv_error(&e));
            return Vec::new();
        }
        Some(Ok(h)) => h,
    };
    let Some(columns) = csv_columns(&header, errors) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(csv_error(&e));
                // The reader resynchronises at the next record; later rows are still checked.
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() != columns.len() {
            errors.push(RowError::new(
                line,
                format!(
                    "{} cells, but the header has {} columns",
                    record.len(),
                    columns.len()
                ),
            ));
            continue;
        }
        let mut cells: BTreeMap<Field, &str> = BTreeMap::new();
        for (field, cell) in columns.iter().zip(record.iter()) {
            cells.insert(*field, cell);
        }
        if let Some(patch) = csv_patch(line, &cells, errors) {
            rows.push(ImportRow { line, patch });
        }
    }
    rows
}

fn csv_error(e: &csv::Error) -> RowError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    let message = match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("cell {} is not valid UTF-8", err.field() + 1)
        }
        _ => e.to_string(),
    };
    RowError::new(line, message)
}

/// Maps the header to fields; `None` (with the errors pushed) if the header is unusable.
fn csv_columns(header: &csv::StringRecord, errors: &mut Errors) -> Option<Vec<Field>> {
    let line = header.position().map(|p| p.line()).unwrap_or(1);
    let mut columns = Vec::with_capacity(header.len());
    let mut seen: BTreeMap<Field, &str> = BTreeMap::new();
    let mut bad = false;
    for name in header.iter() {
        match csv_field(name) {
            None => {
                bad = true;
                errors.push(RowError::new(
                    line,
                    format!(
                        "unknown column `{name}` (known: {}; the first line must be the header)",
                        Field::ALL.map(Field::name).join(", ")
                    ),
                ));
            }
            Some(field) => {
                if let Some(other) = seen.insert(field, name) {
                    bad = true;
                    errors.push(RowError::new(
                        line,
                        format!(
                            "columns `{other}` and `{name}` both mean `{}`",
                            field.name()
                        ),
                    ));
                }
                columns.push(field);
            }
        }
    }
    if !seen.contains_key(&Field::Id) {
        bad = true;
        errors.push(RowError::new(
            line,
            "no `id` column: every row must name the device's permanent identifier",
        ));
    }
    (!bad).then_some(columns)
}

fn csv_patch(line: u64, cells: &BTreeMap<Field, &str>, errors: &mut Errors) -> Option<DevicePatch> {
    let id = cells.get(&Field::Id).copied().unwrap_or_default();
    if let Err(m) = check_device_id(id) {
        errors.push(RowError::field(line, None, Field::Id, m));
        return None;
    }
    let mut ok = true;
    let mut fail = |field: Field, m: String| {
        ok = false;
        errors.push(RowError::field(line, Some(id), field, m));
    };
    let mut text = |field: Field| -> Option<Option<String>> {
        let cell = cells.get(&field)?;
        if cell.is_empty() {
            return Some(None);
        }
        match check_text(cell) {
            Ok(()) => Some(Some(cell.to_string())),
            Err(m) => {
                fail(field, m);
                None
            }
        }
    };
    let hw_module_id = text(Field::HardwareModule);
    let platform = text(Field::Platform);
    let owner = text(Field::Owner);
    let source = text(Field::Source).flatten();
    let tags = cells.get(&Field::Tags).and_then(|cell| {
        match check_tags(
            cell.split(|c: char| c == ';' || c.is_whitespace())
                .filter(|t| !t.is_empty()),
        ) {
            Ok(t) => Some(t),
            Err(m) => {
                fail(Field::Tags, m);
                None
            }
        }
    });
    // An empty status cell says nothing: the device keeps its status (new ones: active).
    let status = match cells.get(&Field::Status) {
        Some(cell) if !cell.is_empty() => match parse_status(cell) {
            Ok(s) => Some(s),
            Err(m) => {
                fail(Field::Status, m);
                None
            }
        },
        _ => None,
    };
    ok.then(|| DevicePatch {
        id: id.to_string(),
        hw_module_id,
        platform,
        owner,
        tags,
        status,
        source,
    })
}

/// Checks the quoting of a CSV file against RFC 4180 §2 before the lenient `csv` reader sees
/// it: the reader would read an unterminated quote to the end of the file as one cell, and a
/// quote inside an unquoted cell as a literal, both of which silently change what the rows
/// say. Here they are errors with the line they start on.
fn check_csv_quoting(body: &[u8]) -> Result<(), RowError> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let mut line: u64 = 1;
    let mut quote_line: u64 = 1;
    for &b in body {
        state = match (state, b) {
            (State::FieldStart, b'"') => {
                quote_line = line;
                State::Quoted
            }
            (State::FieldStart | State::Unquoted, b',' | b'\n' | b'\r') => State::FieldStart,
            (State::Unquoted, b'"') => {
                return Err(RowError::new(
                    line,
                    "a quote inside an unquoted cell; quote the whole cell and double the quote (\"\")",
                ));
            }
            (State::FieldStart | State::Unquoted, _) => State::Unquoted,
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::QuoteInQuoted, b',' | b'\n' | b'\r') => State::FieldStart,
            // Spaces after a closing quote are tolerated (the reader trims them).
            (State::QuoteInQuoted, b' ' | b'\t') => State::QuoteInQuoted,
            (State::QuoteInQuoted, _) => {
                return Err(RowError::new(
                    line,
                    "text after the closing quote of a cell",
                ));
            }
        };
        if b == b'\n' {
            line += 1;
        }
    }
    if state == State::Quoted {
        return Err(RowError::new(
            quote_line,
            "unbalanced quotes: the quoted cell opened here is never closed",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JSON: an array of device objects, or `{"devices": [...]}` (what `GET /admin/v1/devices`
// returns, so an export of the inventory imports as is).

/// `deserialize_with` for fields where absent (`None`) and `null` (`Some(None)`) differ.
fn explicit<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDevice {
    id: String,
    #[serde(default, deserialize_with = "explicit")]
    hardware_module: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit")]
    platform: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit")]
    owner: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit")]
    tags: Option<Option<Vec<String>>>,
    /// A string, checked by [`parse_status`] for a message naming the allowed values.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    source: Option<String>,
    // Read-only fields of the API's device view: accepted so that an export round-trips, and
    // ignored (the store sets them).
    #[serde(default, rename = "created_at")]
    _created_at: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<serde::de::IgnoredAny>,
}

fn parse_json(body: &[u8], errors: &mut Errors) -> Vec<ImportRow> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            errors.push(RowError {
                line: e.line() as u64,
                column: Some(e.column() as u64),
                id: None,
                field: None,
                message: format!("invalid JSON: {e}"),
            });
            return Vec::new();
        }
    };
    let (elements, depth) = match value {
        Value::Array(a) => (a, 1),
        Value::Object(mut o) if o.len() == 1 && o.contains_key("devices") => {
            match o.remove("devices") {
                Some(Value::Array(a)) => (a, 2),
                _ => {
                    errors.push(RowError::new(1, "`devices` must be an array of devices"));
                    return Vec::new();
                }
            }
        }
        _ => {
            errors.push(RowError::new(
                1,
                "expected an array of devices or an object {\"devices\": [...]}",
            ));
            return Vec::new();
        }
    };
    let offsets = element_offsets(body, depth);
    // The scanner and serde_json agree on valid JSON; if they ever do not, say line 1 rather
    // than a wrong line.
    let lines = if offsets.len() == elements.len() {
        lines_at(body, &offsets)
    } else {
        Vec::new()
    };
    let line_of = |i: usize| -> u64 { lines.get(i).copied().unwrap_or(1) };
    let mut rows = Vec::with_capacity(elements.len());
    for (i, element) in elements.into_iter().enumerate() {
        let line = line_of(i);
        let id_hint = element
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let device: JsonDevice = match serde_json::from_value(element) {
            Ok(d) => d,
            Err(e) => {
                errors.push(RowError {
                    line,
                    column: None,
                    id: id_hint,
                    field: None,
                    message: format!("device {}: {e}", i + 1),
                });
                continue;
            }
        };
        if let Some(patch) = json_patch(line, device, errors) {
            rows.push(ImportRow { line, patch });
        }
    }
    rows
}

fn json_patch(line: u64, d: JsonDevice, errors: &mut Errors) -> Option<DevicePatch> {
    if let Err(m) = check_device_id(&d.id) {
        errors.push(RowError::field(line, None, Field::Id, m));
        return None;
    }
    let id = d.id.as_str();
    let mut ok = true;
    let mut fail = |field: Field, m: String| {
        ok = false;
        errors.push(RowError::field(line, Some(id), field, m));
    };
    let mut text = |field: Field, v: &Option<Option<String>>| {
        if let Some(Some(s)) = v {
            if let Err(m) = check_text(s) {
                fail(field, m);
            }
        }
    };
    text(Field::HardwareModule, &d.hardware_module);
    text(Field::Platform, &d.platform);
    text(Field::Owner, &d.owner);
    text(Field::Source, &d.source.clone().map(Some));
    let tags = match &d.tags {
        None => None,
        Some(None) => Some(BTreeSet::new()),
        Some(Some(list)) => match check_tags(list.iter().map(String::as_str)) {
            Ok(t) => Some(t),
            Err(m) => {
                fail(Field::Tags, m);
                None
            }
        },
    };
    let status = match &d.status {
        None => None,
        Some(s) => match parse_status(s) {
            Ok(s) => Some(s),
            Err(m) => {
                fail(Field::Status, m);
                None
            }
        },
    };
    if d.source.as_deref() == Some("") {
        fail(Field::Source, "the source is empty".into());
    }
    ok.then(|| DevicePatch {
        id: d.id.clone(),
        hw_module_id: d.hardware_module,
        platform: d.platform,
        owner: d.owner,
        tags,
        status,
        source: d.source,
    })
}

/// Byte offsets of the elements of the array at nesting `depth` (1: the top-level array;
/// 2: the array inside the top-level object). Only called on text serde_json has accepted,
/// so strings and escapes are well-formed; the scan never indexes out of bounds either way.
fn element_offsets(body: &[u8], depth: usize) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut stack: Vec<u8> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    // True right after the `[` or `,` of the target array: the next token starts an element.
    let mut expect_element = false;
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        let at_target = stack.len() == depth && stack.last() == Some(&b'[');
        if at_target && expect_element && b != b']' {
            offsets.push(i);
            expect_element = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                stack.push(b);
                if stack.len() == depth && b == b'[' {
                    expect_element = true;
                }
            }
            b']' | b'}' => {
                stack.pop();
            }
            b',' if at_target => expect_element = true,
            _ => {}
        }
    }
    offsets
}

/// The 1-based line of each of `offsets` (ascending), in one pass over `body`.
fn lines_at(body: &[u8], offsets: &[usize]) -> Vec<u64> {
    let mut lines = Vec::with_capacity(offsets.len());
    let mut line = 1;
    let mut pos = 0;
    for &off in offsets {
        let end = off.min(body.len()).max(pos);
        line += body[pos..end].iter().filter(|&&b| b == b'\n').count() as u64;
        pos = end;
        lines.push(line);
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Diffs

/// One field an update changes, with its value before and after (JSON: string, array or null).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Value,
    pub after: Value,
}

/// The fields that differ between two versions of a device, in a fixed order.
pub fn field_changes(before: &Device, after: &Device) -> Vec<FieldChange> {
    let opt = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
    let tags = |t: &BTreeSet<String>| Value::Array(t.iter().cloned().map(Value::String).collect());
    let pairs = [
        (
            Field::HardwareModule,
            opt(&before.hw_module_id),
            opt(&after.hw_module_id),
        ),
        (Field::Platform, opt(&before.platform), opt(&after.platform)),
        (Field::Owner, opt(&before.owner), opt(&after.owner)),
        (Field::Tags, tags(&before.tags), tags(&after.tags)),
        (
            Field::Status,
            Value::String(before.status.as_str().into()),
            Value::String(after.status.as_str().into()),
        ),
        (
            Field::Source,
            Value::String(before.source.clone()),
            Value::String(after.source.clone()),
        ),
    ];
    pairs
        .into_iter()
        .filter(|(_, b, a)| b != a)
        .map(|(f, before, after)| FieldChange {
            field: f.name().to_string(),
            before,
            after,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(s: &str) -> Result<Vec<ImportRow>, Vec<RowError>> {
        parse(s.as_bytes(), ImportFormat::Csv)
    }

    fn json(s: &str) -> Result<Vec<ImportRow>, Vec<RowError>> {
        parse(s.as_bytes(), ImportFormat::Json)
    }

    fn one_error(r: Result<Vec<ImportRow>, Vec<RowError>>) -> RowError {
        let errs = r.expect_err("should fail");
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
    }

    #[test]
    fn csv_rows_with_all_fields_and_defaults() {
        let rows = csv("id,hardware_module,platform,owner,tags,status,source\n\
             SN-1,,macos,alice@example.com,eng;laptop,Active,jamf\n\
             SN-2,tpm-ek-1,linux,,eng ops,,\n")
        .unwrap();
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(a.line, 2);
        assert_eq!(a.patch.id, "SN-1");
        assert_eq!(a.patch.hw_module_id, Some(None), "empty cell clears");
        assert_eq!(a.patch.platform, Some(Some("macos".into())));
        assert_eq!(
            a.patch.tags,
            Some(["eng".to_string(), "laptop".to_string()].into())
        );
        assert_eq!(a.patch.status, Some(DeviceStatus::Active));
        assert_eq!(a.patch.source.as_deref(), Some("jamf"));
        let b = &rows[1];
        assert_eq!(b.line, 3);
        assert_eq!(b.patch.status, None, "empty status says nothing");
        assert_eq!(b.patch.source, None);
        assert_eq!(b.patch.owner, Some(None));
    }

    #[test]
    fn csv_aliases_bom_and_quoted_cells() {
        let rows =
            csv("\u{feff}Serial Number,OS,Owner\n\"C02-X\",\"mac, os\",\"a \"\"b\"\"\"\n").unwrap();
        assert_eq!(rows[0].patch.id, "C02-X");
        assert_eq!(rows[0].patch.platform, Some(Some("mac, os".into())));
        assert_eq!(rows[0].patch.owner, Some(Some("a \"b\"".into())));
        // Columns the file lacks say nothing.
        assert_eq!(rows[0].patch.tags, None);
        assert_eq!(rows[0].patch.status, None);
    }

    #[test]
    fn csv_unbalanced_quote_is_refused_with_its_line() {
        let e = one_error(csv("id,owner\nSN-1,alice\nSN-2,\"bob\nSN-3,carol\n"));
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unbalanced quotes"), "{e}");
        let e = one_error(csv("id,owner\nSN-1,al\"ice\n"));
        assert_eq!(e.line, 2);
        assert!(e.message.contains("quote inside an unquoted cell"), "{e}");
        let e = one_error(csv("id,owner\nSN-1,\"alice\"x\n"));
        assert!(e.message.contains("after the closing quote"), "{e}");
    }

    #[test]
    fn csv_header_problems() {
        let e = one_error(csv("platform,owner\nmacos,alice\n"));
        assert!(e.message.contains("no `id` column"), "{e}");
        let e = one_error(csv("id,owner,colour\nSN-1,alice,red\n"));
        assert!(e.message.contains("unknown column `colour`"), "{e}");
        assert_eq!(e.line, 1);
        let e = one_error(csv("id,serial\nA,B\n"));
        assert!(e.message.contains("both mean `id`"), "{e}");
        let e = one_error(csv(""));
        assert!(e.message.contains("header row"), "{e}");
        // A file without a header: its first row reads as unknown column names.
        let errs = csv("SN-1,macos\n").unwrap_err();
        assert!(errs
            .iter()
            .any(|e| e.message.contains("unknown column `SN-1`")));
    }

    #[test]
    fn csv_row_problems_are_all_reported_with_lines() {
        let errs = csv("id,status,tags\n\
             SN-1,active,ok\n\
             SN-2,lost,ok\n\
             ,active,\n\
             SN/4,active,\n\
             SN-1,retired,\n\
             SN-6,active\n")
        .unwrap_err();
        let lines: Vec<u64> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7], "{errs:?}");
        assert_eq!(errs[0].field.as_deref(), Some("status"));
        assert!(errs[0].message.contains("`lost` is not a device status"));
        assert!(errs[1].message.contains("empty"));
        assert!(errs[2].message.contains("'/'"));
        assert!(errs[3]
            .message
            .contains("duplicate id `SN-1` (first on line 2)"));
        assert!(errs[4].message.contains("2 cells"));
    }

    #[test]
    fn csv_control_characters_and_long_values_are_refused() {
        let e = one_error(csv("id,owner\nSN-1,\"a\u{7}b\"\n"));
        assert_eq!(e.field.as_deref(), Some("owner"));
        let long = "x".repeat(MAX_TEXT_LEN + 1);
        let e = one_error(csv(&format!("id,platform\nSN-1,{long}\n")));
        assert_eq!(e.field.as_deref(), Some("platform"));
        let e = one_error(csv("id,tags\nSN-1,\"a,b\"\n"));
        assert_eq!(e.field.as_deref(), Some("tags"));
    }

    #[test]
    fn csv_invalid_utf8_is_an_error_not_a_panic() {
        let errs = parse(b"id,owner\nSN-1,\xff\xfe\n", ImportFormat::Csv).unwrap_err();
        assert!(errs[0].message.contains("UTF-8"), "{errs:?}");
    }

    #[test]
    fn json_array_and_wrapper_with_element_lines() {
        let body = "[\n  {\"id\": \"SN-1\", \"tags\": [\"eng\"], \"status\": \"quarantined\"},\n  {\n    \"id\": \"SN-2\", \"owner\": null\n  }\n]";
        let rows = json(body).unwrap();
        assert_eq!((rows[0].line, rows[1].line), (2, 3));
        assert_eq!(rows[0].patch.status, Some(DeviceStatus::Quarantined));
        assert_eq!(rows[1].patch.owner, Some(None), "null clears");
        assert_eq!(rows[1].patch.platform, None, "absent keeps");
        let wrapped = "{\"devices\": [\n{\"id\": \"A\", \"created_at\": \"x\"},\n{\"id\": \"B\"}]}";
        let rows = json(wrapped).unwrap();
        assert_eq!((rows[0].line, rows[1].line), (2, 3));
    }

    #[test]
    fn json_problems() {
        let e = one_error(json("[\n{\"id\": \"A\",\n \"owner\": }\n]"));
        assert_eq!(e.line, 3);
        assert!(e.column.is_some());
        assert!(e.message.starts_with("invalid JSON"), "{e}");
        let errs = json(
            "[\n{\"id\":\"A\",\"colour\":\"red\"},\n{\"id\":\"B\",\"status\":\"lost\"},\n{\"id\":\"A\"},\n{\"platform\":\"x\"},\n42\n]",
        )
        .unwrap_err();
        let lines: Vec<u64> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 5, 6], "{errs:?}");
        assert!(errs[0].message.contains("unknown field `colour`"));
        assert!(errs[1].message.contains("`lost`"));
        assert!(errs[2].message.contains("missing field `id`"));
        assert!(errs[3].message.contains("invalid type"));
        // "A" on line 2 failed, so line 4's "A" is no duplicate of a parsed row.
        let e = one_error(json("{\"devices\": 3}"));
        assert!(e.message.contains("array"));
        let e = one_error(json("\"x\""));
        assert!(e.message.contains("expected an array"));
        let e = one_error(json("[{\"id\":\"A\"},{\"id\":\"A\"}]"));
        assert!(e.message.contains("duplicate id"));
    }

    #[test]
    fn element_offsets_ignore_brackets_in_strings() {
        let body = br#"[{"id":"a[,]\"{"}, {"id":"b"} ,[1,2]]"#;
        let offs = element_offsets(body, 1);
        assert_eq!(offs.len(), 3);
        assert_eq!(body[offs[1]], b'{');
        assert_eq!(body[offs[2]], b'[');
        assert!(element_offsets(b"[]", 1).is_empty());
    }

    #[test]
    fn resolve_keeps_unstated_fields_and_defaults_new_devices() {
        let patch = DevicePatch {
            id: "SN-1".into(),
            owner: Some(None),
            ..Default::default()
        };
        let new = patch.resolve(None, "import");
        assert_eq!(new.status, DeviceStatus::Active);
        assert_eq!(new.source, "import");
        let current = Device {
            id: "SN-1".into(),
            hw_module_id: Some("hw".into()),
            platform: Some("macos".into()),
            owner: Some("alice".into()),
            tags: ["eng".to_string()].into(),
            status: DeviceStatus::Quarantined,
            source: "jamf".into(),
            created_at: 0,
            updated_at: 0,
        };
        let new = patch.resolve(Some(&current), "import");
        assert_eq!(new.owner, None);
        assert_eq!(new.platform.as_deref(), Some("macos"));
        assert_eq!(
            new.status,
            DeviceStatus::Quarantined,
            "never re-activated by omission"
        );
        assert_eq!(new.source, "jamf");
    }

    #[test]
    fn never_panics_on_garbage() {
        // A cheap fuzz: every prefix of some tricky inputs, in both formats.
        let inputs: [&[u8]; 4] = [
            b"id,owner\n\"a\"\"\",\"\n\r\n\xff,\"",
            b"[{\"id\":\"\\u00\"}, {\"devices\":[[[]]]}]",
            b"{\"devices\":[{\"id\":\"a\",\"tags\":[1]}]}",
            b"\xEF\xBB\xBF\"",
        ];
        for input in inputs {
            for end in 0..=input.len() {
                let _ = parse(&input[..end], ImportFormat::Csv);
                let _ = parse(&input[..end], ImportFormat::Json);
            }
        }
    }
}
