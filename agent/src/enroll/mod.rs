//! Open TPM enrollment, device side: obtain an AK certificate from the CA by proving, with
//! TPM2 credential activation (TPM 2.0 Part 1 §24), that the AK lives in the TPM whose EK the
//! CA trusts (by the manufacturer's EK certificate, or an EK the inventory pins).
//!
//! 1. `start`: send the device id, the EK certificate (NV 0x01C00002) or EK public area, and
//!    the AK public area; the CA answers with a credential made for the AK's Name and
//!    encrypted to the EK (TPM2_MakeCredential).
//! 2. TPM2_ActivateCredential recovers it ([`crate::tpm::activate`]).
//! 3. `finish`: return it; the CA answers with the AK certificate.
//!
//! The agent then checks the AK certificate is for its AK before keeping it.

pub mod wire;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{AgentError, Result};
use crate::http::{post_json, HttpClient};
use crate::keys::TpmKeyConfig;
use crate::tpm::Tpm;
use wire::{FinishRequest, FinishResponse, StartRequest, StartResponse};

/// What enrollment yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkCertificate {
    /// DER.
    pub cert: Vec<u8>,
    /// The AK CA certificate, when the CA sent it (DER).
    pub ca_cert: Option<Vec<u8>>,
}

/// What the agent sends in `start`, read from the TPM (creating the AK if needed).
pub fn start_request(
    tpm: &mut Tpm,
    cfg: &TpmKeyConfig,
    device_id: &str,
    ek_chain: &[Vec<u8>],
) -> Result<StartRequest> {
    let ak = tpm.ensure_ak(cfg.ek_alg, cfg.ak_alg, cfg.ak_handle)?;
    let ek_cert = tpm.ek_certificate(cfg.ek_alg)?;
    // Without a certificate the EK public area is all the CA can pin; with one, the CA
    // recreates the EK public area from the default template.
    let ek_pub = match ek_cert {
        Some(_) => None,
        None => Some(B64.encode(tpm.ek_public(cfg.ek_alg)?.bytes)),
    };
    Ok(StartRequest {
        device_id: device_id.to_owned(),
        ek_cert: ek_cert.map(|c| B64.encode(c)),
        ek_chain: ek_chain.iter().map(|c| B64.encode(c)).collect(),
        ek_pub,
        ak_pub: B64.encode(&ak.bytes),
    })
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>> {
    B64.decode(value.trim_end_matches('='))
        .map_err(|e| AgentError::Invalid(format!("enrollment: {field} is not base64url: {e}")))
}

/// The contents of a TPM2B sent with its size (see [`wire::TPM2B_WITH_SIZE`]).
pub fn tpm2b_contents(field: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if !wire::TPM2B_WITH_SIZE {
        return Ok(bytes);
    }
    match bytes.as_slice() {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
            Ok(rest.to_vec())
        }
        _ => Err(AgentError::Invalid(format!(
            "enrollment: {field} is not a TPM2B whose size prefix matches its length (TPM 2.0 Part 2 §10.4)"
        ))),
    }
}

/// Recovers the credential of a `start` answer with the TPM.
pub fn activate(tpm: &mut Tpm, cfg: &TpmKeyConfig, start: &StartResponse) -> Result<FinishRequest> {
    let blob = tpm2b_contents(
        "credential_blob",
        b64("credential_blob", &start.credential_blob)?,
    )?;
    let secret = tpm2b_contents("secret", b64("secret", &start.secret)?)?;
    let credential = tpm.activate_credential(cfg.ak_handle, cfg.ek_alg, &blob, &secret)?;
    Ok(FinishRequest {
        session_id: start.session_id.clone(),
        credential: B64.encode(credential),
    })
}

/// Checks the `finish` answer: a certificate for our AK.
pub fn accept(finish: &FinishResponse, ak_spki: &[u8]) -> Result<AkCertificate> {
    let cert = b64("ak_cert", &finish.ak_cert)?;
    let (_, parsed) = X509Certificate::from_der(&cert).map_err(|e| {
        AgentError::Invalid(format!("enrollment: ak_cert is not a certificate: {e}"))
    })?;
    if parsed.public_key().raw != ak_spki {
        return Err(AgentError::Invalid(
            "enrollment: the AK certificate the CA returned is not for this TPM's AK".into(),
        ));
    }
    let ca_cert = finish
        .ak_ca_cert
        .as_deref()
        .map(|c| b64("ak_ca_cert", c))
        .transpose()?;
    Ok(AkCertificate { cert, ca_cert })
}

/// The whole exchange against the CA at `base_url`. TPM work runs on the blocking pool.
pub async fn enroll_ak(
    http: &HttpClient,
    base_url: &str,
    cfg: &TpmKeyConfig,
    device_id: &str,
    ek_chain: Vec<Vec<u8>>,
) -> Result<AkCertificate> {
    let base = base_url.trim_end_matches('/');
    let (request, ak_spki) = {
        let cfg = cfg.clone();
        let device_id = device_id.to_owned();
        blocking(move || {
            let mut tpm = Tpm::open(&cfg.tcti)?;
            let request = start_request(&mut tpm, &cfg, &device_id, &ek_chain)?;
            let spki = tpm.ak_public(cfg.ak_handle)?.spki()?;
            Ok((request, spki))
        })
        .await?
    };
    let start: StartResponse = post_json(
        http,
        "enrollment start",
        &format!("{base}{}", wire::START_PATH),
        &request,
    )
    .await?;
    tracing::info!(session = %start.session_id, "enrollment started; activating the credential");
    let finish_request = {
        let cfg = cfg.clone();
        blocking(move || {
            let mut tpm = Tpm::open(&cfg.tcti)?;
            activate(&mut tpm, &cfg, &start)
        })
        .await?
    };
    let finish: FinishResponse = post_json(
        http,
        "enrollment finish",
        &format!("{base}{}", wire::FINISH_PATH),
        &finish_request,
    )
    .await?;
    accept(&finish, &ak_spki)
}

/// Runs TPM work (blocking I/O to the TPM, a `!Send` ESAPI context) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Invalid(format!("TPM worker failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_tpm2b_size_prefix_is_checked() {
        assert_eq!(tpm2b_contents("x", vec![0, 2, 7, 8]).unwrap(), vec![7, 8]);
        assert!(tpm2b_contents("x", vec![0, 3, 7, 8]).is_err());
        assert!(tpm2b_contents("x", vec![0]).is_err());
        assert_eq!(tpm2b_contents("x", vec![0, 0]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn enroll_wire_matches_the_cas_field_names() {
        let req = StartRequest {
            device_id: "d".into(),
            ek_cert: Some("AA".into()),
            ek_chain: vec![],
            ek_pub: None,
            ak_pub: "BB".into(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"device_id":"d","ek_cert":"AA","ak_pub":"BB"}"#
        );
        let start: StartResponse = serde_json::from_str(
            r#"{"session_id":"s","credential_blob":"AA","secret":"BB","expires":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(start.session_id, "s");
        let fin: FinishResponse = serde_json::from_str(
            r#"{"ak_cert":"AA","ak_ca_cert":"BB","serial":"01","not_after":"x"}"#,
        )
        .unwrap();
        assert_eq!(fin.ak_ca_cert.as_deref(), Some("BB"));
        assert!(b64("f", "!!")
            .unwrap_err()
            .to_string()
            .contains("f is not base64url"));
    }
}
