//! Cluster mode with bad or stale entries in the shared buckets: a bucket made by
//! hand with an age limit the hosts cannot use is refused at start.

use std::time::Duration;

use reqwest::StatusCode;

use crate::cluster::{Nats, host, until_health};

/// Regression: of the buckets made by hand before the hosts made them, only those
/// whose keys must lapse were checked, and only for having an age limit at all. A
/// records (names, tokens, removals) bucket made with one would drop what it holds
/// that long after it was written (every host then deletes the environment); an
/// admissions bucket made with a day's would hold back a user's counted changes
/// for a day after its host died, and a leases bucket's age is the lease in force,
/// outside `lease_ttl_secs`'s bounds. Each is now refused at start, naming it.
#[tokio::test]
async fn a_bucket_made_by_hand_with_an_age_limit_the_hosts_cannot_use_is_refused_at_start() {
    use async_nats::jetstream::kv;

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let refused = [
        ("tether-records", 3600, "it has an age limit (3600 s"),
        ("tether-names", 3600, "it has an age limit (3600 s"),
        ("tether-tokens", 3600, "it has an age limit (3600 s"),
        ("tether-removals", 3600, "it has an age limit (3600 s"),
        ("tether-admissions", 86_400, "is not between 10 and 60 s"),
        ("tether-leases", 86_400, "is not between 2 and 3600 s"),
    ];
    for (bucket, secs, said) in refused {
        js.create_key_value(kv::Config {
            bucket: bucket.into(),
            history: 1,
            max_age: Duration::from_secs(secs),
            ..Default::default()
        })
        .await
        .expect("making the bucket by hand");
        let err = crate::cluster::refused_start(dir.path(), &nats);
        assert!(err.contains(&format!("bucket {bucket}: ")), "{err}");
        assert!(err.contains(said), "{err}");
        // It, and those the refused host made before it, are made anew next time.
        for made in refused.map(|(bucket, ..)| bucket) {
            let _ = js.delete_key_value(made).await;
        }
    }
    // Made by the hosts, they are as they must be: a host starts.
    let a = host(dir.path(), &nats, "a", "");
    assert_eq!(a.call("GET", "/healthz", None).await.0, StatusCode::OK);
    until_health(&a, &[]).await;
    a.stop();
}
