//! One certificate end to end with the instant-acme client: new order → http-01 (answered by
//! a [`Responder`]) → finalize (fresh P-256 key and CSR) → download. Polling is at a fixed
//! interval, never longer, so that two servers are timed by their work and not by the
//! `Retry-After` each chooses to send.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus,
};

use super::responder::Responder;

/// How long an order may stay pending or processing before the flow gives up: a guard against
/// hanging forever, not a performance expectation.
pub const POLL_LIMIT: Duration = Duration::from_secs(120);

/// An account at `directory`, whose TLS certificate must chain to the first certificate of
/// `root_pem`.
pub async fn new_account(
    directory: &str,
    root_pem: &Path,
) -> anyhow::Result<(Account, AccountCredentials)> {
    install_crypto_provider();
    Account::builder_with_root(root_pem)
        .map_err(|e| anyhow!("client trusting {}: {e}", root_pem.display()))?
        .create(
            &NewAccount {
                contact: &["mailto:ops@example.com"],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await
        .map_err(|e| anyhow!("newAccount at {directory}: {e}"))
}

/// The same account again (after a restart of the server, say).
pub async fn load_account(
    root_pem: &Path,
    credentials: &AccountCredentials,
) -> anyhow::Result<Account> {
    install_crypto_provider();
    let json = serde_json::to_string(credentials)?;
    Account::builder_with_root(root_pem)
        .map_err(|e| anyhow!("client trusting {}: {e}", root_pem.display()))?
        .from_credentials(serde_json::from_str(&json)?)
        .await
        .map_err(|e| anyhow!("account from credentials: {e}"))
}

pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug)]
pub struct Issued {
    pub order_url: String,
    /// Leaf first, then the intermediate.
    pub chain_pem: String,
    pub key_pem: String,
    /// Order refreshes while waiting for `ready`, then for `valid`.
    pub polls: u32,
}

/// Creates an order for `names` and answers its http-01 challenges; returns when the order is
/// `ready` (an `invalid` order is an error carrying the server's problem).
pub async fn order_ready(
    account: &Account,
    responder: &Responder,
    names: &[String],
    poll: Duration,
) -> anyhow::Result<(Order, u32)> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| anyhow!("newOrder {names:?}: {e}"))?;
    let mut tokens = Vec::new();
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(|e| anyhow!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("authorization is {other:?}"),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .context("the server offers no http-01 challenge")?;
            responder.insert(&challenge.token, challenge.key_authorization().as_str());
            tokens.push(challenge.token.clone());
            challenge
                .set_ready()
                .await
                .map_err(|e| anyhow!("challenge: {e}"))?;
        }
    }
    let mut polls = 0;
    let deadline = std::time::Instant::now() + POLL_LIMIT;
    let outcome = loop {
        let state = order
            .refresh()
            .await
            .map_err(|e| anyhow!("order refresh: {e}"))?;
        match state.status {
            OrderStatus::Ready => break Ok(()),
            OrderStatus::Pending => {}
            other => {
                break Err(anyhow!(
                    "order is {other:?} instead of ready: {:?}",
                    state.error
                ))
            }
        }
        if std::time::Instant::now() > deadline {
            break Err(anyhow!("order still pending after {POLL_LIMIT:?}"));
        }
        polls += 1;
        tokio::time::sleep(poll).await;
    };
    for t in &tokens {
        responder.remove(t);
    }
    outcome.map(|()| (order, polls))
}

/// Waits while the order is `processing`, then downloads the chain.
pub async fn download(order: &mut Order, poll: Duration) -> anyhow::Result<(String, u32)> {
    let mut polls = 0;
    let deadline = std::time::Instant::now() + POLL_LIMIT;
    while order.state().status == OrderStatus::Processing {
        if std::time::Instant::now() > deadline {
            bail!("order still processing after {POLL_LIMIT:?}");
        }
        polls += 1;
        tokio::time::sleep(poll).await;
        order
            .refresh()
            .await
            .map_err(|e| anyhow!("order refresh: {e}"))?;
    }
    let chain = order
        .certificate()
        .await
        .map_err(|e| anyhow!("certificate download: {e}"))?
        .context("no certificate")?;
    Ok((chain, polls))
}

/// The whole flow for one certificate.
pub async fn issue(
    account: &Account,
    responder: &Responder,
    names: &[String],
    poll: Duration,
) -> anyhow::Result<Issued> {
    let (mut order, polls_ready) = order_ready(account, responder, names, poll).await?;
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| anyhow!("finalize: {e}"))?;
    let (chain_pem, polls_valid) = download(&mut order, poll).await?;
    Ok(Issued {
        order_url: order.url().to_owned(),
        chain_pem,
        key_pem,
        polls: polls_ready + polls_valid,
    })
}

/// The PEM blocks of `pem`, each re-encoded on its own (leaf first).
pub fn split_pem(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}
