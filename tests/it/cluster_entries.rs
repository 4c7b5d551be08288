//! Cluster mode with bad or stale entries in the shared buckets: a bucket made by
//! hand with an age limit the hosts cannot use is refused at start; a record made
//! invalid in the records bucket (by hand, or by a host's bug) is named in every
//! host's `/healthz`, each host keeps serving its last good copy, and the record is
//! repaired by a later good write or by the next change made through the API; the
//! instance's fields changed under a lease by someone else are not adopted by the
//! host running it, nor a lease rewritten under its name; a host restarted after a
//! crash gives up the leases its last run left and starts afresh what should run.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cluster::{Nats, host, id_of, listed, until_env, until_health};
use crate::support::{Server, WAIT};

/// The records bucket of the cluster at `nats`.
async fn records_bucket(nats: &Nats) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    js.get_key_value("tether-records").await.expect("records")
}

/// Record `id` as the bucket has it now, once it parses and `pred` holds for it.
async fn until_bucket(
    records: &async_nats::jetstream::kv::Store,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let entry = records.get(id).await.expect("reading the record");
        let record: Option<Value> = entry.and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(record) = record.filter(|r| pred(r)) {
            return record;
        }
        assert!(Instant::now() < deadline, "the bucket's {id}: never {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Patches `id`'s config on `server`, expecting it taken.
async fn patch_config(server: &Server, id: &str, config: Value) {
    let path = format!("/api/v1/environments/{id}");
    let (status, body) = server
        .call("PATCH", &path, Some(json!({ "config": config })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The generation of the runtime token `server`'s `handoff` environment `name` was
/// last started with.
fn generation(server: &Server, name: &str) -> u64 {
    let (_, token) = server.handoff_runtime(name);
    let generation = token.split_once('.').map(|(g, _)| g.parse().ok());
    generation.flatten().expect("a runtime token")
}

/// Regression: a value under a record's key that is not a valid record (written by
/// hand, or by a bug on another host) was ignored by every host, but the next change
/// of that environment found the bucket at a revision it could not merge with and was
/// tried again every second for good, `/healthz` blaming NATS; a restarted host did the
/// same with its own copy. Now the bad value is named in `/healthz` (its key and why,
/// never its content), every host keeps its last good copy, other records are
/// untouched, and the next change made through the API is written over it, as is a
/// later good value written by hand taken.
#[tokio::test]
async fn a_record_made_invalid_in_the_bucket_is_named_kept_and_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let b = host(dir.path(), &nats, "b", "");
    let mut ids = Vec::new();
    for name in ["spoilt", "other"] {
        let body = json!({"name": name, "provider": "handoff", "config": {"v": 1}});
        let (status, env) = a.call("POST", "/api/v1/environments", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        listed(&b, name).await;
        ids.push(id_of(&env));
    }
    let (spoilt, other) = (ids[0].clone(), ids[1].clone());
    let records = records_bucket(&nats).await;
    let good = until_bucket(&records, &spoilt, "written", |_| true).await;

    // Not a record: `config` must be an object. Its text must not be shown.
    let bad =
        json!({"id": spoilt, "name": "spoilt", "provider": "handoff", "config": "s3cret-text"});
    records
        .put(&spoilt, bad.to_string().into())
        .await
        .expect("spoiling it");
    for server in [&a, &b] {
        let health = until_health(server, &["tether-records", &spoilt, "invalid"]).await;
        assert!(!health.to_string().contains("s3cret"), "{health}");
        // The last good copy is served.
        let env = until_env(server, &spoilt, "kept", |e| e["config"]["v"] == 1).await;
        assert_eq!(env["name"], "spoilt", "{env}");
    }
    for server in [&a, &b] {
        assert!(!server.log().contains("s3cret"), "{}", server.log());
    }
    // Another record is changed as ever.
    patch_config(&b, &other, json!({"v": 2})).await;
    until_env(&a, &other, "patched on b", |e| e["config"]["v"] == 2).await;

    // A change through the API is written over the bad value.
    patch_config(&b, &spoilt, json!({"v": 3})).await;
    let repaired = until_bucket(&records, &spoilt, "repaired", |r| r["config"]["v"] == 3).await;
    assert_eq!(repaired["name"], "spoilt", "{repaired}");
    until_env(&a, &spoilt, "patched on b", |e| e["config"]["v"] == 3).await;
    for server in [&a, &b] {
        until_health(server, &[]).await;
    }

    // Spoilt again, and a host restarted meanwhile: it keeps its own copy, does not
    // try to write it over the bad value, and names it.
    records
        .put(&spoilt, bad.to_string().into())
        .await
        .expect("spoiling it again");
    until_health(&a, &["tether-records", &spoilt, "invalid"]).await;
    let b_dir = b.data_dir.clone();
    b.stop();
    let b = host(dir.path(), &nats, "b", "");
    until_health(&b, &["tether-records", &spoilt, "invalid"]).await;
    until_env(&b, &spoilt, "kept", |e| e["config"]["v"] == 3).await;
    assert_eq!(b.data_dir, b_dir);
    // Two retries' worth: nothing was tried.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!b.log().contains("writing a record failed"), "{}", b.log());
    // A good value written by hand is taken by every host.
    let mut fixed = good.clone();
    fixed["config"] = json!({"v": 4});
    records
        .put(&spoilt, fixed.to_string().into())
        .await
        .expect("repairing it by hand");
    for server in [&a, &b] {
        until_env(server, &spoilt, "repaired by hand", |e| {
            e["config"]["v"] == 4
        })
        .await;
        until_health(server, &[]).await;
    }
    a.stop();
    b.stop();
}

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

/// Regression: the host running an environment took changes of the instance's fields
/// (`resourceId`, `runtimeGeneration`, `runtimeTokenSha256`, …) that someone else wrote
/// to the records bucket (by hand, or a host's bug) as its own: the instance kept
/// running while its runtime was told apart by a token hash it never minted, so a
/// runtime with a token of the writer's making was let in. Only the host holding the
/// lease writes those fields; one changed under it now makes it take the lease for
/// contested: it lets no runtime in, stops the instance, says why, and the
/// environment is started afresh, with a new token.
#[tokio::test]
async fn instance_fields_changed_in_the_bucket_under_a_lease_are_not_adopted() {
    use sha2::Digest;

    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "[cluster]\nlease_ttl_secs = 3\n");
    let (id, url, _) = a.handoff_env("held").await;
    assert_eq!(generation(&a, "held"), 1);
    let records = records_bucket(&nats).await;
    let mut forged = until_bucket(&records, &id, "running", |r| {
        r["runtimeGeneration"] == 1 && r["runtimeTokenSha256"].is_string()
    })
    .await;
    let token = "7.forged";
    forged["runtimeGeneration"] = json!(7);
    forged["runtimeTokenSha256"] = json!(hex::encode(sha2::Sha256::digest(token)));
    forged["resourceId"] = json!("elsewhere");
    records
        .put(&id, forged.to_string().into())
        .await
        .expect("writing under a's lease");
    until_env(&a, &id, "taken in", |e| e["resourceId"] == "elsewhere").await;
    // The writer's runtime is not let in.
    let connected = crate::support::Ws::connect(&url, Some(token)).await;
    assert!(connected.is_err(), "a runtime of a forged token was let in");
    crate::cluster::until_log(&a, &id, "taking its lease for contested").await;
    // The environment is started afresh, with a token of a's making.
    let deadline = Instant::now() + WAIT;
    while generation(&a, "held") != 8 {
        assert!(
            Instant::now() < deadline,
            "never started again; log:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_env(&a, &id, "running again", |e| {
        e["status"] == "running" && e["host"] == "a"
    })
    .await;
    a.stop();
}

/// A host restarted with its `--host-id` after a crash finds a lease naming itself,
/// from before: it must not take the environment for running (nothing runs it), but
/// start it afresh through the lease's epoch, with a new runtime token.
#[tokio::test]
async fn a_host_restarted_after_a_crash_starts_afresh_what_its_stale_lease_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let (id, _, _) = a.handoff_env("again").await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let leases = js.get_key_value("tether-leases").await.expect("leases");
    let before = leases.entry(&id).await.expect("entry").expect("a lease");
    a.kill();
    let a = host(dir.path(), &nats, "a", "");
    // The lease from before (10 s) is still there when it comes back.
    let entry = leases.entry(&id).await.expect("entry").expect("a lease");
    assert!(entry.revision >= before.revision);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, env) = a
            .call("GET", &format!("/api/v1/environments/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{env}");
        if env["status"] == "running" {
            // Shown running: then it runs here, started afresh.
            assert_eq!(generation(&a, "again"), 2, "{env}; log:\n{}", a.log());
            break;
        }
        assert!(Instant::now() < deadline, "{env}; log:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = crate::cluster::until_host(&a, "a", "running it", |h| {
        h["environments"]
            .as_array()
            .is_some_and(|e| e.contains(&json!(id)))
    })
    .await;
    assert_eq!(view["load"], 1, "{view}");
    a.stop();
}

/// A host restarted after a crash finds a lease naming itself for an environment
/// that is no longer to run (stopped on another host meanwhile): nothing runs it,
/// so no host may show it running there, nor hold back a start elsewhere, for the
/// rest of the old lease.
#[tokio::test]
async fn a_stale_lease_naming_a_restarted_host_is_not_shown_as_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    // A lease outlives the test's waits: only its being given up ends it.
    let config = "[cluster]\nlease_ttl_secs = 120\n";
    let a = host(dir.path(), &nats, "a", config);
    let b = host(dir.path(), &nats, "b", config);
    let (id, _, _) = a.handoff_env("halted").await;
    until_env(&b, &id, "running on a", |e| e["host"] == "a").await;
    a.kill();
    let (status, body) = b
        .call("POST", &format!("/api/v1/environments/{id}/stop"), None)
        .await;
    assert!(status.is_success(), "{body}");
    let a = host(dir.path(), &nats, "a", config);
    for server in [&a, &b] {
        until_env(server, &id, "shown stopped", |e| {
            e["desiredState"] == "stopped" && e["status"] != "running" && e["host"].is_null()
        })
        .await;
    }
    // And it starts where it is asked to.
    let (status, body) = b
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert!(status.is_success(), "{body}");
    until_env(&b, &id, "running on b", |e| {
        e["status"] == "running" && e["host"] == "b"
    })
    .await;
    a.stop();
    b.stop();
}

/// Regression: a lease rewritten in the bucket under its holder's name and epoch
/// but with another URL (by hand, or a host's bug) was kept by the holder as its own
/// renewal whose answer was lost; meanwhile every other host showed, and with
/// `relay = "direct"` bridged apps with their tokens to, that URL. Only the holder
/// writes its lease, always with its own URL: another one there is now taken for
/// lost (stopped here, said why), and the environment started afresh.
#[tokio::test]
async fn a_lease_rewritten_under_its_holders_name_is_taken_for_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "[cluster]\nlease_ttl_secs = 3\n");
    let (id, _, _) = a.handoff_env("rewritten").await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let leases = js.get_key_value("tether-leases").await.expect("leases");
    let entry = leases.entry(&id).await.expect("entry").expect("a lease");
    let mut lease: Value = serde_json::from_slice(&entry.value).expect("a lease");
    lease["url"] = json!("http://192.0.2.1:2719");
    leases
        .update(&id, lease.to_string().into(), entry.revision)
        .await
        .expect("rewriting it");
    let deadline = Instant::now() + WAIT;
    while generation(&a, "rewritten") < 2 {
        assert!(
            Instant::now() < deadline,
            "never started again; log:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::cluster::until_log(&a, &id, "rewritten under this host's name").await;
    until_env(&a, &id, "running again", |e| {
        e["status"] == "running" && e["host"] == "a"
    })
    .await;
    let now = leases.entry(&id).await.expect("entry").expect("a lease");
    let now: Value = serde_json::from_slice(&now.value).expect("a lease");
    assert_ne!(now["url"], "http://192.0.2.1:2719", "{now}");
    a.stop();
}

/// Rewrites environment `id`'s lease in the bucket to name host `holder` at `url`.
async fn rewrite_lease(nats: &Nats, id: &str, holder: &str, url: &str) {
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let leases = js.get_key_value("tether-leases").await.expect("leases");
    let entry = leases.entry(id).await.expect("entry").expect("a lease");
    let mut lease: Value = serde_json::from_slice(&entry.value).expect("a lease");
    lease["host"] = json!(holder);
    lease["url"] = json!(url);
    leases
        .update(id, lease.to_string().into(), entry.revision)
        .await
        .expect("rewriting the lease");
}

/// Writes an entry for host `id` reached at `url` into the hosts bucket.
async fn put_host(nats: &Nats, id: &str, url: &str) {
    let hosts = crate::cluster::hosts_bucket(nats).await;
    let seen = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a time");
    let entry = json!({"id": id, "publicUrl": url, "load": 0, "seenAt": seen});
    hosts
        .put(id, entry.to_string().into())
        .await
        .expect("writing a host's entry");
}

/// Removes host `id`'s entry from the hosts bucket.
async fn hosts_bucket_delete(nats: &Nats, id: &str) {
    let hosts = crate::cluster::hosts_bucket(nats).await;
    hosts.delete(id).await.expect("removing a host's entry");
}

/// The status and body an app's upgrade to environment `id` on `server` is refused with.
async fn app_refused(server: &Server, id: &str) -> (StatusCode, String) {
    app_refused_with(server, id, &[]).await
}

/// [`app_refused`], the upgrade carrying `headers` too.
async fn app_refused_with(
    server: &Server,
    id: &str,
    headers: &[(&'static str, &str)],
) -> (StatusCode, String) {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let mut request = server
        .ws_url(&format!("/ws/app/{id}"))
        .into_client_request()
        .expect("request");
    let bearer = format!("Bearer {}", crate::support::TOKEN);
    (request.headers_mut()).insert("authorization", bearer.parse().expect("header"));
    for (name, value) in headers {
        (request.headers_mut()).insert(*name, value.parse().expect("header"));
    }
    // Bridged to a listener that never answers, the upgrade would wait for ever.
    let answer = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await;
    match answer.expect("an answer: the app was bridged to where nothing answers") {
        Err(Error::Http(answer)) => {
            let body = answer.body().as_deref().unwrap_or_default();
            (answer.status(), String::from_utf8_lossy(body).into_owned())
        }
        Ok(_) => panic!("the app was bridged"),
        Err(e) => panic!("the upgrade failed: {e}"),
    }
}

/// Regression: with `relay = "direct"` a host bridged an app, its token in the
/// upgrade, to whatever URL the running host's lease gave, and anyone who can write
/// the leases bucket writes that. The URL is now dialled only when it is the one
/// its host publishes in the hosts bucket: otherwise the app is answered 502
/// `host_unreachable` and `/healthz` names the environment and why.
#[tokio::test]
async fn a_direct_bridge_dials_only_the_url_the_running_host_publishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let ttl = "[cluster]\nlease_ttl_secs = 60\n";
    let a = host(dir.path(), &nats, "a", ttl);
    let c = host(
        dir.path(),
        &nats,
        "c",
        &format!("{ttl}relay = \"direct\"\n"),
    );
    let (id, _, _) = a.handoff_env("misdirected").await;
    until_env(&c, &id, "running on a", |e| e["host"] == "a").await;

    // A listener standing in at the false URL: it must never be dialled.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("trap");
    trap.set_nonblocking(true).expect("nonblocking");
    let false_url = format!("http://{}", trap.local_addr().expect("addr"));

    // A host whose entry publishes another URL than the one its lease gives.
    put_host(&nats, "ghost", "http://127.0.0.1:9").await;
    rewrite_lease(&nats, &id, "ghost", &false_url).await;
    until_env(&c, &id, "on ghost", |e| e["host"] == "ghost").await;
    let (status, body) = app_refused(&c, &id).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("host_unreachable"), "{body}");
    assert!(body.contains("publishes http://127.0.0.1:9"), "{body}");
    until_health(&c, &[&id, "not bridged", "publishes"]).await;

    // A host with no entry at all.
    rewrite_lease(&nats, &id, "phantom", &false_url).await;
    until_env(&c, &id, "on phantom", |e| e["host"] == "phantom").await;
    let (status, body) = app_refused(&c, &id).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("no valid entry"), "{body}");
    until_health(&c, &[&id, "not bridged", "no valid entry"]).await;
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the false URL was dialled"
    );

    // A host that publishes its URL, takes the connection and never answers: the
    // app is answered in bounded time, not held for good.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("mute");
    let mute_url = format!("http://{}", mute.local_addr().expect("addr"));
    put_host(&nats, "mute", &mute_url).await;
    rewrite_lease(&nats, &id, "mute", &mute_url).await;
    until_env(&c, &id, "on mute", |e| e["host"] == "mute").await;
    let (status, body) = app_refused(&c, &id).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("did not answer the upgrade within"), "{body}");
    hosts_bucket_delete(&nats, "mute").await;
    drop(mute);

    // Its host's lease back (as its own next claim writes it): `/healthz` clears.
    let hosts = crate::cluster::hosts_bucket(&nats).await;
    hosts.delete("ghost").await.expect("removing ghost");
    rewrite_lease(&nats, &id, "a", &a.base).await;
    until_health(&c, &[]).await;
    a.stop();
    c.stop();
}

