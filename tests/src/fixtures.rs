//! What tests feed the cluster: group specs for the fake server, groups, deployments, archives.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, ensure};
use mongodb::bson::{Document, doc};

use crate::{Cluster, Rest, binary, collection, free_port};

/// A group document for the fake server (`extra` arguments after `--port {port}`).
pub fn group_doc(name: &str, min: i64, extra: &[&str]) -> anyhow::Result<Document> {
    let mut command = vec![
        binary("prexor-fakeserver")?.display().to_string(),
        "--port".to_string(),
        "{port}".to_string(),
    ];
    command.extend(extra.iter().map(|s| s.to_string()));
    // Ten ports from a free one, below the ephemeral range (free_port stays under 32000).
    let base_port = free_port();
    Ok(doc! {
        "_id": name,
        "revision": 1_i64,
        "spec": {
            "platform": "fake", "version": "1",
            "command": command,
            "memoryMb": 256_i64,
            "portRange": { "from": i32::from(base_port), "to": i32::from(base_port) + 9 },
            "minInstances": min, "maxInstances": 5_i64,
            "scaling": "STATIC",
        },
    })
}

/// `spec` (JSON, as the API takes it) with `env.VERSION` set: a new revision to roll out.
pub fn with_version(spec: &serde_json::Value, version: &str) -> serde_json::Value {
    let mut spec = spec.clone();
    spec["env"] = serde_json::json!({ "VERSION": version });
    spec
}

/// Starts a rolling deployment of `group` (`POST /groups/{group}/deployments`); the deployment.
pub async fn deploy(
    rest: &Rest,
    group: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    rest.post_created(&format!("/groups/{group}/deployments"), body)
        .await
}

/// Rolls `spec` out to `group` one instance at a time (batch size 1, at most one unavailable);
/// the deployment's id and the deployment.
pub async fn deploy_one_by_one(
    rest: &Rest,
    group: &str,
    spec: serde_json::Value,
) -> anyhow::Result<(String, serde_json::Value)> {
    let body = serde_json::json!({ "spec": spec, "batchSize": 1, "maxUnavailable": 1 });
    let deployment = deploy(rest, group, body).await?;
    let id = deployment["id"].as_str().context("the deployment's id")?;
    Ok((id.to_owned(), deployment))
}

/// The spec of [`group_doc`] `name` as the API takes it (JSON).
pub fn spec_of(name: &str, min: i64, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(
        group_doc(name, min, extra)?.get_document("spec")?,
    )?)
}

/// A group's spec as the API takes it (`group_doc`'s, as JSON).
pub fn group_spec(min: i64) -> anyhow::Result<serde_json::Value> {
    spec_of("g", min, &[])
}

/// Creates group `name` with `spec` through the API (`POST /groups`); the group.
pub async fn create_group(
    rest: &Rest,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    rest.post_created("/groups", serde_json::json!({ "name": name, "spec": spec }))
        .await
}

/// Requires `POST /groups` of group `name` with `spec` to be refused (400) naming `field` first.
pub async fn refused_group(
    rest: &Rest,
    name: &str,
    spec: serde_json::Value,
    field: &str,
) -> anyhow::Result<()> {
    let (status, body) = rest
        .post("/groups", serde_json::json!({ "name": name, "spec": spec }))
        .await?;
    ensure!(
        status == 400 && body["details"]["fields"][0]["field"] == field,
        "group {name} should be refused for {field}: {status} {body}"
    );
    Ok(())
}

/// Writes `group` (a [`group_doc`]) straight into MongoDB, as an operator's earlier write would
/// have: for tests that run schedulers without an api.
pub async fn insert_group(cluster: &Cluster, group: Document) -> anyhow::Result<()> {
    collection(cluster, "groups")
        .await?
        .insert_one(group)
        .await?;
    Ok(())
}

/// A key and an hour's certificate from `authority` for replica `replica` of service `kind`
/// (no names beyond its identity): (certificate PEM, key PEM).
pub fn service_certificate(
    authority: &prexor_pki::CertificateAuthority,
    kind: &str,
    replica: &str,
) -> anyhow::Result<(String, String)> {
    let identity = prexor_pki::Identity::Service {
        kind: kind.into(),
        replica: replica.into(),
    };
    let names = prexor_pki::ServiceNames::default();
    let request = prexor_pki::KeyAndCsr::new(&identity, &names)?;
    let hour = std::time::Duration::from_secs(3600);
    let issued = authority.sign_service(kind, replica, &names, &request.csr_pem, hour)?;
    Ok((issued.pem, request.key_pem))
}

/// Sets the fields `set` of group `name` straight in MongoDB (`$set`), as an operator's write
/// would have: for tests that run schedulers without an api.
pub async fn set_group(cluster: &Cluster, name: &str, set: Document) -> anyhow::Result<()> {
    collection(cluster, "groups")
        .await?
        .update_one(doc! { "_id": name }, doc! { "$set": set })
        .await?;
    Ok(())
}

/// `len` random bytes (content no compressor can shrink).
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A tar.gz with the given (path, content) files.
pub fn tar_gz(files: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
    tar_gz_with(&files, &[])
}

/// A tar.gz with the given (path, content) files and symbolic links (path, target).
pub fn tar_gz_with(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    tar_gz_packed(files.iter().copied(), 0o644, links)
}

/// A tar.gz with the given (path, content) files, each with permissions `mode` (a backup
/// archive's are 0600).
pub fn tar_gz_mode<P: AsRef<Path>, C: AsRef<[u8]>>(
    files: impl IntoIterator<Item = (P, C)>,
    mode: u32,
) -> anyhow::Result<Vec<u8>> {
    tar_gz_packed(files, mode, &[])
}

/// The entries of a tar.gz, in their order: (path, content).
pub fn tar_gz_entries(bytes: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut entries = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        entries.push((path, content));
    }
    Ok(entries)
}

fn tar_gz_packed<P: AsRef<Path>, C: AsRef<[u8]>>(
    files: impl IntoIterator<Item = (P, C)>,
    mode: u32,
    links: &[(&str, &str)],
) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, content) in files {
        let content = content.as_ref();
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder.append_data(&mut header, path, content)?;
    }
    for (path, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder.append_link(&mut header, path, target)?;
    }
    Ok(builder.into_inner()?.finish()?)
}
