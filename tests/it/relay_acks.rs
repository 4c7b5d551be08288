//! Acknowledgements against the operator's window: a peer must acknowledge at least
//! every half window, and the host's greeting says how large the window is.

use serde_json::json;

use crate::support::{Server, TOKEN, Ws, write_config};

/// The reference runtime keeps up with a host whose `[relay] window_messages` is
/// smaller than its default acknowledgement step: with a window of 16 every request an
/// app sends one at a time is answered, none refused `not_delivered` (the runtime
/// used to acknowledge only every 32 messages, and dropped even those, leaving it to
/// its 10 s ping, so the 17th request of a burst was refused).
#[tokio::test]
async fn the_reference_runtime_acknowledges_within_a_small_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[relay]\nwindow_messages = 16\n");
    let server = Server::start(dir.path());
    let env = server.running_env("acks", "local-process", json!({})).await;
    let id = env["id"].as_str().expect("id");
    let mut app = server.app(id, "t").await;
    for n in 0..48 {
        let reply = app
            .request(json!({"type": "echo", "requestId": n, "payload": n}))
            .await;
        assert_eq!(reply["type"], "echoResponse", "request {n}: {reply}");
    }

    // The greeting names the window, so any peer can acknowledge in time.
    let url = server.ws_url(&format!("/ws/app/{id}?thread=t&session=s&resume=0"));
    let mut resumable = Ws::connect(&url, Some(TOKEN)).await.expect("app");
    let greeting = resumable.next_any().await;
    assert_eq!(greeting["type"], "relayResumed", "{greeting}");
    assert_eq!(greeting["windowMessages"], 16, "{greeting}");
    assert_eq!(greeting["windowBytes"], 8 << 20, "{greeting}");
    server.stop();
}
