//! Issue 10, item 5: guests that spin cannot stall the host. Guests run on an executor
//! of their own and yield at every epoch tick, so while three environments spin in
//! `on-provider-start` and another spins in each
//! `check-health`, the API and the relay keep answering and the good environment keeps
//! its echoes. The bounds are generous (a second); the latencies themselves are in the
//! `spin` benchmark.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::rig::Rig;

/// Longest any request may take while guests spin (the issue saw 65 s).
const BOUND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn hostile_spinning_guests_do_not_stall_the_api_or_the_relay() {
    let mut rig = Rig::start(|data| {
        // Health rounds often, so the spinning check-health runs (and traps) many times.
        let toml = data.join("tether.toml");
        let mut text = std::fs::read_to_string(&toml).expect("tether.toml");
        text.push_str(
            "\n[health]\ninterval_ms = 200\ntimeout_ms = 500\nfailure_threshold = 1\n\n\
             [restart]\ninitial_backoff_ms = 100\nmax_backoff_ms = 200\n",
        );
        std::fs::write(&toml, text).expect("tether.toml");
    })
    .await;
    let mut spinners = Vec::new();
    for (name, attack) in [
        ("spin-a", "spin"),
        ("spin-b", "spin"),
        ("spin-c", "spin"),
        ("spin-health", "spin-health"),
    ] {
        let (status, env) = rig
            .server
            .call(
                "POST",
                "/api/v1/environments",
                Some(json!({
                    "name": name, "provider": "hostile", "config": {"attack": attack},
                    "start": true, "restartPolicy": "always",
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        spinners.push(env["id"].as_str().expect("id").to_owned());
    }
    // Long enough for every spinner to burn its 3 s start deadline, and for many
    // spinning health checks (each one traps and the environment is restarted).
    let until = Instant::now() + Duration::from_secs(8);
    let (mut requests, mut slowest) = (0u32, Duration::ZERO);
    while Instant::now() < until {
        let started = Instant::now();
        let (status, _) = rig.server.call("GET", "/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
        rig.echo().await;
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < BOUND,
            "/healthz and an echo took {took:?} while guests spin\n{}",
            rig.server.log()
        );
        requests += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{requests} rounds of /healthz + echo while 4 guests spin; slowest {slowest:?}");
    // The spinners were stopped by their deadlines, not left running: the start
    // spinners failed their start, the health spinner was restarted after its checks
    // timed out.
    for (n, id) in spinners.iter().enumerate() {
        let (_, env) = rig
            .server
            .call("GET", &format!("/api/v1/environments/{id}"), None)
            .await;
        if env["name"] == "spin-health" {
            // Each restart clears `lastError`; the count shows the checks trapped.
            assert!(env["restarts"].as_u64().unwrap_or(0) >= 2, "{env}");
        } else {
            assert_eq!(env["status"], "error", "spinner {n}: {env}");
            let error = env["lastError"].as_str().unwrap_or_default();
            assert!(error.contains("timed out"), "{env}");
        }
    }
    for id in &spinners {
        rig.delete(id).await;
    }
    rig.finish().await;
}
