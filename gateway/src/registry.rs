//! The live connection registry: device id → its open connections, each with a
//! `CancellationToken`. When the status snapshot changes, every connection of a device that is no
//! longer `active` (or unknown), or whose certificate serial is revoked, is cancelled; the
//! connection task drops its hyper connection (keep-alive and HTTP/2 alike) and WebSocket
//! tunnels, which hold a child token, end with it. A watch channel wakes the cutter, so the cut
//! follows a publish within milliseconds. A reload that changes the trust anchors re-verifies
//! every registered chain and cuts those that no longer verify (`Registry::cut_where`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use portcullis_policy::{DeviceStatus, StatusSnapshot, StatusStore};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

struct Entry {
    serial: Arc<str>,
    /// The chain the client presented, leaf first (re-verified when the trust anchors change).
    chain: Arc<[CertificateDer<'static>]>,
    fingerprint: Arc<str>,
    peer: IpAddr,
    token: CancellationToken,
}

#[derive(Default)]
pub(crate) struct Registry {
    devices: Mutex<HashMap<Arc<str>, HashMap<u64, Entry>>>,
    next_id: AtomicU64,
}

/// Keeps a connection registered; dropping it unregisters.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    device: Arc<str>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut devices = self
            .registry
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(conns) = devices.get_mut(&self.device) {
            conns.remove(&self.id);
            if conns.is_empty() {
                devices.remove(&self.device);
            }
        }
    }
}

/// One connection closed by a status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    pub device_id: Arc<str>,
    pub fingerprint: Arc<str>,
    pub peer: IpAddr,
    /// Reason code, as the policy would give it for a request.
    pub reason: &'static str,
}

/// Why a device's connection must not stay open under `snapshot`, if it must not.
pub(crate) fn untrusted_reason(
    snapshot: &StatusSnapshot,
    device_id: &str,
    serial: &str,
) -> Option<&'static str> {
    if snapshot.stale_since.is_some() {
        return Some("status_stale");
    }
    if snapshot.is_serial_revoked(serial) {
        return Some("certificate_revoked");
    }
    match snapshot.device(device_id).map(|r| r.status()) {
        None => Some("unknown_device"),
        Some(DeviceStatus::Active) => None,
        Some(DeviceStatus::Quarantined) => Some("device_quarantined"),
        Some(DeviceStatus::Retired) => Some("device_retired"),
    }
}

