//! `prexorctl events`: follow the cluster's events.

use std::process::ExitCode;

use serde_json::Value;

use super::seg;
use crate::client::{Client, read_events};

/// Follows domain events (optionally of some types) until interrupted.
pub async fn events(client: &Client, types: Option<String>) -> anyhow::Result<ExitCode> {
    let path = match types {
        Some(types) => format!("/events?types={}", seg(&types)),
        None => "/events".to_owned(),
    };
    let response = client.stream(&path).await?;
    read_events(response, |event, data| {
        let parsed: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        println!(
            "{event:<24} {:<24} {}",
            parsed["subject"].as_str().unwrap_or("-"),
            parsed["data"]
        );
        Ok(true)
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
