//! The TPM 2.0 layer: everything the agent asks of the device's TPM, through tpm2-tss's
//! ESAPI (`tss-esapi`), over any TCTI (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`,
//! `mssim:…`, `tabrmd:…`).
//!
//! - [`ek`]: the endorsement key and its certificate (TCG EK Credential Profile).
//! - [`ak`]: the attestation key, a restricted signing key under the EK.
//! - [`device_key`]: the device's non-exportable P-256 signing key, persisted at a handle.
//! - [`certify`]: TPM2_Certify of the device key by the AK (the `tpm` attestation statement).
//! - [`activate`]: TPM2_ActivateCredential for the open enrollment.
//! - [`sign`]: TPM2_Sign with the device key (the CSR signature).
//! - [`public`]: TPMT_PUBLIC → Name and SubjectPublicKeyInfo.
//!
//! Every operation opens its own ESAPI context ([`Tpm::open`]) and flushes every transient
//! object and session it created, on success and on error: without a resource manager
//! (swtpm, or `/dev/tpm0`) a leaked transient object would fill the TPM's few object slots
//! (TPM 2.0 Part 1 §14.4) for every later caller.

pub mod activate;
pub mod ak;
pub mod certify;
pub mod device_key;
pub mod ek;
pub mod public;
pub mod sign;

use std::str::FromStr;

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::CapabilityData;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

/// What failed in the TPM layer.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("TCTI {tcti:?} is not a valid TCTI configuration (device:PATH, swtpm:host=H,port=P, mssim:…, tabrmd:…): {source}")]
    TctiConfig {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("cannot open the TPM through TCTI {tcti:?}: {source}")]
    Open {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("TPM command failed: {what}: {source}")]
    Command {
        what: String,
        source: tss_esapi::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, TpmError>;

/// Maps a tss-esapi error to [`TpmError::Command`] naming the step.
pub(crate) fn cmd(what: impl Into<String>) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    let what = what.into();
    move |source| TpmError::Command { what, source }
}

/// A persistent handle in the owner range 0x81000000–0x817FFFFF (TPM 2.0 Part 2 §7.5; TCG
/// "Registry of reserved TPM 2.0 handles": 0x81000000–0x8100FFFF owner, 0x81010000–0x8101FFFF
/// endorsement keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Persistent(pub u32);

impl Persistent {
    pub fn new(handle: u32) -> Result<Self> {
        if (0x8100_0000..=0x817f_ffff).contains(&handle) {
            Ok(Self(handle))
        } else {
            Err(TpmError::Invalid(format!(
                "{handle:#010x} is not a persistent object handle (0x81000000-0x817FFFFF, TPM 2.0 Part 2 §7.5)"
            )))
        }
    }

    /// `0x81000101`.
    pub fn hex(self) -> String {
        format!("{:#010x}", self.0)
    }

    fn tpm_handle(self) -> Result<PersistentTpmHandle> {
        PersistentTpmHandle::new(self.0).map_err(cmd(format!("persistent handle {}", self.hex())))
    }
}

impl FromStr for Persistent {
    type Err = TpmError;
    fn from_str(s: &str) -> Result<Self> {
        let digits = s.trim().trim_start_matches("0x").trim_start_matches("0X");
        let v = u32::from_str_radix(digits, 16)
            .map_err(|e| TpmError::Invalid(format!("persistent handle {s:?} is not hex: {e}")))?;
        Self::new(v)
    }
}

impl std::fmt::Display for Persistent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// An open ESAPI context on one TCTI.
pub struct Tpm {
    pub(crate) ctx: Context,
    tcti: String,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("tcti", &self.tcti).finish()
    }
}

impl Tpm {
    /// Opens the TPM behind `tcti` (tpm2-tss TCTI configuration syntax).
    pub fn open(tcti: &str) -> Result<Self> {
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::TctiConfig {
            tcti: tcti.into(),
            source,
        })?;
        let ctx = Context::new(conf).map_err(|source| TpmError::Open {
            tcti: tcti.into(),
            source,
        })?;
        Ok(Self {
            ctx,
            tcti: tcti.to_owned(),
        })
    }

    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Handles of one range by TPM2_GetCapability(TPM_CAP_HANDLES) (TPM 2.0 Part 3 §30.2).
    fn handles(&mut self, first: u32) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut next = first;
        loop {
            let (data, more) = self
                .ctx
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::Handles, next, 64)
                })
                .map_err(cmd("TPM2_GetCapability(handles)"))?;
            let CapabilityData::Handles(list) = data else {
                return Err(TpmError::Invalid(
                    "TPM2_GetCapability(handles) returned another capability".into(),
                ));
            };
            let handles: Vec<u32> = list.into_inner().into_iter().map(u32::from).collect();
            let Some(&last) = handles.last() else { break };
            // Only the requested range (the upper byte is the handle type, Part 2 §7.2).
            out.extend(handles.iter().copied().filter(|h| h >> 24 == first >> 24));
            if !more || last >> 24 != first >> 24 {
                break;
            }
            next = last + 1;
        }
        Ok(out)
    }

    /// Whether a persistent object exists at `handle`.
    pub fn persistent_exists(&mut self, handle: Persistent) -> Result<bool> {
        Ok(self.handles(0x8100_0000)?.contains(&handle.0))
    }

    /// Transient objects currently loaded (handles 0x80xxxxxx). Diagnostics: after any
    /// operation of this module it is back to what it was before (nothing leaks).
    pub fn transient_objects(&mut self) -> Result<Vec<u32>> {
        self.handles(0x8000_0000)
    }

    /// Whether an NV index is defined at `index`.
    pub fn nv_defined(&mut self, index: u32) -> Result<bool> {
        Ok(self.handles(0x0100_0000)?.contains(&index))
    }

    /// An ESYS_TR for a persistent object (Esys_TR_FromTPMPublic reads its public area).
    pub(crate) fn persistent_object(&mut self, handle: Persistent) -> Result<ObjectHandle> {
        let tpm_handle = TpmHandle::Persistent(handle.tpm_handle()?);
        self.ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
            .map_err(cmd(format!("no object at persistent handle {handle}")))
    }

    /// Makes the transient `object` persistent at `handle` with TPM2_EvictControl
    /// (TPM 2.0 Part 3 §28.5; owner authorization, empty by default).
    pub(crate) fn persist(&mut self, object: ObjectHandle, handle: Persistent) -> Result<()> {
        let target = tss_esapi::interface_types::dynamic_handles::Persistent::Persistent(
            handle.tpm_handle()?,
        );
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, object, target)
            })
            .map_err(cmd(format!("TPM2_EvictControl to {handle}")))?;
        Ok(())
    }

    /// Removes the persistent object at `handle` (TPM2_EvictControl on a persistent object,
    /// Part 3 §28.5). Nothing to do when the handle is empty.
    pub fn evict(&mut self, handle: Persistent) -> Result<()> {
        if !self.persistent_exists(handle)? {
            return Ok(());
        }
        let object = self.persistent_object(handle)?;
        let target = tss_esapi::interface_types::dynamic_handles::Persistent::Persistent(
            handle.tpm_handle()?,
        );
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, object, target)
            })
            .map_err(cmd(format!("TPM2_EvictControl removing {handle}")))?;
        Ok(())
    }

    /// Flushes a transient object or session; errors are logged, not returned, because this
    /// runs on cleanup paths where the first error is the one to report.
    pub(crate) fn flush(&mut self, handle: ObjectHandle) {
        if let Err(e) = self.ctx.flush_context(handle) {
            tracing::warn!(error = %e, "TPM2_FlushContext failed");
        }
    }
}
