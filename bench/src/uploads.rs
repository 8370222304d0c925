//! Archives stream through the API: a template layer of `--megabytes` random (incompressible)
//! bytes is uploaded and downloaded again, with the throughput of each and the api's peak
//! resident memory (VmHWM) before and after. An api that held the layer would grow by its size;
//! streamed, it grows by a few chunks (docs/security.md, "Archives").

use std::time::Instant;

use crate::Servers;
use crate::procs::{Scratch, ready, replica};
use crate::report::Metric;

fn mib(name: &str, value: f64, target: &str) -> Metric {
    Metric {
        name: name.to_owned(),
        value,
        unit: "MiB",
        baseline: None,
        target: Some(target.to_owned()),
    }
}

fn rate(name: &str, megabytes: usize, seconds: f64) -> Metric {
    Metric {
        name: name.to_owned(),
        value: megabytes as f64 / seconds,
        unit: "MiB/s",
        baseline: None,
        target: None,
    }
}

/// A tar.gz holding one file of `megabytes` random bytes.
pub(crate) fn layer(megabytes: usize) -> anyhow::Result<Vec<u8>> {
    use rand::RngCore;
    let mut content = vec![0u8; megabytes << 20];
    rand::rng().fill_bytes(&mut content);
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "world/region.mca", &content[..])?;
    Ok(builder.into_inner()?.finish()?)
}

pub async fn run(servers: &Servers, megabytes: usize) -> anyhow::Result<()> {
    let dir = Scratch::new("uploads")?;
    let api = ready(replica(servers, &dir.0, "api", "api-uploads", "")?).await?;
    let password = crate::api::bootstrap(&api, &dir.0)?;
    let client = crate::api::login(&api, &password).await?;
    let body = layer(megabytes)?;
    let before = api.peak_rss_mib()?;

    let started = Instant::now();
    let _: serde_json::Value = client.put_bytes("/templates/bench", body.clone()).await?;
    let up = started.elapsed().as_secs_f64();
    let after_upload = api.peak_rss_mib()?;

    let started = Instant::now();
    let back = client
        .get_bytes("/templates/bench/versions/1/content")
        .await?;
    let down = started.elapsed().as_secs_f64();
    anyhow::ensure!(back[..] == body[..], "the layer came back altered");
    let after_download = api.peak_rss_mib()?;

    rate(
        &format!("{megabytes} MiB layer upload (PUT /templates, checked and stored)"),
        megabytes,
        up,
    )
    .print();
    rate(&format!("{megabytes} MiB layer download"), megabytes, down).print();
    mib("api peak RSS before", before, "").print();
    mib(
        "api peak RSS growth over the upload",
        after_upload - before,
        &format!("streamed: a few MiB, far below the {megabytes} MiB layer"),
    )
    .print();
    mib(
        "api peak RSS growth over the download",
        after_download - after_upload,
        &format!("streamed: a few MiB, far below the {megabytes} MiB layer"),
    )
    .print();
    Ok(())
}
