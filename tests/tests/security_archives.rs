//! Archives are bounded from upload to unpack (docs/security.md, "Archives"): template, module
//! and backup uploads are streamed to a spool file and refused past the configured size,
//! unpacked size and entry count, or with a path that leaves their directory, leaving nothing
//! stored; a daemon unpacks an instance's layers within `daemon.instanceDiskMb` and keeps
//! `daemon.minFreeDiskMb` free, and a refused start names the budget.

use std::time::Duration;

use anyhow::ensure;
use mongodb::bson::Document;
use prexor_acceptance::{
    Cluster, Operators, Proc, Rest, control, enrolled_daemon_with_env, group_spec, operators_with,
    random_bytes, stop_all, tar_gz_with, wait_doc,
};
use serde_json::{Value, json};

const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// The api's limits in this test: 1 MiB layers unpacking to 16 MiB, 2 MiB backups, 50 entries.
const UPLOADS: &str = "[uploads]\nlayerMb = 1\nlayerUnpackedMb = 16\nbackupMb = 2\nbackupUnpackedMb = 16\nmaxEntries = 50\n";

/// PUTs `body` at `path` and expects it refused with `wanted`, the message naming `needle`.
async fn put_refused(
    admin: &Rest,
    path: &str,
    body: Vec<u8>,
    wanted: u16,
    needle: &str,
) -> anyhow::Result<Value> {
    let (status, reply) = admin.put_bytes(path, body).await?;
    let message = reply["message"].as_str().unwrap_or_default();
    ensure!(
        status == wanted && message.contains(needle),
        "PUT {path}: expected {wanted} naming {needle:?}, got {status} {reply}"
    );
    Ok(reply)
}

/// Uploads past a limit are refused with the limit named, and leave nothing behind.
async fn uploads_are_bounded(admin: &Rest) -> anyhow::Result<()> {
    // Past the compressed size: 413, before anything is stored.
    let big = tar_gz_with(&[("big.bin", &random_bytes(2 << 20))], &[])?;
    let reply = put_refused(admin, "/templates/big", big, 413, "at most 1 MiB").await?;
    ensure!(reply["code"] == "PAYLOAD_TOO_LARGE", "{reply}");

    // A bomb: 64 MiB of zeros is about 64 KiB compressed, and unpacks past 16 MiB.
    let zeros = vec![0u8; 64 << 20];
    let bomb = tar_gz_with(&[("world/region.mca", &zeros)], &[])?;
    ensure!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let unpacks = "unpacks to more than 16 MiB";
    put_refused(admin, "/templates/bomb", bomb.clone(), 400, unpacks).await?;
    put_refused(admin, "/modules/bomb/versions/1.0.0", bomb, 400, unpacks).await?;

    // Too many entries; a link out of the instance directory.
    let names: Vec<String> = (0..60).map(|i| format!("plugins/p{i}.jar")).collect();
    let many: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"jar"[..])).collect();
    let many = tar_gz_with(&many, &[])?;
    put_refused(admin, "/templates/many", many, 400, "more than 50 entries").await?;
    let escape = tar_gz_with(&[("a.txt", b"a")], &[("world", "/root")])?;
    put_refused(admin, "/templates/escape", escape, 400, "outside").await?;

    for path in [
        "/templates/big",
        "/templates/bomb",
        "/templates/many",
        "/templates/escape",
        "/modules/bomb",
    ] {
        let (status, body) = admin.get(path).await?;
        ensure!(
            status == 404,
            "{path} was stored from a refused upload: {body}"
        );
    }

    // A backup archive is bounded the same way: a blob entry that unpacks past the limit, or
    // an upload past backupMb.
    let manifest = json!({ "format": 1, "collections": {}, "blobs": {} });
    let hash = prexor_domain::sha256_hex(&zeros);
    let backup_bomb = tar_gz_with(
        &[
            ("manifest.json", &serde_json::to_vec(&manifest)?),
            (&format!("blobs/{hash}"), &zeros),
        ],
        &[],
    )?;
    put_refused(admin, "/backups/bomb/archive", backup_bomb, 400, unpacks).await?;
    let huge = random_bytes(3 << 20);
    put_refused(admin, "/backups/huge/archive", huge, 413, "at most 2 MiB").await?;
    for id in ["bomb", "huge"] {
        let (status, body) = admin.get(&format!("/backups/{id}")).await?;
        ensure!(
            status == 404,
            "backup {id} was stored from a refused upload: {body}"
        );
    }

    // Within the limits, a layer goes in and comes back byte for byte (streamed both ways).
    let layer = tar_gz_with(
        &[
            ("server.properties", b"server-port={port}\n"),
            ("plugins/a.jar", &random_bytes(300 << 10)),
        ],
        &[("plugins/b.jar", "a.jar")],
    )?;
    let (status, body) = admin.put_bytes("/templates/ok", layer.clone()).await?;
    ensure!(status == 201, "a layer within the limits: {status} {body}");
    ensure!(body["versions"][0]["files"] == 3, "{body}");
    let (status, back) = admin.get_bytes("/templates/ok/versions/1/content").await?;
    ensure!(
        status == 200 && back == layer,
        "the layer came back altered ({status})"
    );
    Ok(())
}

