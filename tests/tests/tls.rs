//! HTTPS on the REST port: by default with a certificate the cluster CA issues to the api
//! replica; prexorctl pins the cluster CA (by fingerprint) into its context and refuses a wrong
//! one; an operator-provided certificate (files) is served and rotated without a restart.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, Proc, binary, scenario_tests, stop_all};
use prexor_pki::{CertificateAuthority, Identity, KeyAndCsr, ServiceNames};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

fn https(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(trusting(ca_pem)?.build()?)
}

/// A client that trusts only `ca_pem`.
fn trusting(ca_pem: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())?)
        .timeout(Duration::from_secs(5)))
}

/// Waits until `/readyz` answers 200 over HTTPS, trusting `ca_pem`.
async fn ready_over_https(api: &Proc, ca_pem: &str) -> anyhow::Result<String> {
    let client = https(ca_pem)?;
    let url = api.http.replace("http://", "https://");
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(response) = client.get(format!("{url}/readyz")).send().await
            && response.status() == 200
        {
            return Ok(url);
        }
        ensure!(
            Instant::now() < deadline,
            "{} never became ready over HTTPS:\n{}",
            api.name,
            api.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ctl(cluster: &Cluster, args: &[&str], stdin: &str) -> anyhow::Result<Output> {
    let mut child = Command::new(binary("prexorctl")?)
        .args(args)
        .env("PREXORCTL_CONFIG", cluster.dir.join("prexorctl.json"))
        .env_remove("PREXOR_CONTROLLER")
        .env_remove("PREXOR_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A certificate for 127.0.0.1 from `ca` (an operator's "public" CA): (chain PEM, key PEM).
fn issued(ca: &CertificateAuthority, replica: &str) -> anyhow::Result<(String, String)> {
    let names = ServiceNames {
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse()?],
    };
    let identity = Identity::Service {
        kind: "api".into(),
        replica: replica.into(),
    };
    let request = KeyAndCsr::new(&identity, &names)?;
    let cert = ca.sign_service(
        "api",
        replica,
        &names,
        &request.csr_pem,
        Duration::from_secs(86_400),
    )?;
    Ok((
        format!("{}{}", cert.pem, ca.certificate().pem),
        request.key_pem,
    ))
}

/// The SHA-256 fingerprint of the leaf certificate the server at `url` presents.
async fn served_leaf(url: &str, ca_pem: &str) -> anyhow::Result<String> {
    let response = https(ca_pem)?.get(format!("{url}/healthz")).send().await?;
    ensure!(response.status() == 200, "{}", response.status());
    // reqwest does not expose the peer certificate: ask the TLS layer directly.
    let host_port = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(host_port).await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in prexor_pki::pem_certificates(ca_pem)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = connector
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .context("no peer certificate")?;
    Ok(prexor_pki::fingerprint(leaf.as_ref()))
}

async fn tls(cluster: &Cluster) -> anyhow::Result<()> {
    let mut ca = cluster.service("ca", "ca-1", &cluster.ca_extra("ca-1"))?;
    ca.wait_ready(READY_WITHIN).await?;
    let published = prexor_model::pki::published_ca(&cluster.store().await?)
        .await?
        .context("the cluster CA")?
        .certificate;
    let password = cluster.bootstrap_admin("admin")?;

    // The default: HTTPS with a certificate from the cluster CA.
    let mut api = cluster.service("api", "api-1", "[api]\ntls = \"cluster-ca\"\n")?;
    let url = ready_over_https(&api, &published.pem).await?;
    let metrics = https(&published.pem)?
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        prexor_testkit::metric(
            &metrics,
            "prexor_tls_certificate_expiry_timestamp_seconds{use=\"api\"}"
        )
        .is_some(),
        "the certificate's expiry is exported"
    );
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", api.http))
        .send()
        .await;
    ensure!(plain.is_err(), "no plain HTTP on an HTTPS port");
    dashboard_over_https(&url, &published.pem, &password).await?;
    // Its probe (a container's healthcheck) asks its own port over HTTPS.
    let probe = Command::new(binary("prexor-api")?)
        .args(["--probe", "--config"])
        .arg(api.config())
        .output()?;
    ensure!(
        probe.status.success() && said(&probe).contains("ready (https://127.0.0.1:"),
        "{}",
        said(&probe)
    );

    // prexorctl: not trusted yet → the fingerprint is shown, nothing saved.
    let login = |extra: &[&str]| {
        let args = ["login", "--controller", &url, "--password-stdin"];
        ctl(cluster, &[&args[..], extra].concat(), &password)
    };
    let out = login(&[])?;
    ensure!(
        !out.status.success()
            && said(&out).contains(&published.fingerprint)
            && said(&out).contains("--ca-fingerprint"),
        "{}",
        said(&out)
    );
    // A wrong fingerprint is refused.
    let wrong = "ab".repeat(32);
    let out = login(&["--ca-fingerprint", &wrong])?;
    ensure!(
        !out.status.success() && said(&out).contains("refusing"),
        "{}",
        said(&out)
    );
    // The right one: signed in, the CA kept in the context, used from then on.
    let out = login(&["--ca-fingerprint", &published.fingerprint])?;
    ensure!(out.status.success(), "{}", said(&out));
    let saved = std::fs::read_to_string(cluster.dir.join("prexorctl.json"))?;
    ensure!(
        saved.contains("BEGIN CERTIFICATE"),
        "the CA is kept: {saved}"
    );
    let out = ctl(cluster, &["groups", "list", "-o", "json"], "")?;
    ensure!(out.status.success(), "{}", said(&out));
    // Another CA is not accepted for this controller.
    let (other, _) = CertificateAuthority::generate("someone-else")?;
    let other_pem = cluster.dir.join("other-ca.pem");
    std::fs::write(&other_pem, &other.certificate().pem)?;
    let out = ctl(
        cluster,
        &[
            "--ca-file",
            other_pem.to_str().context("path")?,
            "groups",
            "list",
        ],
        "",
    )?;
    ensure!(
        !out.status.success() && said(&out).contains("cannot reach the controller"),
        "{}",
        said(&out)
    );
    let out = ctl(cluster, &["--insecure-skip-verify", "groups", "list"], "")?;
    ensure!(
        out.status.success() && said(&out).contains("warning: --insecure-skip-verify"),
        "{}",
        said(&out)
    );

    // An operator's own certificate (files), replaced while the replica runs.
    let (public, _) = CertificateAuthority::generate("public-ca")?;
    let (cert_file, key_file) = (cluster.dir.join("api.crt"), cluster.dir.join("api.key"));
    let (chain, key) = issued(&public, "api-2")?;
    std::fs::write(&cert_file, chain)?;
    prexor_pki::write_private(&key_file, key.as_bytes())?;
    let mut files_api = cluster.service(
        "api",
        "api-2",
        &format!(
            "[api]\ntls = \"files\"\ntlsCertFile = \"{}\"\ntlsKeyFile = \"{}\"\n",
            cert_file.display(),
            key_file.display()
        ),
    )?;
    let public_pem = public.certificate().pem.clone();
    let files_url = ready_over_https(&files_api, &public_pem).await?;
    let first = served_leaf(&files_url, &public_pem).await?;
    let (chain, key) = issued(&public, "api-2")?;
    std::fs::write(&cert_file, chain)?;
    prexor_pki::write_private(&key_file, key.as_bytes())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = served_leaf(&files_url, &public_pem).await?;
        if now != first {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the replaced certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(
        files_api
            .log_text()
            .matches("certificate loaded from files")
            .count()
            >= 2,
        "reloaded without a restart"
    );

    stop_all([&mut api, &mut files_api, &mut ca], EXIT_WITHIN).await
}

/// Signing in to the dashboard over HTTPS sets a `Secure` session cookie, which then signs
/// the pages in; signing out clears it with the same attributes.
async fn dashboard_over_https(url: &str, ca_pem: &str, password: &str) -> anyhow::Result<()> {
    let client = trusting(ca_pem)?
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let signed_in = client
        .post(format!("{url}/ui/login"))
        .header("Origin", url)
        .form(&[("username", "admin"), ("password", password)])
        .send()
        .await?;
    ensure!(
        signed_in.status() == 303,
        "signing in: {}",
        signed_in.status()
    );
    let set = signed_in
        .headers()
        .get("set-cookie")
        .context("no session cookie")?
        .to_str()?
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Secure"] {
        ensure!(
            set.split("; ").any(|a| a == attribute),
            "the cookie lacks {attribute}: {set}"
        );
    }
    let cookie = set.split(';').next().context("cookie")?.to_owned();
    let page = client
        .get(format!("{url}/ui/"))
        .header("Cookie", &cookie)
        .send()
        .await?;
    ensure!(page.status() == 200, "the overview: {}", page.status());
    let page = page.text().await?;
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the page has no CSRF token")?
        .to_owned();
    ensure!(
        page.contains(r#"id="signed-in-user">admin<"#),
        "not signed in"
    );
    let out = client
        .post(format!("{url}/ui/logout"))
        .header("Cookie", &cookie)
        .header("Origin", url)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    let cleared = out
        .headers()
        .get("set-cookie")
        .context("signing out sets no cookie")?
        .to_str()?;
    ensure!(
        out.status() == 303 && cleared.contains("Max-Age=0") && cleared.ends_with("; Secure"),
        "signing out: {} {cleared}",
        out.status()
    );
    Ok(())
}

scenario_tests! {
    the_rest_port_serves_https_with_the_cluster_ca_and_prexorctl_pins_it: tls,
}
