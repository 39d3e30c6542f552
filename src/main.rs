//! The `portcullis` binary: command-line parsing and nothing else. Each subcommand hands over
//! to the library (`portcullis::*`) or a crate; errors become one report with context here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use portcullis::{inspect, inventory_cli, quickstart, serve};
use portcullis_config::DeviceStatus;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Device-identity enforcement point: only inventoried, currently trusted devices get through"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every component the config file enables (the CA, the mTLS gateway, the admin
    /// listener). Reloads on SIGHUP and when the files change; SIGTERM drains and stops.
    Serve {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Quickstart: create (or reuse) a data dir with a CA, a demo inventory and a config,
    /// start the CA, a demo upstream and the gateway, and print commands to try.
    Up {
        #[arg(long, value_name = "DIR", default_value = quickstart::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Gateway address written into a new config.
        #[arg(long, value_name = "ADDR", default_value_t = quickstart::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Admin (metrics, health) address written into a new config.
        #[arg(long, value_name = "ADDR", default_value_t = quickstart::DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
        /// Demo upstream address written into a new config.
        #[arg(long, value_name = "ADDR", default_value_t = quickstart::DEFAULT_UPSTREAM_LISTEN)]
        upstream_listen: SocketAddr,
        /// CA (ACME + inventory admin API) address written into a new config.
        #[arg(long, value_name = "ADDR", default_value_t = quickstart::DEFAULT_CA_LISTEN)]
        ca_listen: SocketAddr,
    },
    /// The trusted inventory, through the CA's admin API (the CA must be running).
    Inventory {
        /// The config whose [ca] section says where the CA is and how to authenticate.
        #[arg(long, short, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// A tokens file (`name token` lines) to take the bearer token from, instead of
        /// ca.admin_api.tokens_file. PORTCULLIS_ADMIN_TOKEN wins over both.
        #[arg(long, value_name = "FILE", global = true)]
        token_file: Option<PathBuf>,
        /// Authenticate with an admin client certificate (PEM chain) instead of a token.
        #[arg(long, value_name = "PEM", global = true, requires = "key")]
        cert: Option<PathBuf>,
        /// The private key of --cert.
        #[arg(long, value_name = "PEM", global = true, requires = "cert")]
        key: Option<PathBuf>,
        #[command(subcommand)]
        command: InventoryCommand,
    },
    /// CA commands.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificate commands.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Device attestation (device-attest-01) commands.
    Attest {
        #[command(subcommand)]
        command: AttestCommand,
    },
    /// The device agent: TPM key, open TPM enrollment, device certificate by ACME
    /// device-attest-01, renewal.
    Agent(portcullis::agent_cli::AgentArgs),
}