/// Regression: a `409` telling a client which host runs its environment gave the
/// URL in that environment's lease as where to connect, unchecked, and anyone who
/// can write the leases bucket writes that. The URL is now given only when the
/// host publishes it as its own; otherwise the host is named alone.
#[tokio::test]
async fn a_conflict_names_a_lease_url_only_when_its_host_publishes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let ttl = "[cluster]\nlease_ttl_secs = 60\n";
    let a = host(dir.path(), &nats, "a", ttl);
    let b = host(dir.path(), &nats, "b", ttl);
    let (id, _, _) = a.handoff_env("pointed").await;
    until_env(&b, &id, "running on a", |e| e["host"] == "a").await;
    // An app that came through a bridge is not bridged on: it is told where to go.
    let bridged = [("tether-bridged", "1")];
    let (status, body) = app_refused_with(&b, &id, &bridged).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let genuine = format!("runs on host a at {}: connect there", a.base);
    assert!(body.contains(&genuine), "{body}");
    // The runtime route takes no API token: a wrong runtime token hears neither where
    // the environment runs nor that it exists, as at an id that is no environment's.
    let forged = format!("1.{}", "0".repeat(64));
    for at in [id.as_str(), "6f1c7a2e-0000-4000-8000-00000000dead"] {
        let runtime = b.ws_url(&format!("/ws/runtime/{at}"));
        let refused = crate::support::Ws::connect(&runtime, Some(&forged)).await;
        assert_eq!(refused.err(), Some(StatusCode::UNAUTHORIZED), "{at}");
    }

    // A lease rewritten to give a URL its host does not publish.
    let false_url = "http://127.0.0.1:7";
    put_host(&nats, "ghost", "http://127.0.0.1:9").await;
    rewrite_lease(&nats, &id, "ghost", false_url).await;
    until_env(&b, &id, "on ghost", |e| e["host"] == "ghost").await;
    let (status, body) = app_refused_with(&b, &id, &bridged).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("runs on host ghost: connect there"), "{body}");
    assert!(!body.contains(false_url), "{body}");

    // The same URL once that host publishes it: given.
    put_host(&nats, "ghost", false_url).await;
    let (status, body) = app_refused_with(&b, &id, &bridged).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains(&format!("runs on host ghost at {false_url}")),
        "{body}"
    );
    hosts_bucket_delete(&nats, "ghost").await;
    a.stop();
    b.stop();
}

