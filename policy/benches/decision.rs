//! Per-request costs of the policy hot path. `cargo bench -p portcullis-policy --bench decision`
//! Plain `Instant` loops; numbers are ns per operation on this machine, for orders of magnitude.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Instant, UNIX_EPOCH};

use portcullis_policy::decision::decide;
use portcullis_policy::{
    Criterion, DecisionCache, DeviceIdentity, DeviceRecord, DeviceStatus, IdSource, RequestFacts,
    RoutePolicy, StatusSnapshot,
};

fn bench(name: &str, iters: u32, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f(); // warm-up
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    println!("{name:<40} {ns:>8.1} ns/op");
}

fn main() {
    let identity = DeviceIdentity {
        device_id: Some("dev-500".into()),
        id_source: Some(IdSource::PermanentIdentifier),
        serial: "5f3a9c0e1b2d4f6a8c0e1b2d4f6a8c0e1b2d4f6a".into(),
        fingerprint: [0x42; 32],
        spki_sha256: [0; 32],
        not_before: UNIX_EPOCH,
        not_after: UNIX_EPOCH,
        issuer: "CN=root".into(),
        subject: "CN=device".into(),
        dns_sans: vec![],
        uri_sans: vec!["spiffe://corp.example/device/dev-500".into()],
        attestation: Some("tpm".into()),
        platform: None,
    };
    // An inventory of 10 000 devices and 1 000 revoked serials.
    let devices: HashMap<String, DeviceRecord> = (0..10_000)
        .map(|i| {
            let id = format!("dev-{i}");
            let record = DeviceRecord {
                id: id.clone(),
                status: DeviceStatus::Active,
                tags: BTreeSet::from(["eng".to_owned(), "laptop".to_owned()]),
                owner: None,
                platform: Some("macos".into()),
            };
            (id, record)
        })
        .collect();
    let revoked_serials: HashSet<String> = (0..1_000).map(|i| format!("{i:040x}")).collect();
    let mut snapshot = StatusSnapshot::from_records(devices.into_values(), revoked_serials);
    snapshot.generation = 7;
    let policy = RoutePolicy::compile(
        &[Criterion::And(vec![
            Criterion::Tag("eng".into()),
            Criterion::Platform("MacOS".into()),
        ])],
        &[],
    )
    .expect("compiles");
    let facts = RequestFacts {
        source_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        method: "GET",
        path: "/api/items",
    };
    assert!(decide(&policy, &snapshot, Some(&identity), &facts).allow);

    const N: u32 = 2_000_000;
    let cache = DecisionCache::new(10_000);
    cache.decide(0, &policy, &snapshot, Some(&identity), &facts);
    bench("decide, cached hit", N, || {
        black_box(cache.decide(0, &policy, &snapshot, Some(black_box(&identity)), &facts));
    });
    bench("decide, direct (2 criteria)", N, || {
        black_box(decide(
            &policy,
            &snapshot,
            Some(black_box(&identity)),
            &facts,
        ));
    });
    bench("status lookup (revoked + record)", N, || {
        let id = black_box(&identity);
        black_box(snapshot.is_revoked(id));
        black_box(snapshot.status_of(id));
    });
}