#[derive(Subcommand)]
enum AttestCommand {
    /// Run every check of an attestation that the given inputs allow, as the CA would, and
    /// print each result and the device identifiers found; exits 1 if any check fails.
    Inspect {
        /// Attestation object (CBOR, base64url, or the JSON payload {"attObj": ...}), or a
        /// certificate chain (PEM, leaf first; or one DER certificate).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// tpm, apple or step [default: attObj.fmt, or detected from the chain's leaf].
        #[arg(long, value_name = "F")]
        format: Option<String>,
        /// PEM roots replacing the format's embedded defaults (repeatable).
        #[arg(long, value_name = "PEM")]
        roots: Vec<PathBuf>,
        /// Verify at this instant instead of now (RFC 3339, e.g. 2023-11-14T22:13:20Z).
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// The challenge's key authorization, token.thumbprint (RFC 8555 §8.1).
        #[arg(long, value_name = "KA", group = "challenge")]
        key_authorization: Option<String>,
        /// The challenge token alone (enough for Apple's freshness code).
        #[arg(long, value_name = "T", group = "challenge")]
        token: Option<String>,
        /// Hex of the value the statement should carry: TPM certInfo.extraData, Apple nonce.
        #[arg(long, value_name = "HEX", group = "challenge")]
        extra_data: Option<String>,
        /// Accept SHA-1 in TPM attestations, as ca.attestation.allow_sha1_tpm does.
        #[arg(long)]
        allow_sha1: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file: prints OK, or every problem as `file:line: key: message` and
    /// exits 1.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum InventoryCommand {
    /// Every device with its status, platform, owner and tags.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One device and the history of its status.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Add a device, or replace the descriptive fields of an existing one.
    Add {
        id: String,
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// Repeat for several tags.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// The hardware-module identifier (HardwareModuleName, RFC 4108).
        #[arg(long, value_name = "ID")]
        hardware_module: Option<String>,
        /// New devices are active unless told otherwise; an existing device keeps its status.
        #[arg(long, requires = "reason")]
        status: Option<DeviceStatus>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Upsert the devices of a CSV or JSON export (MDM/ITAM). Nothing is applied if any row
    /// is wrong; every error is listed with its line.
    Import {
        file: PathBuf,
        /// csv or json [default: from the file name].
        #[arg(long)]
        format: Option<portcullis_ca::inventory::import::ImportFormat>,
        /// Print what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// The TPM endorsement keys (EKs) bound or pinned to a device.
    Eks {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Pin a TPM's endorsement key to a device before it enrolls, so its first enrollment is
    /// proven, not trusted. EK_SHA256: `openssl x509 -in ek.pem -pubkey -noout | openssl pkey
    /// -pubin -outform der | sha256sum`.
    PinEk {
        id: String,
        #[arg(value_name = "EK_SHA256")]
        ek_sha256: String,
        #[arg(long)]
        reason: String,
    },
    /// Forget every EK of a device (its TPM was replaced).
    UnbindEks {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Change a device's status. Leaving `active` revokes its certificates and cuts its live
    /// connections at every enforcement point.
    SetStatus {
        id: String,
        status: DeviceStatus,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root and an intermediate CA (keys 0600) and the trust bundle to hand to
    /// enforcement points. Refuses to overwrite an existing CA. `serve` creates one on first
    /// start too; `init` lets you choose the key type and name and look before serving.
    Init {
        /// Take data_dir, name and key_type from the [ca] section of this config.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The CA's data directory (`[ca] data_dir`).
        #[arg(long, value_name = "DIR", required_unless_present = "config")]
        data_dir: Option<PathBuf>,
        /// Subject names become "<NAME> Root CA" and "<NAME> Intermediate CA".
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// ecdsa-p256 (default), ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096.
        #[arg(long, value_name = "TYPE")]
        key_type: Option<portcullis_config::CaKeyType>,
    },
    /// Sign an authority revocation list (an empty CRL of the root: the intermediate is not
    /// revoked) with the root key. Relying parties that check every CA of the chain need it
    /// beside the intermediate's CRL — nginx `ssl_crl` does: give it both in one PEM file.
    /// The running CA never loads the root key; this command needs read access to it.
    Arl {
        /// The config whose [ca] section names the CA's data_dir.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where to write the ARL (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Days until nextUpdate: sign a new one before then.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Issue a node certificate for an enforcement point (a gateway in another process) to
    /// subscribe to the status feed with: writes NAME.pem (chain) and NAME.key (0600).
    NodeCert {
        /// The node's name, put into `spiffe://<trust-domain>/node/<NAME>`.
        #[arg(value_name = "NAME")]
        name: String,
        /// The config whose [ca] section names the CA's data_dir.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Directory to write NAME.pem and NAME.key into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Lifetime in days (default 30; at most the CA's max_lifetime).
        #[arg(long)]
        days: Option<u64>,
    },
    /// List the node certificates the CA issued, with their state.
    Nodes {
        /// The config whose [ca] section names the CA's data_dir.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Revoke every live certificate of a node: its status feed subscription ends within
    /// seconds, it cannot reconnect, and the CRL and OCSP say revoked.
    NodeRevoke {
        /// The node's name, as given to node-cert.
        #[arg(value_name = "NAME")]
        name: String,
        /// The config whose [ca] section names the CA's data_dir.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// RFC 5280 reason: keyCompromise, superseded or cessationOfOperation.
        #[arg(long, default_value = "cessationOfOperation")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Print the device identity a certificate carries (as the gateway reads it) and, with
    /// --root, whether the gateway would accept it; exits 1 if it would not.
    Inspect {
        /// PEM (leaf first, then intermediates) or DER certificate.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// PEM bundle of trusted roots to verify against.
        #[arg(long, value_name = "PEM")]
        root: Option<PathBuf>,
        /// Take trust_domain, clock_skew, max_lifetime and (unless --root) the roots from this
        /// config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// SPIFFE trust domain of device URIs [default: portcullis.local, or the config's].
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: Option<String>,
        /// Verify at this instant instead of now (RFC 3339, e.g. 2030-01-01T00:00:00Z).
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
    },
}

#[global_allocator]
static GLOBAL: portcullis_gateway::mimalloc::MiMalloc = portcullis_gateway::mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => {
            serve::run_blocking(&config)
                .with_context(|| format!("serving {}", config.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match portcullis_config::load_file(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                // Already `file:line: key: message`, one per line: print as is, no prefix,
                // so that editors can jump to the line.
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Up {
            data_dir,
            listen,
            admin_listen,
            upstream_listen,
            ca_listen,
        } => {
            let opts = quickstart::UpOptions {
                data_dir,
                listen,
                admin_listen,
                upstream_listen,
                ca_listen,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("portcullis")
                .build()
                .context("cannot start the Tokio runtime")?;
            runtime.block_on(async {
                let shutdown = portcullis_gateway::CancellationToken::new();
                let on_signal = shutdown.clone();
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("cannot listen for SIGTERM")?;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    on_signal.cancel();
                });
                quickstart::run(&opts, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory {
            config,
            token_file,
            cert,
            key,
            command,
        } => {
            let target = inventory_cli::Target {
                config: config.ok_or_else(|| anyhow!("--config FILE is needed"))?,
                token_file,
                cert,
                key,
            };
            let action = match command {
                InventoryCommand::List { json } => inventory_cli::Action::List { json },
                InventoryCommand::Show { id, json } => inventory_cli::Action::Show { id, json },
                InventoryCommand::Add {
                    id,
                    platform,
                    owner,
                    tags,
                    hardware_module,
                    status,
                    reason,
                } => inventory_cli::Action::Add {
                    id,
                    device: portcullis_ca::admin_api::model::PutDevice {
                        id: None,
                        hardware_module,
                        platform,
                        owner,
                        tags,
                        status,
                        source: Some("cli".into()),
                        reason,
                    },
                },
                InventoryCommand::Import {
                    file,
                    format,
                    dry_run,
                    json,
                } => inventory_cli::Action::Import {
                    file,
                    format,
                    dry_run,
                    json,
                },
                InventoryCommand::SetStatus { id, status, reason } => {
                    inventory_cli::Action::SetStatus { id, status, reason }
                }
                InventoryCommand::Eks { id, json } => inventory_cli::Action::Eks { id, json },
                InventoryCommand::PinEk {
                    id,
                    ek_sha256,
                    reason,
                } => inventory_cli::Action::PinEk {
                    id,
                    ek_sha256,
                    reason,
                },
                InventoryCommand::UnbindEks { id, reason } => {
                    inventory_cli::Action::UnbindEks { id, reason }
                }
            };
            let out = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the Tokio runtime")?
                .block_on(inventory_cli::run(&target, action))?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command:
                CaCommand::Init {
                    config,
                    data_dir,
                    name,
                    key_type,
                },
        } => {
            let section = match &config {
                Some(path) => {
                    let config = portcullis_config::load_file(path).map_err(|e| anyhow!("{e}"))?;
                    Some(
                        config
                            .ca
                            .ok_or_else(|| anyhow!("{}: no [ca] section", path.display()))?,
                    )
                }
                None => None,
            };
            let data_dir = data_dir
                .or_else(|| section.as_ref().map(|c| c.data_dir.clone()))
                .ok_or_else(|| anyhow!("--data-dir or --config is needed"))?;
            let mut opts = portcullis_ca::pki::InitOptions::default();
            if let Some(c) = &section {
                opts.name = c.name.clone();
                opts.key = portcullis_ca::configure::key_algorithm(c.key_type);
            }
            if let Some(name) = name {
                opts.name = name;
            }
            if let Some(key) = key_type {
                opts.key = portcullis_ca::configure::key_algorithm(key);
            }
            let paths = portcullis_ca::service::Ca::init(
                &data_dir,
                &opts,
                &portcullis_ca::clock::SystemClock,
            )?;
            println!("root:          {}", paths.root_cert.display());
            println!("intermediate:  {}", paths.intermediate_cert.display());
            println!(
                "trust bundle:  {}  (hand this to enforcement points and ACME clients)",
                paths.bundle.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command: CaCommand::Arl { config, out, days },
        } => {
            let config = portcullis_config::load_file(&config).map_err(|e| anyhow!("{e}"))?;
            let ca = config
                .ca
                .ok_or_else(|| anyhow!("the config has no [ca] section"))?;
            let paths = portcullis_ca::service::Ca::paths(&ca.data_dir);
            let now = std::time::SystemTime::now();
            // The CRL number only has to grow: seconds since the epoch do, across runs.
            let number = now
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let der = portcullis_ca::revocation::crl::root_arl(
                &paths,
                number,
                now,
                std::time::Duration::from_secs(days.max(1) * 24 * 3600),
            )?;
            std::fs::write(&out, portcullis_ca::pki::pem::encode("X509 CRL", &der))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} (next update in {} days)",
                out.display(),
                days.max(1)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command:
                CaCommand::NodeCert {
                    name,
                    config,
                    out,
                    days,
                },
        } => {
            let lifetime = days.map(|d| std::time::Duration::from_secs(d.max(1) * 24 * 3600));
            let (cert, key) = portcullis::node_cli::issue(&config, &name, &out, lifetime)?;
            println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
            println!("in the enforcement point's config:\n");
            println!("[status_feed]");
            println!("url = \"https://<ca-host>:<port>/feed/v2/status\"");
            println!("ca_roots = \"<the CA's bundle.pem>\"");
            println!("cert = \"{}\"", cert.display());
            println!("key = \"{}\"", key.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command: CaCommand::Nodes { config },
        } => {
            print!("{}", portcullis::node_cli::list(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca {
            command:
                CaCommand::NodeRevoke {
                    name,
                    config,
                    reason,
                },
        } => {
            let serials = portcullis::node_cli::revoke(&config, &name, &reason)?;
            if serials.is_empty() {
                println!("node {name} has no live certificate left to revoke");
            }
            for serial in serials {
                println!("revoked {serial} (node {name}, {reason})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert {
            command:
                CertCommand::Inspect {
                    file,
                    root,
                    config,
                    trust_domain,
                    at,
                },
        } => {
            let (mut trust, mut roots) = match &config {
                Some(path) => {
                    let config = portcullis_config::load_file(path).map_err(|e| anyhow!("{e}"))?;
                    let roots = config.trust.roots.clone();
                    (config.trust, roots)
                }
                None => (portcullis_config::TrustConfig::default(), Vec::new()),
            };
            if let Some(root) = root {
                roots = vec![root];
            }
            if let Some(td) = trust_domain {
                trust.trust_domain = td;
            }
            let at = at
                .as_deref()
                .map(portcullis::devpki::parse_rfc3339)
                .transpose()?;
            let report = inspect::inspect(&inspect::InspectRequest {
                cert: file,
                roots,
                trust,
                at,
            })?;
            print!("{}", report.text);
            Ok(match report.verdict {
                Some(Err(_)) => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            })
        }
        Command::Agent(args) => portcullis::agent_cli::run(args),
        Command::Attest {
            command:
                AttestCommand::Inspect {
                    file,
                    format,
                    roots,
                    at,
                    key_authorization,
                    token,
                    extra_data,
                    allow_sha1,
                },
        } => {
            let out = portcullis::attest_cli::inspect(&portcullis::attest_cli::InspectRequest {
                file,
                format,
                roots,
                at,
                key_authorization,
                token,
                extra_data,
                allow_sha1,
            })?;
            print!("{}", out.text);
            Ok(if out.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
