//! `portcullis agent enroll | renew | run | status`: the device agent's command line. The work
//! is in the `portcullis-agent` crate; this file only maps flags to its [`AgentConfig`].
//!
//! Exit status: 0 success; 1 failure (retrying may help); 3 the CA refuses this device (not in
//! the inventory, quarantined or retired: renewing again will not help); 2 usage (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use portcullis_agent::tpm::ak::AkAlg;
use portcullis_agent::tpm::Persistent;
use portcullis_agent::{AgentConfig, AgentError, KeyMode, SystemClock, TpmKeyConfig};

/// Exit status when the CA refuses the device.
pub const EXIT_DEVICE_NOT_TRUSTED: u8 = 3;

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create the device key (in the TPM), obtain an AK certificate by open TPM enrollment if
    /// there is none yet, and get a device certificate with ACME device-attest-01.
    Enroll(Common),
    /// A new certificate for the same device key.
    Renew(Common),
    /// Keep the certificate fresh: renew at two thirds of its lifetime (or in the CA's ARI
    /// window), retry failures with backoff; exit 3 when the CA refuses the device.
    Run(Common),
    /// Print the current certificate's device id, serial, expiry and time to renewal.
    Status {
        /// The agent's output directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_OUT)]
        out: PathBuf,
    },
}

const DEFAULT_OUT: &str = "/var/lib/portcullis-agent";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyModeArg {
    /// A non-exportable P-256 key in the TPM (attested with `tpm`).
    Tpm,
    /// DEVELOPMENT ONLY: a key file; nothing is attested, the CA must explicitly allow it.
    Software,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AkAlgArg {
    Ecc,
    Rsa,
}

#[derive(Debug, Args)]
pub struct Common {
    /// The CA's base URL (its ACME directory is URL/acme/directory), or the ACME directory URL.
    #[arg(long = "ca", value_name = "URL")]
    pub ca: String,
    /// This device's inventory id (the ACME permanent-identifier).
    #[arg(long, value_name = "ID")]
    pub device_id: String,
    /// tpm2-tss TCTI: device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321, tabrmd:, …
    /// [default: $TPM2TOOLS_TCTI, else device:/dev/tpmrm0]
    #[arg(long, value_name = "TCTI")]
    pub tcti: Option<String>,
    /// Where the chain (cert.pem), key reference (key.ref) and account are written.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// PEM file of the CA certificates to trust for the CA's TLS [default: system roots].
    #[arg(long, value_name = "PEM")]
    pub ca_roots: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = KeyModeArg::Tpm)]
    pub key_mode: KeyModeArg,
    /// Persistent handle of the device key.
    #[arg(long, value_name = "HANDLE", default_value = "0x81000101")]
    pub key_handle: String,
    /// Persistent handle of the attestation key.
    #[arg(long, value_name = "HANDLE", default_value = "0x81000102")]
    pub ak_handle: String,
    /// Attestation key algorithm (when the AK is created).
    #[arg(long, value_enum, default_value_t = AkAlgArg::Ecc)]
    pub ak_alg: AkAlgArg,
    /// PEM intermediates between the EK certificate and the TPM manufacturer root, sent in
    /// open enrollment.
    #[arg(long, value_name = "PEM")]
    pub ek_chain: Option<PathBuf>,
}

