//! [`Client::follow`] against a canned SSE server on loopback that drops its connections: the
//! follower reconnects, resumes with `Last-Event-ID` (or from a console's tail), skips what it
//! passed on already, reports gaps, and gives up on a refusal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// Serves one canned answer per connection (an SSE body, then the connection closes; a body
/// starting with a status line is sent as it is); the request heads seen.
async fn serve(answers: Vec<&'static str>) -> (String, Arc<Mutex<Vec<String>>>) {
    let respond = |body: &str, _: &str| {
        if body.starts_with("HTTP/") {
            body.to_owned()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
            )
        }
    };
    crate::tests::serve_with(answers, respond, str::to_ascii_lowercase).await
}

async fn event(follower: &mut Follower) -> Event {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), follower.next())
            .await
            .expect("in time")
            .expect("no refusal")
        {
            Followed::Event(event) => return event,
            Followed::Dropped { .. } | Followed::Resumed { .. } => {}
        }
    }
}

fn ev(id: &str, kind: &str) -> Event {
    Event {
        id: id.into(),
        event: kind.into(),
        data: "{}".into(),
    }
}

#[tokio::test]
async fn events_resume_after_the_last_id_without_duplicates() {
    let (base, seen) = serve(vec![
        "id: 1-0\nevent: A\ndata: {}\n\nid: 2-0\nevent: B\ndata: {}\n\n",
        // The replay repeats 2-0 (already passed on), then the gap note, then 3-0.
        "event: gap\ndata: {}\n\nid: 2-0\nevent: B\ndata: {}\n\nid: 3-0\nevent: C\ndata: {}\n\n",
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    ])
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::builder(&base).build().expect("client");
    let mut follower = client
        .follow("/events", Resume::LastEventId, None)
        .await
        .expect("open");
    assert_eq!(event(&mut follower).await, ev("1-0", "A"));
    assert_eq!(event(&mut follower).await, ev("2-0", "B"));
    match follower.next().await.expect("dropped") {
        Followed::Dropped { retry_in, .. } => assert_eq!(retry_in, Duration::from_millis(250)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        follower.next().await.expect("resumed"),
        Followed::Resumed {
            after: Some("2-0".into())
        }
    );
    assert_eq!(event(&mut follower).await.event, "gap");
    assert_eq!(event(&mut follower).await, ev("3-0", "C"));
    assert_eq!(follower.last_event_id(), Some("3-0"));
    // The third connection refuses: no endless retrying of a 401.
    let refused = loop {
        match follower.next().await {
            Ok(Followed::Event(e)) => panic!("{e:?}"),
            Ok(_) => {}
            Err(err) => break err,
        }
    };
    assert_eq!(refused.status_code(), Some(401));
    let seen = seen.lock().expect("seen").clone();
    assert!(!seen[0].contains("last-event-id"), "{}", seen[0]);
    assert!(seen[1].contains("last-event-id: 2-0"), "{}", seen[1]);
    assert!(seen[2].contains("last-event-id: 3-0"), "{}", seen[2]);
}

#[tokio::test]
async fn consoles_resume_from_their_tail_and_report_lost_lines() {
    let (base, seen) = serve(vec![
        "id: 5-0\ndata: five\n\nid: 6-0\ndata: six\n\n",
        // Still kept: 5 and 6 are skipped.
        "id: 4-0\ndata: four\n\nid: 5-0\ndata: five\n\nid: 6-0\ndata: six\n\nid: 7-0\ndata: seven\n\n",
        // 8 is no longer kept: a gap, then 9.
        "id: 9-0\ndata: nine\n\n",
    ])
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::builder(&base).build().expect("client");
    let mut follower = client
        .follow(
            &console_path("lobby-1", 10),
            console_resume("lobby-1"),
            None,
        )
        .await
        .expect("open");
    let mut lines = Vec::new();
    for _ in 0..5 {
        let e = event(&mut follower).await;
        lines.push(if e.event == "gap" {
            "gap".into()
        } else {
            e.data
        });
    }
    assert_eq!(lines, ["five", "six", "seven", "gap", "nine"]);
    let seen = seen.lock().expect("seen").clone();
    assert!(seen[0].starts_with("get /api/v1/instances/lobby-1/console?lines=10 "));
    assert!(seen[1].starts_with("get /api/v1/instances/lobby-1/console?lines=2000 "));
}

#[test]
fn event_ids_are_ordered() {
    assert!(id_key("1700000000000-2") > id_key("1700000000000-1"));
    assert!(id_key("1700000000001-0") > id_key("1700000000000-9"));
    assert_eq!(id_key("x"), None);
}
