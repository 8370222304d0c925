//! Node CSR signing through the internal gRPC path of a real `prexor-ca` process, next to the
//! same signature made in-process (the crypto floor) and the MongoDB insert floor (every issued
//! certificate is recorded).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prexor_pki::{CertificateAuthority, Identity, KeyAndCsr, ServiceNames};
use prexor_proto::v1::SignNodeCsrRequest;
use prexor_proto::v1::ca_signer_client::CaSignerClient;
use tonic::transport::Channel;

use crate::Servers;
use crate::report::{Metric, Samples};

pub async fn run(servers: &Servers, n: usize) -> anyhow::Result<()> {
    let floors = crate::stack::run(servers, n).await?;
    let csrs: Vec<String> = (0..n + n / 10)
        .map(|i| {
            KeyAndCsr::new(
                &Identity::Node(format!("node-{i}")),
                &ServiceNames::default(),
            )
            .map(|k| k.csr_pem)
        })
        .collect::<Result<_, _>>()?;

    // The crypto floor: the same signature without process, network or store.
    let (local, _) = CertificateAuthority::generate("bench")?;
    let validity = Duration::from_secs(90 * 86400);
    let in_process = Samples::measure(n, |i| {
        let result = local
            .sign_node(&format!("node-{i}"), &csrs[i], validity)
            .map(|_| ())
            .map_err(anyhow::Error::from);
        async move { result }
    })
    .await?;
    let crypto_p50 = Metric::floor("ca_sign_in_process_p50", in_process.percentile(50.0));
    crypto_p50.print();
    Metric::floor("ca_sign_in_process_p95", in_process.percentile(95.0)).print();

    let ca = CaProcess::start(servers).await?;
    let channel = Channel::from_shared(format!("http://{}", ca.grpc))?
        .connect()
        .await?;
    let client = CaSignerClient::new(channel);
    let signing = Samples::measure(n, |i| {
        let mut client = client.clone();
        let request = SignNodeCsrRequest {
            node_id: format!("node-{i}"),
            csr_pem: csrs[i].clone(),
        };
        async move {
            client.sign_node_csr(request).await?;
            Ok(())
        }
    })
    .await?;
    Metric::against(
        "ca_sign_node_csr_grpc_p50",
        signing.percentile(50.0),
        &floors.mongo_update_p50,
        "gRPC + sign + record in MongoDB; no published target",
    )
    .print();
    Metric::against(
        "ca_sign_node_csr_grpc_p95",
        signing.percentile(95.0),
        &floors.mongo_update_p95,
        "gRPC + sign + record in MongoDB; no published target",
    )
    .print();
    drop(ca);
    Ok(())
}

/// A `prexor-ca` started next to this benchmark binary, bootstrapping its own CA in the
/// benchmark's database.
struct CaProcess {
    child: std::process::Child,
    grpc: String,
    dir: std::path::PathBuf,
}

impl CaProcess {
    async fn start(servers: &Servers) -> anyhow::Result<CaProcess> {
        let exe = std::env::current_exe()?;
        let binary = exe.with_file_name("prexor-ca");
        anyhow::ensure!(
            binary.is_file(),
            "{} is missing: cargo build --workspace --bins first",
            binary.display()
        );
        let dir = std::env::temp_dir().join(format!("prexor-bench-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (http, grpc) = (prexor_testkit::free_port(), prexor_testkit::free_port());
        let config = dir.join("ca.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\nprofile = \"production\"\n[replica]\nid = \"ca-bench\"\nadvertiseHost = \"127.0.0.1\"\n[mongo]\nuri = \"{}\"\ndatabase = \"{}\"\n[valkey]\nuri = \"{}\"\nnamespace = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[ca]\ndataDir = \"{}\"\n[telemetry]\nlogFormat = \"json\"\n",
                servers.mongo_uri,
                servers.database,
                servers.valkey_url,
                servers.namespace,
                dir.display()
            ),
        )?;
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&config)
            .arg("--bootstrap")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = prexor_testkit::spawn_tied(cmd)?;
        let process = CaProcess {
            child,
            grpc: format!("127.0.0.1:{grpc}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{http}/readyz");
        loop {
            let ready = reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(process);
            }
            anyhow::ensure!(Instant::now() < deadline, "prexor-ca did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
