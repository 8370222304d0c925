//! Node CSR signing through the internal gRPC path of a real `prexor-ca` process, next to the
//! same signature made in-process (the crypto floor) and the MongoDB insert floor (every issued
//! certificate is recorded).

use std::time::Duration;

use prexor_pki::{CertificateAuthority, Identity, KeyAndCsr, ServiceNames};
use prexor_proto::v1::SignNodeCsrRequest;
use prexor_proto::v1::ca_signer_client::CaSignerClient;

use crate::Servers;
use crate::procs::{Scratch, ready, replica};
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

    let dir = Scratch::new("ca")?;
    let data = format!("[ca]\ndataDir = \"{}\"\n", dir.0.display());
    let ca =
        ready(replica(servers, &dir.0, "ca", "ca-bench", &data)?.args(&["--bootstrap"])).await?;
    let channel = servers
        .internal()
        .await?
        .peers
        .get(
            ca.grpc
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("no internal gRPC port"))?,
        )
        .map_err(anyhow::Error::msg)?;
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
