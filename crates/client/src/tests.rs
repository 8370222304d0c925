//! The client against a canned HTTP server on loopback: one answer per connection, the requests
//! it saw recorded.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use serde_json::{Value, json};

use super::*;

/// Serves one answer per connection, in order: `respond` makes the response from the answer and
/// the request head; `record` what is kept of each head. The base URL and the heads kept.
pub(crate) async fn serve_with<T: Send + 'static>(
    answers: Vec<T>,
    respond: impl Fn(T, &str) -> String + Send + 'static,
    record: fn(&str) -> String,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        for answer in answers {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let head = String::from_utf8_lossy(&request).into_owned();
            recorded.lock().expect("seen lock").push(record(&head));
            let _ = socket.write_all(respond(answer, &head).as_bytes()).await;
        }
    });
    (base, seen)
}

/// Serves `answers` (status, JSON body) in order, one per connection; returns the base URL and
/// the request lines seen.
async fn serve(answers: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let respond = |(status, body): (u16, &str), head: &str| {
        let authorized = head
            .to_ascii_lowercase()
            .contains("authorization: bearer secret");
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-authorized: {authorized}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    serve_with(answers, respond, |head| {
        head.lines().next().unwrap_or_default().to_owned()
    })
    .await
}

#[test]
fn controller_urls_are_checked() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert!(matches!(
        Client::builder("api-1:8080").build(),
        Err(Error::BadUrl { .. })
    ));
    let client = Client::builder("http://api-1:8080/")
        .build()
        .expect("client");
    assert_eq!(client.base(), "http://api-1:8080");
    assert!(matches!(
        Client::builder("https://api-1:8080").build(),
        Err(Error::NoTrustedCa { .. })
    ));
    assert!(Client::probe("https://api-1:8080").is_ok());
    let insecure = Trust {
        ca_pem: None,
        insecure: true,
    };
    assert!(Client::new("https://api-1:8080", None, &insecure).is_ok());
    let garbage = Trust {
        ca_pem: Some("not a certificate".into()),
        insecure: false,
    };
    assert!(Client::new("https://api-1:8080", None, &garbage).is_err());
}

#[test]
fn segments_are_escaped() {
    assert_eq!(segment("lobby-1_a.b~"), "lobby-1_a.b~");
    assert_eq!(segment("a b/c"), "a%20b%2Fc");
    assert_eq!(segment("ü"), "%C3%BC");
}

#[tokio::test]
async fn errors_carry_the_api_error_body() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (base, _) = serve(vec![
        (404, r#"{"code":"NOT_FOUND","message":"no group \"x\""}"#),
        (502, "bad gateway"),
        (200, "{not json"),
    ])
    .await;
    let client = Client::builder(&base).build().expect("client");
    let err = client.group("x").await.expect_err("404");
    assert_eq!(err.status_code(), Some(404));
    assert_eq!(
        err.api_error().and_then(|e| e.code.as_deref()),
        Some("NOT_FOUND")
    );
    let shown = err.to_string();
    assert!(
        shown.contains("/api/v1/groups/x answered 404") && shown.contains("NOT_FOUND: no group"),
        "{shown}"
    );
    let err = client.get::<Value>("/system/info").await.expect_err("502");
    assert!(err.api_error().is_none() && err.to_string().ends_with(": bad gateway"));
    let err = client.get::<Value>("/system/info").await.expect_err("JSON");
    assert!(matches!(err, Error::Decode { .. }), "{err}");
}

#[tokio::test]
async fn raw_calls_answer_whatever_the_status() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (base, seen) = serve(vec![(403, r#"{"code":"FORBIDDEN"}"#), (204, "")]).await;
    let client = Client::builder(&base)
        .token("secret")
        .build()
        .expect("client");
    let answer = client
        .call(Method::PATCH, "/users/ann", json!({ "disabled": true }))
        .await
        .expect("answer");
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["code"], "FORBIDDEN");
    let answer = client
        .call(Method::DELETE, "/users/ann", Body::Empty)
        .await
        .expect("answer");
    assert_eq!((answer.status, answer.json()), (204, Value::Null));
    assert_eq!(
        *seen.lock().expect("seen lock"),
        [
            "PATCH /api/v1/users/ann HTTP/1.1",
            "DELETE /api/v1/users/ann HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn lists_are_followed_across_pages() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let user = |name: &str| {
        format!(
            r#"{{"username":"{name}","roles":[],"disabled":false,"createdAtMs":1,"lastLoginAtMs":null}}"#
        )
    };
    let first: &'static str = format!(
        r#"{{"items":[{},{}],"nextCursor":"bob"}}"#,
        user("ann"),
        user("bob")
    )
    .leak();
    let last: &'static str = format!(r#"{{"items":[{}],"nextCursor":null}}"#, user("cy")).leak();
    let (base, seen) = serve(vec![(200, first), (200, last)]).await;
    let client = Client::builder(&base).build().expect("client");
    let users = client.users().await.expect("users");
    assert_eq!(
        users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["ann", "bob", "cy"]
    );
    assert_eq!(
        *seen.lock().expect("seen lock"),
        [
            "GET /api/v1/users?limit=1000 HTTP/1.1",
            "GET /api/v1/users?limit=1000&after=bob HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn the_audit_log_is_followed_across_pages() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (base, seen) = serve(vec![
        (
            200,
            r#"{"entries":[{"atMs":3,"actor":"a","action":"x","target":"t","via":"session"}],"nextCursor":"c1"}"#,
        ),
        (
            200,
            r#"{"entries":[{"atMs":2,"actor":"a","action":"y","target":"t"}],"nextCursor":null}"#,
        ),
    ])
    .await;
    let client = Client::builder(&base).build().expect("client");
    let entries = client.audit(1700).await.expect("entries");
    assert_eq!(
        entries
            .iter()
            .map(|e| e.action.as_str())
            .collect::<Vec<_>>(),
        ["x", "y"]
    );
    assert_eq!(entries[0].fields["via"], "session");
    assert_eq!(
        *seen.lock().expect("seen lock"),
        [
            "GET /api/v1/audit?limit=1000 HTTP/1.1",
            "GET /api/v1/audit?limit=1000&after=c1 HTTP/1.1"
        ]
    );
}

#[test]
fn records_keep_every_field() {
    let shown = json!({ "id": "lobby-1", "group": "lobby", "state": "RUNNING", "port": 30001, "reported": { "state": "RUNNING" } });
    let instance: Instance = serde_json::from_value(shown.clone()).expect("an instance");
    assert_eq!(instance.state, "RUNNING");
    assert_eq!(serde_json::to_value(&instance).expect("JSON"), shown);
}
