//! Backing stores over TLS: a Valkey that speaks only TLS and requires client certificates
//! (`rediss://` with `valkey.tlsCaFile`, `valkey.tlsCertFile`, `valkey.tlsKeyFile`) and a
//! MongoDB-wire server that speaks only TLS (`tls=true&tlsCAFile=...`) carry a working cluster;
//! `prexorctl setup` checks and configures them with the same files; a TLS setting without a
//! TLS URI is refused at boot, naming the key.

use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, binary, scenario_tests, stop_all};
use prexor_pki::{CertificateAuthority, Identity, KeyAndCsr, ServiceNames};
use prexor_testkit::{MongoServer, ServerTls, ValkeyServer};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Writes `name.crt` and `name.key` (a certificate for 127.0.0.1 from `ca`) into `dir`.
fn issue(
    ca: &CertificateAuthority,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let names = ServiceNames {
        dns: vec!["localhost".into()],
        ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
    };
    let identity = Identity::Service {
        kind: "api".into(),
        replica: name.into(),
    };
    let request = KeyAndCsr::new(&identity, &names)?;
    let issued = ca.sign_service("api", name, &names, &request.csr_pem, DAY)?;
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, format!("{}{}", issued.pem, ca.certificate().pem))?;
    std::fs::write(&key, &request.key_pem)?;
    Ok((cert, key))
}

async fn stores_over_tls(cluster: &Cluster) -> anyhow::Result<()> {
    let dir = cluster.dir.join("store-tls");
    std::fs::create_dir_all(&dir)?;
    let (ca, _) = CertificateAuthority::generate("stores")?;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca.certificate().pem)?;
    let (server_cert, server_key) = issue(&ca, &dir, "server")?;
    let (client_cert, client_key) = issue(&ca, &dir, "client")?;
    let server = ServerTls {
        cert_file: server_cert,
        key_file: server_key,
        ca_file: ca_file.clone(),
    };
    let valkey = ValkeyServer::start_tls(server.clone())?;
    let mongo = MongoServer::start_tls(server)?;
    ensure!(valkey.url().starts_with("rediss://") && mongo.uri().contains("tls=true"));

    // prexorctl setup checks both stores over TLS with the same files and writes them into
    // every service's configuration.
    let setup = std::process::Command::new(binary("prexorctl")?)
        .args([
            "setup",
            "--role",
            "controller",
            "--dry-run",
            "--cluster-id",
            "store-tls",
        ])
        .args(["--mongo-uri", &mongo.uri(), "--redis-uri", &valkey.url()])
        .args(["--mongo-database", &cluster.stores.database])
        .args(["--valkey-namespace", &cluster.stores.namespace])
        .arg("--valkey-tls-ca-file")
        .arg(&ca_file)
        .arg("--valkey-tls-cert-file")
        .arg(&client_cert)
        .arg("--valkey-tls-key-file")
        .arg(&client_key)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&setup.stdout),
        String::from_utf8_lossy(&setup.stderr)
    );
    ensure!(setup.status.success(), "{said}");
    ensure!(
        said.contains("reachable")
            && said.contains(&format!("tlsCaFile = \"{}\"", ca_file.display())),
        "{said}"
    );

    let tls_base = |replica: &str| {
        cluster
            .common_toml(replica)
            .replace(&cluster.stores.mongo_uri, &mongo.uri())
            .replace(&cluster.stores.valkey_url, &valkey.url())
            .replace(
                "[valkey]\n",
                &format!(
                    "[valkey]\ntlsCaFile = \"{}\"\ntlsCertFile = \"{}\"\ntlsKeyFile = \"{}\"\n",
                    ca_file.display(),
                    client_cert.display(),
                    client_key.display()
                ),
            )
    };
    let mut scheduler =
        cluster.service_from("scheduler", "scheduler-1", &tls_base("scheduler-1"), "")?;
    let mut api = cluster.service_from("api", "api-1", &tls_base("api-1"), "")?;
    scheduler.wait_ready(READY_WITHIN).await?;
    api.wait_ready(READY_WITHIN).await?;
    // A lease taken (Valkey) and fenced (MongoDB) over TLS.
    let mut held = Vec::new();
    for _ in 0..100 {
        held = scheduler.leases_held().await?;
        if held.iter().any(|s| s == "platform-module") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        held.iter().any(|s| s == "platform-module"),
        "the scheduler holds no lease over TLS: {held:?}\n{}",
        scheduler.log_text()
    );
    let (status, body) = api.get("/readyz").await?;
    ensure!(status == 200 && body.contains("\"ready\":true"), "{body}");

    // Without the client certificate Valkey refuses the connection: the replica stays
    // unready and says why.
    let no_client_cert = tls_base("scheduler-nocert").replace(
        &format!(
            "tlsCertFile = \"{}\"\ntlsKeyFile = \"{}\"\n",
            client_cert.display(),
            client_key.display()
        ),
        "",
    );
    let mut refused = cluster.service_from("scheduler", "scheduler-nocert", &no_client_cert, "")?;
    prexor_acceptance::wait_unready_because(&refused, "waiting for Valkey").await?;

    // A TLS file with a plain URI is a configuration error naming the key.
    let plain = tls_base("scheduler-plain").replace(&valkey.url(), "redis://127.0.0.1:6379");
    let mut bad = cluster.service_from("scheduler", "scheduler-plain", &plain, "")?;
    bad.wait_failure(EXIT_WITHIN, &["valkey.tlsCaFile", "not a TLS URI"])
        .await?;

    stop_all([&mut refused, &mut api, &mut scheduler], EXIT_WITHIN)
        .await
        .context("stopping")
}

scenario_tests! {
    valkey_and_mongodb_over_tls_carry_the_cluster: stores_over_tls,
}
