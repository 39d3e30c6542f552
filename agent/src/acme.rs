//! The ACME side (RFC 8555 with draft-ietf-acme-device-attest), through instant-acme:
//! account, order for `permanent-identifier` = device id, `device-attest-01` answered with the
//! key's attestation, finalize with a CSR the device key signs, download the chain.

use std::borrow::Cow;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    DeviceAttestation, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use crate::error::{acme, problem, AgentError, Result};
use crate::http::HttpClient;
use crate::keys::DeviceKey;
use crate::output::{OutDir, ACCOUNT_FILE};

/// The saved account if it belongs to `directory`, else a new one (saved 0600).
pub async fn account(http: &HttpClient, directory: &str, out: &OutDir) -> Result<Account> {
    if let Some(json) = out.read(ACCOUNT_FILE)? {
        let creds: AccountCredentials = serde_json::from_str(&json).map_err(|e| {
            AgentError::Config(format!(
                "{}: not ACME account credentials: {e}",
                out.path(ACCOUNT_FILE).display()
            ))
        })?;
        // The credentials name their directory; another CA means another account.
        let same = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v["directory"].as_str().map(|d| d == directory))
            .unwrap_or(false);
        if same {
            return Account::builder_with_http(Box::new(http.clone()))
                .from_credentials(creds)
                .await
                .map_err(acme("loading the ACME account"));
        }
        tracing::info!("the saved ACME account is for another CA; creating a new one");
    }
    let (account, creds) = Account::builder_with_http(Box::new(http.clone()))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await
        .map_err(|e| match acme("newAccount")(e) {
            AgentError::Acme { during, detail } => AgentError::Acme {
                during,
                detail: format!("{detail} (directory {directory})"),
            },
            other => other,
        })?;
    let json = serde_json::to_vec(&creds)
        .map_err(|e| AgentError::Invalid(format!("serialising the account: {e}")))?;
    out.write(ACCOUNT_FILE, &json, 0o600)?;
    Ok(account)
}

/// `base64url(AKI) "." base64url(serial)` (RFC 9773 §4.1) as instant-acme's type.
fn cert_identifier(id: &str) -> Option<CertificateIdentifier<'static>> {
    let (aki, serial) = id.split_once('.')?;
    Some(CertificateIdentifier {
        authority_key_identifier: Cow::Owned(aki.to_owned()),
        serial: Cow::Owned(serial.to_owned()),
    })
}

fn retry() -> RetryPolicy {
    RetryPolicy::default()
        .initial_delay(Duration::from_millis(250))
        .backoff(2.0)
        .timeout(Duration::from_secs(60))
}

/// One order for `device_id`: returns the PEM chain the CA issued for `key`.
/// `replaces`: the ARI id of the certificate this one renews (RFC 9773 §5).
pub async fn order_certificate(
    account: &Account,
    key: &DeviceKey,
    device_id: &str,
    ak_chain: &[Vec<u8>],
    replaces: Option<&str>,
) -> Result<String> {
    let ids = [Identifier::PermanentIdentifier(device_id.to_owned())];
    let mut new_order = NewOrder::new(&ids);
    if let Some(id) = replaces.and_then(cert_identifier) {
        new_order = new_order.replaces(id);
    }
    let mut order = account
        .new_order(&new_order)
        .await
        .map_err(acme("newOrder"))?;
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(acme("fetching the authorization"))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AgentError::Acme {
                        during: "authorization",
                        detail: format!("the authorization is {other:?}"),
                    })
                }
            }
            let Some(mut challenge) = authz.challenge(ChallengeType::DeviceAttest01) else {
                return Err(AgentError::Acme {
                    during: "authorization",
                    detail: "the CA offers no device-attest-01 challenge".into(),
                });
            };
            let key_authorization = challenge.key_authorization().as_str().to_owned();
            let att_obj = key.attest(&key_authorization, ak_chain).await?;
            // draft-ietf-acme-device-attest §5: POST {"attObj": base64url(CBOR)}.
            match challenge
                .send_device_attestation(&DeviceAttestation {
                    att_obj: Cow::Owned(att_obj),
                })
                .await
            {
                Ok(_) => {}
                // Validation may fail synchronously; the order carries the problem too.
                Err(instant_acme::Error::Api(p)) => {
                    return Err(problem("device-attest-01", p));
                }
                Err(e) => return Err(acme("device-attest-01")(e)),
            }
        }
    }
    let status = match order.poll_ready(&retry()).await {
        Ok(s) => s,
        Err(instant_acme::Error::Api(p)) => return Err(problem("device-attest-01", p)),
        Err(e) => return Err(acme("waiting for the order")(e)),
    };
    if status != OrderStatus::Ready {
        return Err(match order.state().error.clone() {
            Some(p) => problem("device-attest-01", p),
            None => AgentError::Acme {
                during: "waiting for the order",
                detail: format!("the order is {status:?}"),
            },
        });
    }
    let csr = key.csr(device_id).await?;
    order.finalize_csr(&csr).await.map_err(acme("finalize"))?;
    order
        .poll_certificate(&retry())
        .await
        .map_err(acme("downloading the certificate"))
}

/// The CA's suggested renewal window for the certificate with ARI id `id` (RFC 9773 §4.2),
/// `None` when the CA does not offer ARI or the query fails (the caller falls back to two
/// thirds of the lifetime).
pub async fn ari_window(
    account: &Account,
    id: &str,
) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let cert_id = cert_identifier(id)?;
    match account.renewal_info(&cert_id).await {
        Ok((info, _retry_after)) => Some((
            info.suggested_window.start.into(),
            info.suggested_window.end.into(),
        )),
        Err(e) => {
            tracing::debug!(error = %e, "no ACME renewal information");
            None
        }
    }
}