/// An instance's layers unpack within `daemon.instanceDiskMb` on node-a, and node-b keeps
/// `daemon.minFreeDiskMb` free: each start is refused naming its budget, and the instance
/// directory made for it is gone.
async fn nodes_keep_their_budget(
    cluster: &Cluster,
    ops: &Operators,
    gateways: &[String],
) -> anyhow::Result<Vec<Proc>> {
    let admin = &ops.rest;
    // 8 MiB of zeros: a small upload, past node-a's 1 MiB budget once unpacked.
    let layer = tar_gz_with(&[("world/region.mca", &vec![0u8; 8 << 20])], &[])?;
    let (status, body) = admin.put_bytes("/templates/world", layer).await?;
    ensure!(status == 201, "uploading the world: {status} {body}");

    let ports: Vec<&str> = gateways.iter().map(String::as_str).collect();
    let node_a = enrolled_daemon_with_env(
        cluster,
        "node-a",
        &ports,
        &[
            ("PREXOR_DAEMON__INSTANCE_DISK_MB", "1"),
            ("PREXOR_NODE__LABELS__ZONE", "a"),
        ],
    )
    .await?;
    let node_b = enrolled_daemon_with_env(
        cluster,
        "node-b",
        &ports,
        &[
            // More than any disk has free.
            ("PREXOR_DAEMON__MIN_FREE_DISK_MB", "1000000000"),
            ("PREXOR_NODE__LABELS__ZONE", "b"),
        ],
    )
    .await?;
    for (group, zone) in [("wa", "a"), ("wb", "b")] {
        let mut spec = group_spec(1)?;
        spec["templates"] = json!([{ "name": "world" }]);
        spec["affinity"] = json!({ "zone": zone });
        let (status, body) = admin
            .post("/groups", json!({ "name": group, "spec": spec }))
            .await?;
        ensure!(status == 201, "creating {group}: {status} {body}");
    }
    let ended = |needle: &'static str| {
        move |d: &Document| {
            d.get_str("state") == Ok("CRASHED")
                && d.get_str("reason").is_ok_and(|r| r.contains(needle))
        }
    };
    let wa = wait_doc(
        cluster,
        "instances",
        "wa-1",
        "refused for its disk budget",
        ended("daemon.instanceDiskMb"),
    )
    .await?;
    let reason = wa.get_str("reason")?;
    ensure!(reason.contains("unpacks to more than 1 MiB"), "{reason}");
    ensure!(
        !cluster.dir.join("node-a-servers/wa-1").exists(),
        "the refused layer was left on node-a's disk"
    );
    wait_doc(
        cluster,
        "instances",
        "wb-1",
        "refused for free space",
        ended("daemon.minFreeDiskMb"),
    )
    .await?;
    ensure!(
        std::fs::read_dir(cluster.dir.join("node-b/cache/layers"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "a partial layer was left in node-b's cache"
    );
    Ok(vec![node_a, node_b])
}

#[tokio::test]
async fn archives_are_bounded_from_upload_to_unpack() {
    let cluster = Cluster::new("security_archives").unwrap();
    let run = async {
        let mut fleet = control(&cluster).await?;
        let mut ops = operators_with(&cluster, 1, UPLOADS).await?;
        uploads_are_bounded(&ops.rest).await?;
        let mut daemons = nodes_keep_their_budget(&cluster, &ops, &fleet.daemon_ports()).await?;
        stop_all(
            daemons
                .iter_mut()
                .chain(&mut ops.schedulers)
                .chain([&mut ops.api])
                .chain(&mut fleet.gateways)
                .chain([&mut fleet.ca]),
            EXIT_WITHIN,
        )
        .await
    };
    run.await.unwrap();
}
