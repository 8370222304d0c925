//! `--probe`: asks this process's own `/readyz` (its `http.listen`, on loopback) whether it is
//! ready, for container healthchecks (compose/docker-compose.yml) that have no curl to run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use prexor_config::ReadyEndpoint;

/// How long the probe waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The URL of `endpoint`'s `/readyz`: an unspecified listen address (`0.0.0.0`, `::`) is
/// reached on loopback.
fn readyz_url(endpoint: ReadyEndpoint) -> String {
    let ip = match endpoint.listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if endpoint.tls { "https" } else { "http" };
    format!(
        "{scheme}://{}/readyz",
        SocketAddr::new(ip, endpoint.listen.port())
    )
}

/// Why a `/readyz` answer is not ready: its failing checks, or its status.
fn unready_reasons(status: u16, body: &str) -> String {
    let checks = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|report| report["checks"].as_array().cloned())
        .unwrap_or_default();
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            let name = c["name"].as_str().unwrap_or("?");
            match c["detail"].as_str().filter(|d| !d.is_empty()) {
                Some(detail) => format!("{name}: {detail}"),
                None => name.to_owned(),
            }
        })
        .collect();
    if failing.is_empty() {
        format!("answered {status}")
    } else {
        failing.join("; ")
    }
}

/// Checks `endpoint` once: exit code 0 when ready, 1 (with the reason on stderr) otherwise.
pub fn probe(endpoint: ReadyEndpoint) -> ExitCode {
    let url = readyz_url(endpoint);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the probe: {err}");
            return ExitCode::FAILURE;
        }
    };
    let asked = runtime.block_on(async {
        // The process's own port on loopback: its certificate names its public addresses, not
        // 127.0.0.1, and the probe sends nothing secret, so it is not verified.
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .danger_accept_invalid_certs(endpoint.tls)
            .build()?;
        let response = client.get(&url).send().await?;
        let status = response.status().as_u16();
        Ok::<_, reqwest::Error>((status, response.text().await.unwrap_or_default()))
    });
    match asked {
        Ok((200, _)) => {
            println!("ready ({url})");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("not ready ({url}): {}", unready_reasons(status, &body));
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("not answering at {url}: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_asks_loopback_for_an_unspecified_address() {
        let at = |listen: &str, tls| {
            readyz_url(ReadyEndpoint {
                listen: listen.parse().unwrap(),
                tls,
            })
        };
        assert_eq!(at("0.0.0.0:8080", true), "https://127.0.0.1:8080/readyz");
        assert_eq!(at("[::]:9191", false), "http://[::1]:9191/readyz");
        assert_eq!(at("10.0.0.5:9291", false), "http://10.0.0.5:9291/readyz");
    }

    #[test]
    fn an_unready_answer_names_its_failing_checks() {
        let body = r#"{"ready":false,"checks":[{"name":"mongo","ok":true},{"name":"valkey","ok":false,"detail":"connection refused"},{"name":"lifecycle","ok":false}]}"#;
        assert_eq!(
            unready_reasons(503, body),
            "valkey: connection refused; lifecycle"
        );
        assert_eq!(unready_reasons(502, "bad gateway"), "answered 502");
    }
}