impl Common {
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let key_mode = match self.key_mode {
            KeyModeArg::Software => KeyMode::Software,
            KeyModeArg::Tpm => {
                // The same environment variable tpm2-tools reads, so both talk to one TPM.
                let tcti = self
                    .tcti
                    .clone()
                    .or_else(|| std::env::var("TPM2TOOLS_TCTI").ok())
                    .unwrap_or_else(|| "device:/dev/tpmrm0".into());
                let mut tpm = TpmKeyConfig::new(tcti);
                tpm.device_key_handle = self
                    .key_handle
                    .parse::<Persistent>()
                    .context("--key-handle")?;
                tpm.ak_handle = self
                    .ak_handle
                    .parse::<Persistent>()
                    .context("--ak-handle")?;
                tpm.ak_alg = match self.ak_alg {
                    AkAlgArg::Ecc => AkAlg::EccP256,
                    AkAlgArg::Rsa => AkAlg::Rsa2048,
                };
                KeyMode::Tpm(tpm)
            }
        };
        Ok(AgentConfig {
            ca_url: self.ca.clone(),
            device_id: self.device_id.clone(),
            out_dir: self.out.clone(),
            ca_roots: self.ca_roots.clone(),
            key_mode,
            ek_chain: self.ek_chain.clone(),
        })
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `portcullis agent …`.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    if let AgentCommand::Status { out } = &args.command {
        let config = AgentConfig {
            ca_url: String::new(),
            device_id: String::new(),
            out_dir: out.clone(),
            ca_roots: None,
            key_mode: KeyMode::Software,
            ek_chain: None,
        };
        let status = portcullis_agent::status(&config, std::time::SystemTime::now())?;
        println!("{status}");
        return Ok(if status.expired() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        match &args.command {
            AgentCommand::Enroll(c) => {
                let config = c.config()?;
                warn_software(&config);
                print_issued(portcullis_agent::enroll(&config).await)
            }
            AgentCommand::Renew(c) => {
                let config = c.config()?;
                warn_software(&config);
                print_issued(portcullis_agent::renew(&config).await)
            }
            AgentCommand::Run(c) => {
                let config = c.config()?;
                warn_software(&config);
                tokio::select! {
                    r = portcullis_agent::run(&config, &SystemClock) => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
                .map_err(anyhow::Error::from)
            }
            AgentCommand::Status { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => match e.downcast_ref::<AgentError>() {
            Some(refused @ AgentError::DeviceNotTrusted { .. }) => {
                eprintln!("error: {refused}");
                eprintln!("the CA does not trust this device (inventory); not retrying");
                Ok(ExitCode::from(EXIT_DEVICE_NOT_TRUSTED))
            }
            _ => Err(e),
        },
    }
}

fn warn_software(config: &AgentConfig) {
    if config.key_mode == KeyMode::Software {
        eprintln!(
            "WARNING: --key-mode software: the device key is a file, not hardware; for development only"
        );
    }
}

fn print_issued(r: portcullis_agent::Result<portcullis_agent::Issued>) -> anyhow::Result<()> {
    let issued = r?;
    println!("certificate: {}", issued.chain_path.display());
    println!("key:         {}", issued.key_reference);
    println!("serial:      {}", issued.cert.serial);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        agent: AgentCommand,
    }

    #[test]
    fn agent_cli_flags_map_to_the_config() {
        let cli = Cli::try_parse_from([
            "x",
            "enroll",
            "--ca",
            "https://ca.example:8443",
            "--device-id",
            "laptop-1",
            "--tcti",
            "swtpm:host=127.0.0.1,port=2321",
            "--out",
            "/tmp/agent",
            "--key-handle",
            "0x81000201",
        ])
        .unwrap();
        let AgentCommand::Enroll(c) = cli.agent else {
            panic!("enroll")
        };
        let config = c.config().unwrap();
        let KeyMode::Tpm(tpm) = &config.key_mode else {
            panic!("tpm mode by default")
        };
        assert_eq!(tpm.device_key_handle, Persistent(0x8100_0201));
        assert_eq!(tpm.tcti, "swtpm:host=127.0.0.1,port=2321");
        assert_eq!(
            config.directory_url(),
            "https://ca.example:8443/acme/directory"
        );
        let bad = Cli::try_parse_from([
            "x",
            "renew",
            "--ca",
            "https://c",
            "--device-id",
            "d",
            "--key-handle",
            "0x1",
        ])
        .unwrap();
        let AgentCommand::Renew(c) = bad.agent else {
            panic!("renew")
        };
        assert!(c.config().is_err());
        assert!(Cli::try_parse_from([
            "x",
            "enroll",
            "--ca",
            "u",
            "--device-id",
            "d",
            "--key-mode",
            "nope"
        ])
        .is_err());
    }
}
