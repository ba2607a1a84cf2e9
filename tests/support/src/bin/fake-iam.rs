//! The fake IAM/STS as a server, for `scripts/bench`: `fake-iam N LATENCY_MS`
//! creates users fleet0..fleetN-1 with one key each and a `rotator` that manages
//! them, prints one JSON line (url, rotator key, users' key ids), then serves
//! until killed. Every answer is delayed by LATENCY_MS, as real IAM's would be.

use std::time::Duration;

use test_support::fake_iam::FakeIam;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: fake-iam USERS LATENCY_MS";
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let latency: u64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let iam = FakeIam::start();
    let names: Vec<String> = (0..n).map(|i| format!("fleet{i}")).collect();
    iam.add_user(
        "rotator",
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let rotator = iam.add_key("rotator", "2024-01-01T00:00:00Z");
    let keys: Vec<String> = names
        .iter()
        .map(|name| {
            iam.add_user(name, &[]);
            iam.add_key(name, "2024-01-01T00:00:00Z").id
        })
        .collect();
    iam.latency(Duration::from_millis(latency));
    println!(
        "{}",
        serde_json::json!({
            "url": iam.url, "rotator_id": rotator.id, "rotator_secret": rotator.secret, "keys": keys
        })
    );
    loop {
        std::thread::park();
    }
}
