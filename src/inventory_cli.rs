//! `portcullis inventory …`: the trusted inventory from the command line, through the CA's
//! admin API (like `tctl` talks to Teleport's auth server) — so every change goes the one way
//! that is audited, recorded in the history and pushed to enforcement points at once.
//!
//! Where to connect and how to authenticate come from the config file's `[ca]` section: the
//! base URL, the CA bundle (`<data_dir>/pki/bundle.pem`) and, unless told otherwise, the first
//! token of `admin_api.tokens_file` (readable only by the CA's operator, which is the point).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use portcullis_ca::admin_api::client::{AdminClient, Credential};
use portcullis_ca::admin_api::model::{DeviceResult, DeviceView, ImportReport, PutDevice};
use portcullis_ca::inventory::import::ImportFormat;
use portcullis_config::DeviceStatus;

/// Environment variable holding a bearer token (wins over the tokens file).
pub const TOKEN_ENV: &str = "PORTCULLIS_ADMIN_TOKEN";

/// How to reach the admin API.
#[derive(Debug, Clone)]
pub struct Target {
    pub config: PathBuf,
    pub token_file: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum Action {
    List {
        json: bool,
    },
    Show {
        id: String,
        json: bool,
    },
    Add {
        device: PutDevice,
        id: String,
    },
    Import {
        file: PathBuf,
        format: Option<ImportFormat>,
        dry_run: bool,
        json: bool,
    },
    SetStatus {
        id: String,
        status: DeviceStatus,
        reason: String,
    },
    /// The TPM endorsement keys of a device (open TPM enrollment).
    Eks {
        id: String,
        json: bool,
    },
    PinEk {
        id: String,
        ek_sha256: String,
        reason: String,
    },
    UnbindEks {
        id: String,
        reason: String,
    },
}

/// Runs one action and returns what to print on stdout.
pub async fn run(target: &Target, action: Action) -> anyhow::Result<String> {
    let client = connect(target)?;
    Ok(match action {
        Action::List { json } => {
            let devices = client.list().await?;
            if json {
                serde_json::to_string_pretty(&devices)? + "\n"
            } else {
                table(&devices)
            }
        }
        Action::Show { id, json } => {
            let detail = client.show(&id).await?;
            if json {
                serde_json::to_string_pretty(&detail)? + "\n"
            } else {
                let mut s = describe(&detail.device);
                s.push_str("history:\n");
                for h in &detail.history {
                    let from = h.from.map_or("(new)".to_string(), |f| f.to_string());
                    let _ = writeln!(
                        s,
                        "  {}  {from} -> {}  by {}: {}",
                        h.at, h.to, h.actor, h.reason
                    );
                }
                s
            }
        }
        Action::Add { mut device, id } => {
            device.id = Some(id);
            result(&client.put(&device).await?)
        }
        Action::SetStatus { id, status, reason } => {
            result(&client.set_status(&id, status, &reason).await?)
        }
        Action::Eks { id, json } => {
            let list = client.eks(&id).await?;
            if json {
                serde_json::to_string_pretty(&list)? + "\n"
            } else {
                ek_table(&list)
            }
        }
        Action::PinEk {
            id,
            ek_sha256,
            reason,
        } => ek_table(&client.pin_ek(&id, &ek_sha256, &reason).await?),
        Action::UnbindEks { id, reason } => {
            let r = client.unbind_eks(&id, &reason).await?;
            format!(
                "{id}: {} EK(s) forgotten; its next enrollment binds anew\n",
                r.removed
            )
        }
        Action::Import {
            file,
            format,
            dry_run,
            json,
        } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let format = match format {
                Some(f) => f,
                None => format_of(&file)?,
            };
            let report = client.import(body, format, dry_run).await?;
            if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else {
                import_report(&report)
            }
        }
    })
}