impl Registry {
    pub fn register(
        self: &Arc<Self>,
        device_id: &str,
        serial: &str,
        fingerprint: &str,
        peer: IpAddr,
        chain: Arc<[CertificateDer<'static>]>,
        token: CancellationToken,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let device: Arc<str> = Arc::from(device_id);
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        devices.entry(device.clone()).or_default().insert(
            id,
            Entry {
                serial: Arc::from(serial),
                chain,
                fingerprint: Arc::from(fingerprint),
                peer,
                token,
            },
        );
        Registration {
            registry: self.clone(),
            device,
            id,
        }
    }

    /// Cancels and forgets every connection `snapshot` no longer trusts.
    pub fn cut_untrusted(&self, snapshot: &StatusSnapshot) -> Vec<Cut> {
        self.cut_where(|device, serial, _| untrusted_reason(snapshot, device, serial))
    }

    /// Cancels and forgets every connection for which `reason(device id, serial, chain)`
    /// names a reason.
    pub fn cut_where(
        &self,
        mut reason: impl FnMut(&str, &str, &[CertificateDer<'static>]) -> Option<&'static str>,
    ) -> Vec<Cut> {
        let mut cuts = Vec::new();
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        devices.retain(|device, conns| {
            conns.retain(
                |_, entry| match reason(device, &entry.serial, &entry.chain) {
                    None => true,
                    Some(reason) => {
                        entry.token.cancel();
                        cuts.push(Cut {
                            device_id: device.clone(),
                            fingerprint: entry.fingerprint.clone(),
                            peer: entry.peer,
                            reason,
                        });
                        false
                    }
                },
            );
            !conns.is_empty()
        });
        cuts
    }

    /// Connections currently registered (all devices).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(HashMap::len)
            .sum()
    }
}

/// Runs until `shutdown`: on every new status generation, cuts what it no longer trusts and
/// reports each cut to `on_cut` (audit, metrics, log).
pub(crate) async fn watch_status(
    registry: Arc<Registry>,
    status: Arc<StatusStore>,
    shutdown: CancellationToken,
    mut on_cut: impl FnMut(&StatusSnapshot, &Cut) + Send,
) {
    let mut changes = status.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = status.current();
                for cut in registry.cut_untrusted(&snapshot) {
                    on_cut(&snapshot, &cut);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_policy::DeviceRecord;

    fn snapshot(devices: &[(&str, DeviceStatus)], revoked: &[&str]) -> StatusSnapshot {
        let mut snap = StatusSnapshot::from_records(
            devices.iter().map(|(id, status)| DeviceRecord {
                id: id.to_string(),
                status: *status,
                tags: Default::default(),
                owner: None,
                platform: None,
            }),
            revoked.iter().map(|s| s.to_string()),
        );
        snap.generation = 1;
        snap
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn no_chain() -> Arc<[CertificateDer<'static>]> {
        Arc::from(Vec::new())
    }

    #[test]
    fn cut_where_sees_each_chain() {
        let registry = Arc::new(Registry::default());
        let chain: Arc<[CertificateDer<'static>]> =
            Arc::from(vec![CertificateDer::from(vec![7u8])]);
        let keep = CancellationToken::new();
        let drop_me = CancellationToken::new();
        let _a = registry.register("a", "01", "fa", LOCAL, no_chain(), keep.clone());
        let _b = registry.register("b", "02", "fb", LOCAL, chain, drop_me.clone());
        let cuts = registry.cut_where(|_, _, chain| {
            (chain.first().map(|c| c.as_ref()) == Some(&[7u8][..])).then_some("untrusted_issuer")
        });
        assert_eq!(cuts.len(), 1);
        assert_eq!(&*cuts[0].device_id, "b");
        assert!(drop_me.is_cancelled() && !keep.is_cancelled());
    }

    #[test]
    fn cuts_quarantined_retired_unknown_and_revoked() {
        let registry = Arc::new(Registry::default());
        let tokens: Vec<CancellationToken> = (0..5).map(|_| CancellationToken::new()).collect();
        let _r = [
            registry.register("ok", "01", "f0", LOCAL, no_chain(), tokens[0].clone()),
            registry.register("q", "02", "f1", LOCAL, no_chain(), tokens[1].clone()),
            registry.register("r", "03", "f2", LOCAL, no_chain(), tokens[2].clone()),
            registry.register("ghost", "04", "f3", LOCAL, no_chain(), tokens[3].clone()),
            registry.register("ok", "05", "f4", LOCAL, no_chain(), tokens[4].clone()),
        ];
        let snap = snapshot(
            &[
                ("ok", DeviceStatus::Active),
                ("q", DeviceStatus::Quarantined),
                ("r", DeviceStatus::Retired),
            ],
            &["05"],
        );
        let mut cuts = registry.cut_untrusted(&snap);
        cuts.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        let reasons: Vec<(&str, &str)> = cuts.iter().map(|c| (&*c.device_id, c.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                ("q", "device_quarantined"),
                ("r", "device_retired"),
                ("ghost", "unknown_device"),
                ("ok", "certificate_revoked"),
            ]
        );
        assert!(!tokens[0].is_cancelled());
        assert!(tokens[1..].iter().all(CancellationToken::is_cancelled));
        assert_eq!(registry.len(), 1);
        // A second pass over the same snapshot cuts nothing more.
        assert!(registry.cut_untrusted(&snap).is_empty());
    }

    #[test]
    fn dropping_a_registration_unregisters() {
        let registry = Arc::new(Registry::default());
        let a = registry.register("d", "01", "f", LOCAL, no_chain(), CancellationToken::new());
        let b = registry.register("d", "02", "f", LOCAL, no_chain(), CancellationToken::new());
        assert_eq!(registry.len(), 2);
        drop(a);
        assert_eq!(registry.len(), 1);
        drop(b);
        assert_eq!(registry.len(), 0);
    }

    #[tokio::test]
    async fn a_publish_cuts_within_a_second() {
        let registry = Arc::new(Registry::default());
        let store = Arc::new(StatusStore::new(snapshot(
            &[("d", DeviceStatus::Active)],
            &[],
        )));
        let token = CancellationToken::new();
        let _reg = registry.register("d", "01", "f", LOCAL, no_chain(), token.clone());
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(watch_status(
            registry.clone(),
            store.clone(),
            shutdown.clone(),
            move |_, cut| {
                let _ = tx.send(cut.reason);
            },
        ));
        // A publish that changes nothing for this device cuts nothing.
        store.publish(snapshot(&[("d", DeviceStatus::Active)], &[]));
        tokio::task::yield_now().await;
        assert!(!token.is_cancelled());
        let started = std::time::Instant::now();
        store.publish(snapshot(&[("d", DeviceStatus::Quarantined)], &[]));
        tokio::time::timeout(std::time::Duration::from_secs(1), token.cancelled())
            .await
            .expect("cut within one second");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(rx.recv().await, Some("device_quarantined"));
        shutdown.cancel();
        let _ = watcher.await;
    }
}
