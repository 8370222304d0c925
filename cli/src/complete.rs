//! Shell completion: `prexorctl completions SHELL` prints a script that asks prexorctl itself
//! (`COMPLETE=SHELL prexorctl -- WORDS...`) what may come next: subcommands and flags, and the
//! names of groups, instances and nodes read from the cluster of the current context
//! (`PREXOR_CONTEXT`, `PREXOR_CONTROLLER` and `PREXOR_TOKEN` are honoured); `--static` prints
//! a script that completes subcommands and flags only, without calling prexorctl.

use std::time::Duration;

use clap_complete::env::{Bash, Elvish, EnvCompleter, Fish, Powershell, Zsh};
use clap_complete::{ArgValueCandidates, CompletionCandidate, Shell};
use prexor_client::{Client, InstanceFilter, Trust};

/// How long completion may wait for the cluster: a shell must not hang on a slow one.
const WITHIN: Duration = Duration::from_secs(3);

/// The client of the current context (or the environment's controller and token).
fn client() -> Option<Client> {
    let config = crate::contexts::Config::load().ok()?;
    let name = std::env::var("PREXOR_CONTEXT").ok();
    let context = config.get(name.as_deref()).ok()?.cloned();
    let controller = std::env::var("PREXOR_CONTROLLER")
        .ok()
        .or_else(|| context.as_ref().map(|c| c.controller.clone()))?;
    let token = std::env::var("PREXOR_TOKEN")
        .ok()
        .or_else(|| context.as_ref().and_then(|c| c.token.clone()));
    let trust = Trust {
        ca_pem: context.and_then(|c| c.ca),
        insecure: false,
    };
    Client::builder(&controller)
        .token(token.unwrap_or_default())
        .trust(trust)
        .timeout(WITHIN)
        .connect_timeout(WITHIN)
        .build()
        .ok()
}

/// Names fetched by `fetch`; none when the cluster cannot be asked.
fn names<F>(fetch: impl FnOnce(Client) -> F) -> Vec<CompletionCandidate>
where
    F: Future<Output = Result<Vec<(String, String)>, prexor_client::Error>>,
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(client) = client() else {
        return Vec::new();
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    runtime
        .block_on(async { tokio::time::timeout(WITHIN, fetch(client)).await })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, help)| CompletionCandidate::new(name).help(Some(help.into())))
        .collect()
}

/// Completes group names.
pub fn groups() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        names(async |client| {
            Ok(client
                .groups()
                .await?
                .into_iter()
                .map(|g| (g.name, format!("revision {}", g.revision)))
                .collect())
        })
    })
}

/// Completes instance ids.
pub fn instances() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        names(async |client| {
            Ok(client
                .instances(&InstanceFilter::default())
                .await?
                .into_iter()
                .map(|i| {
                    let node = i.node_id.unwrap_or_else(|| "-".into());
                    (i.id, format!("{} on {node}", i.state))
                })
                .collect())
        })
    })
}

/// Completes node ids.
pub fn nodes() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        names(async |client| {
            Ok(client
                .nodes()
                .await?
                .into_iter()
                .map(|n| (n.id, n.state))
                .collect())
        })
    })
}

/// The script that makes `shell` complete prexorctl by asking it.
pub fn registration(shell: Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let completer: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        Shell::Fish => &Fish,
        Shell::Elvish => &Elvish,
        Shell::PowerShell => &Powershell,
        _ => &Bash,
    };
    completer.write_registration("COMPLETE", "prexorctl", "prexorctl", "prexorctl", out)
}
