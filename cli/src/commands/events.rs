//! `prexorctl events`: follow the cluster's events.

use std::process::ExitCode;

use serde_json::Value;

use super::{Client, segment};

/// Follows domain events (optionally of some types) until interrupted.
pub async fn events(client: &Client, types: Option<String>) -> anyhow::Result<ExitCode> {
    let path = match types {
        Some(types) => format!("/events?types={}", segment(&types)),
        None => "/events".to_owned(),
    };
    let mut events = client.events(&path, None).await?;
    while let Some(event) = events.next().await? {
        let parsed: Value = event.json().unwrap_or(Value::Null);
        println!(
            "{:<24} {:<24} {}",
            event.event,
            parsed["subject"].as_str().unwrap_or("-"),
            parsed["data"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
