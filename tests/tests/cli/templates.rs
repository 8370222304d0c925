//! Templates: `upload`, `list`, `get`, `rollback`, `delete`.

use anyhow::ensure;
use prexor_acceptance::{Cluster, get_doc, tar_gz};

use crate::{Stack, path_str};

/// Uploads two versions of template "base", rolls back to the first, deletes it.
pub async fn templates(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let (ctl, rest, dir) = (&stack.ctl, &stack.rest, &cluster.dir);

    // ---- templates upload, list, get, rollback, delete.
    let layers = [
        tar_gz(&[("server.properties", "motd=one\n")])?,
        tar_gz(&[("server.properties", "motd=two\n")])?,
    ];
    let mut files = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let file = dir.join(format!("base-{}.tar.gz", i + 1));
        std::fs::write(&file, layer)?;
        files.push(file);
    }
    ctl.says(
        &["templates", "upload", "base", path_str(&files[0])?],
        &["version 1 is current"],
    )?;
    ctl.says(
        &["templates", "upload", "base", path_str(&files[1])?],
        &["version 2 is current"],
    )?;
    let stored = get_doc(cluster, "templates", "base").await?;
    ensure!(
        stored.get_i64("current") == Ok(2) && stored.get_array("versions")?.len() == 2,
        "{stored:?}"
    );
    ctl.says(&["templates", "list"], &["base", "CURRENT"])?;
    let listed = ctl.json(&["templates", "list"])?;
    ensure!(
        listed[0]["name"] == "base" && listed[0]["versions"] == 2 && listed[0]["current"] == 2,
        "{listed}"
    );
    let shown = ctl.json(&["templates", "get", "base"])?;
    ensure!(
        shown["current"] == 2 && shown["versions"].as_array().map(Vec::len) == Some(2),
        "{shown}"
    );
    ctl.says(
        &["templates", "rollback", "base", "1"],
        &["version 1 is current"],
    )?;
    let stored = get_doc(cluster, "templates", "base").await?;
    ensure!(stored.get_i64("current") == Ok(1), "{stored:?}");
    let (status, bytes) = rest.get_bytes("/templates/base/versions/1/content").await?;
    ensure!(
        status == 200 && bytes == layers[0],
        "version 1's bytes: {status}"
    );
    ctl.fails_saying(
        &["templates", "rollback", "base", "9"],
        &["400", "no version 9"],
    )?;
    ctl.deletes("templates", "base")?;
    let (status, _) = rest.get("/templates/base").await?;
    ensure!(status == 404, "deleted: {status}");
    Ok(())
}
