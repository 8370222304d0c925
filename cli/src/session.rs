//! `prexorctl login`, `logout` and `context`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use prexor_client::{Client, Trust};

use crate::contexts::{Config, Context};

/// The cluster CA of an https:// controller not trusted yet: fetched, shown by fingerprint, and
/// kept only if it matches `pinned` or the operator confirms it at the terminal.
async fn discover_ca(
    controller: &str,
    pinned: Option<&str>,
    interactive: bool,
) -> anyhow::Result<String> {
    let answer: serde_json::Value = Client::probe(controller)?.get("/system/ca").await?;
    let pem = answer["certificate"]
        .as_str()
        .context("the controller sent no CA certificate")?
        .to_owned();
    let first = prexor_pki::pem_certificates(&pem)
        .map_err(|e| anyhow::anyhow!("the controller's CA certificate is unreadable: {e}"))?
        .into_iter()
        .next()
        .context("the controller sent no CA certificate")?;
    let fingerprint = prexor_pki::fingerprint(first.as_ref());
    match pinned {
        Some(expected) => {
            let expected = expected.replace(':', "").to_ascii_lowercase();
            if expected != fingerprint {
                bail!(
                    "the controller at {controller} presents a CA with fingerprint {fingerprint}, not the {expected} you expect: refusing (the wrong cluster, or someone in between)"
                );
            }
        }
        None if interactive => {
            eprintln!(
                "the controller at {controller} presents the cluster CA with SHA-256 fingerprint\n  {fingerprint}\ncompare it with the one `prexorctl setup` / `prexor-ca init` printed on the first controller."
            );
            eprint!("trust this CA? [y/N] ");
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                bail!("CA not trusted; nothing was saved");
            }
        }
        None => bail!(
            "the controller at {controller} presents a cluster CA with fingerprint {fingerprint} that is not trusted yet: check it, then pass --ca-fingerprint {fingerprint} (or --ca-file with the CA certificate)"
        ),
    }
    Ok(pem)
}

pub async fn login(
    controller: &str,
    user: &str,
    password_stdin: bool,
    name: &str,
    trust: &Trust,
    ca_fingerprint: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut trust = trust.clone();
    if controller.starts_with("https://") && trust.ca_pem.is_none() && !trust.insecure {
        let interactive = !password_stdin && std::io::stdin().is_terminal();
        trust.ca_pem = Some(discover_ca(controller, ca_fingerprint, interactive).await?);
    }
    let password = crate::password::read(password_stdin, "password: ", false).await?;
    if password.is_empty() {
        bail!("no password given");
    }
    let client = crate::connect(controller, None, &trust)?;
    let session = client.login(user, &password).await?;
    let mut config = Config::load()?;
    config.contexts.insert(
        name.to_owned(),
        Context {
            controller: client.base().to_owned(),
            user: Some(user.to_owned()),
            token: Some(session.token),
            // An insecure session keeps no CA: the next command must choose again.
            ca: trust.ca_pem.filter(|_| !trust.insecure),
        },
    );
    config.current = Some(name.to_owned());
    config.save()?;
    let hours = (session.expires_at_ms - now_ms()) / 3_600_000;
    println!(
        "signed in to {} as {user} (context {name:?}, session valid for {hours} h)",
        client.base()
    );
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn logout(client: &Client, context: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut config = Config::load()?;
    let name = context
        .map(str::to_owned)
        .or_else(|| config.current.clone())
        .context("no context to log out of")?;
    match client.logout().await {
        Ok(()) => {}
        // The session already ended on the server (expired, revoked, its user disabled): there
        // is nothing left to revoke, and the context still has to forget it.
        Err(err) if err.status_code() == Some(401) => {}
        Err(err) => return Err(err.into()),
    }
    if let Some(ctx) = config.contexts.get_mut(&name) {
        ctx.token = None;
    }
    config.save()?;
    println!("logged out of context {name:?}");
    Ok(ExitCode::SUCCESS)
}