/// Regression: any value under a host's key in the hosts bucket counted as that
/// host being alive, so a delete left the resource's removal to the host that ran
/// the environment last while anyone had written junk under its key, and nobody
/// removed it. Only a host's valid entry counts now; otherwise the deleting host
/// removes the resource itself.
#[tokio::test]
async fn a_host_entry_that_is_not_a_hosts_does_not_hold_a_removal() {
    use crate::cluster::logged;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let body = json!({"name": "left-to-ghost", "provider": "handoff"});
    let (status, env) = a.call("POST", "/api/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = id_of(&env);
    // The record as a host called `ghost` that ran it last would have left it.
    let records = records_bucket(&nats).await;
    let mut record = until_bucket(&records, &id, "written", |_| true).await;
    record["lastHost"] = json!("ghost");
    record["resourceId"] = json!("left-by-ghost");
    record["config"]["ranOn"] = json!("ghost");
    records
        .put(&id, record.to_string().into())
        .await
        .expect("writing");
    until_env(&a, &id, "ran on ghost", |e| e["config"]["ranOn"] == "ghost").await;
    let hosts = crate::cluster::hosts_bucket(&nats).await;
    let junk = json!({"id": "ghost", "note": "not a host's entry"});
    hosts
        .put("ghost", junk.to_string().into())
        .await
        .expect("junk");

    let (status, _) = a
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    crate::cluster::until_log(&a, &id, "the provider removes the resource").await;
    assert!(
        !logged(&a, &id, "the host that ran it last removes its resource"),
        "{}",
        a.log()
    );
    a.stop();
}

/// Regression: an entry of the tokens bucket that was not a valid token (garbled,
/// or forged) was ignored, and every host kept its last copy of that token in
/// force. It now fails closed: the token is refused on every host, `/healthz` names
/// its key (never the value), and a valid entry written there again restores it.
#[tokio::test]
async fn an_invalid_token_in_the_bucket_is_refused_on_every_host_until_repaired() {
    use crate::cluster::until_status;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let b = host(dir.path(), &nats, "b", "");
    let (secret, id) = a.user_token("alice").await;
    let path = "/api/v1/environments";
    until_status(&b, path, &secret, StatusCode::OK).await;
    let client = async_nats::connect(nats.url()).await.expect("nats client");
    let js = async_nats::jetstream::new(client);
    let tokens = js.get_key_value("tether-tokens").await.expect("tokens");
    let good = tokens.get(&id).await.expect("read").expect("the token");

    // Garbled: refused on both hosts, named by key in both `/healthz`.
    let garbled = "{\"not\": \"a token SECRET-LOOKING-TEXT\"";
    tokens.put(&id, garbled.into()).await.expect("garbling");
    for server in [&a, &b] {
        until_status(server, path, &secret, StatusCode::UNAUTHORIZED).await;
        let health = until_health(server, &[&id, "invalid", "refused on every host"]).await;
        assert!(!health.to_string().contains("SECRET-LOOKING"), "{health}");
    }
    // Parsed, but failing the checks: still refused.
    let mut forged: Value = serde_json::from_slice(&good).expect("json");
    forged["sha256"] = json!("not hex");
    tokens
        .put(&id, forged.to_string().into())
        .await
        .expect("forging");
    until_health(&a, &[&id, "invalid", "sha256"]).await;
    until_status(&a, path, &secret, StatusCode::UNAUTHORIZED).await;

    // The valid entry again: in force on both hosts, `/healthz` clear.
    tokens.put(&id, good).await.expect("repairing");
    for server in [&a, &b] {
        until_status(server, path, &secret, StatusCode::OK).await;
        until_health(server, &[]).await;
    }
    a.stop();
    b.stop();
}

/// Regression: a valid record written to the records bucket with a name another
/// record has was only logged, each host silently not applying it. `/healthz` now
/// names its key, the name and the record that holds it while so; neither record is
/// lost or overwritten, here or in the bucket.
#[tokio::test]
async fn a_record_whose_name_another_has_is_named_in_healthz_and_neither_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = Nats::start(dir.path(), 0, true) else {
        return;
    };
    let a = host(dir.path(), &nats, "a", "");
    let body = json!({"name": "twin", "provider": "handoff"});
    let (status, env) = a.call("POST", "/api/v1/environments", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = id_of(&env);
    let records = records_bucket(&nats).await;
    let mut twin = until_bucket(&records, &id, "written", |_| true).await;
    let other = "env-twin-by-hand";
    twin["id"] = json!(other);
    let put = twin.to_string();
    records
        .put(other, put.clone().into())
        .await
        .expect("writing");

    until_health(&a, &[other, "twin", &id, "not applied"]).await;
    let (status, _) = a
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "the holder is kept");
    let both = until_bucket(&records, other, "kept", |_| true).await;
    assert_eq!(both.to_string(), put, "the other is not overwritten");
    until_bucket(&records, &id, "kept", |r| r["name"] == "twin").await;

    // Gone from the bucket: `/healthz` clears.
    records.delete(other).await.expect("deleting");
    until_health(&a, &[]).await;

    // Written again, then the record here that has the name is deleted: the one held
    // back is stored once its name is free, without another change to its entry.
    records.put(other, put.into()).await.expect("writing again");
    until_health(&a, &[other, "twin", &id, "not applied"]).await;
    let (status, _) = a
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let held = until_env(&a, other, "stored once its name is free", |_| true).await;
    assert_eq!(held["name"], "twin", "{held}");
    until_health(&a, &[]).await;
    a.stop();
}