fn ek_table(list: &portcullis_ca::admin_api::model::EkList) -> String {
    if list.eks.is_empty() {
        return "no EK bound or pinned: the first genuine TPM to enroll binds\n".into();
    }
    let mut s = String::new();
    for ek in &list.eks {
        let _ = writeln!(
            s,
            "{}  {:<8}  {}",
            ek.ek_sha256,
            ek.origin,
            [&ek.tpm_manufacturer, &ek.tpm_model, &ek.tpm_version]
                .iter()
                .filter_map(|v| v.as_deref())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    s
}

fn connect(target: &Target) -> anyhow::Result<AdminClient> {
    let config = portcullis_config::load_file(&target.config).map_err(|e| anyhow!("{e}"))?;
    let ca = config.ca.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: no [ca] section: the inventory lives in the CA",
            target.config.display()
        )
    })?;
    let bundle = portcullis_ca::service::Ca::paths(&ca.data_dir).bundle;
    let credential = match (&target.cert, &target.key) {
        (Some(cert), Some(key)) => Credential::ClientCert {
            cert: cert.clone(),
            key: key.clone(),
        },
        (Some(_), None) | (None, Some(_)) => bail!("--cert and --key go together"),
        (None, None) => Credential::Token(token(
            target
                .token_file
                .as_deref()
                .or(ca.admin_api.tokens_file.as_deref()),
        )?),
    };
    Ok(AdminClient::new(&ca.base_url(), &bundle, credential)?)
}

/// The token from the environment, or the first `name token` line of the tokens file.
fn token(file: Option<&Path>) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var(TOKEN_ENV) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let file = file.ok_or_else(|| {
        anyhow!(
            "no credential: set {TOKEN_ENV}, pass --token-file or --cert/--key, \
             or configure ca.admin_api.tokens_file"
        )
    })?;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the tokens file {}", file.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .ok_or_else(|| anyhow!("{}: no `name token` line", file.display()))
}

fn format_of(file: &Path) -> anyhow::Result<ImportFormat> {
    match file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(ImportFormat::Csv),
        Some("json") => Ok(ImportFormat::Json),
        _ => bail!(
            "{}: cannot tell CSV from JSON by the name; pass --format",
            file.display()
        ),
    }
}

fn table(devices: &[DeviceView]) -> String {
    let rows: Vec<[String; 5]> = devices
        .iter()
        .map(|d| {
            [
                d.id.clone(),
                d.status.to_string(),
                d.platform.clone().unwrap_or_default(),
                d.owner.clone().unwrap_or_default(),
                d.tags.join(","),
            ]
        })
        .collect();
    let header = ["ID", "STATUS", "PLATFORM", "OWNER", "TAGS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(s, "{}", line.join("  ").trim_end());
    }
    s
}

fn describe(d: &DeviceView) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!(
        "id:              {}\nstatus:          {}\nhardware module: {}\nplatform:        {}\n\
         owner:           {}\ntags:            {}\nsource:          {}\ncreated:         {}\n\
         updated:         {}\n",
        d.id,
        d.status,
        opt(&d.hardware_module),
        opt(&d.platform),
        opt(&d.owner),
        d.tags.join(","),
        d.source,
        d.created_at,
        d.updated_at
    )
}

fn result(r: &DeviceResult) -> String {
    let mut s = format!("{:?}: {} ({})\n", r.outcome, r.device.id, r.device.status).to_lowercase();
    for c in &r.changes {
        let _ = writeln!(s, "  {}: {} -> {}", c.field, c.before, c.after);
    }
    if !r.revoked_serials.is_empty() {
        let _ = writeln!(
            s,
            "  revoked certificates: {}",
            r.revoked_serials.join(", ")
        );
    }
    s
}

fn import_report(r: &ImportReport) -> String {
    let mut s = String::new();
    for a in &r.added {
        let _ = writeln!(s, "+ {} ({}) line {}", a.device.id, a.device.status, a.line);
    }
    for u in &r.updated {
        let _ = writeln!(s, "~ {} line {}", u.id, u.line);
        for c in &u.changes {
            let _ = writeln!(s, "    {}: {} -> {}", c.field, c.before, c.after);
        }
        if !u.revoked_serials.is_empty() {
            let _ = writeln!(s, "    revokes: {}", u.revoked_serials.join(", "));
        }
    }
    let sum = &r.summary;
    let _ = writeln!(
        s,
        "{}: {} added, {} updated, {} unchanged, {} certificates revoked",
        if r.applied {
            "applied"
        } else {
            "dry run, nothing changed"
        },
        sum.added,
        sum.updated,
        sum.unchanged,
        sum.revoked
    );
    s
}
