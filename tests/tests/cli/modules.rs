//! Platform modules: `upload`, `install`, `upgrade`, `list`, `get`, `uninstall`, `delete`.

use anyhow::ensure;
use prexor_acceptance::{Cluster, find_doc, tar_gz, wait_doc};
use prexor_testkit::eventually;

use crate::{CONDITION_WITHIN, Stack, path_str};

/// Module "essentials": two versions uploaded, installed, upgraded, uninstalled, deleted.
pub async fn modules(cluster: &Cluster, stack: &Stack) -> anyhow::Result<()> {
    let (ctl, rest, dir) = (&stack.ctl, &stack.rest, &cluster.dir);

    // ---- modules upload, install, upgrade, list, get, uninstall, delete.
    for version in ["1.0", "2.0"] {
        let file = dir.join(format!("essentials-{version}.tar.gz"));
        std::fs::write(
            &file,
            tar_gz(&[("plugins/essentials.txt", &format!("essentials {version}\n"))])?,
        )?;
        let out = ctl.ok(&["modules", "upload", "essentials", version, path_str(&file)?])?;
        ensure!(out.contains(&format!("version {version} stored")), "{out}");
    }
    let shown = ctl.json(&["modules", "get", "essentials"])?;
    ensure!(
        shown["state"] == "NEW" && shown["versions"].as_array().map(Vec::len) == Some(2),
        "{shown}"
    );
    let out = ctl.ok(&["modules", "install", "essentials", "1.0"])?;
    ensure!(
        out.contains("install of module essentials requested"),
        "{out}"
    );
    wait_doc(cluster, "modules", "essentials", "ACTIVE 1.0", |d| {
        d.get_str("state") == Ok("ACTIVE")
            && d.get_document("active").and_then(|a| a.get_str("version")) == Ok("1.0")
    })
    .await?;
    let out = ctl.ok(&["modules", "upgrade", "essentials", "2.0"])?;
    ensure!(
        out.contains("upgrade of module essentials requested"),
        "{out}"
    );
    wait_doc(cluster, "modules", "essentials", "ACTIVE 2.0", |d| {
        d.get_str("state") == Ok("ACTIVE")
            && d.get_document("active").and_then(|a| a.get_str("version")) == Ok("2.0")
    })
    .await?;
    let table = ctl.ok(&["modules", "list"])?;
    ensure!(
        table.contains("essentials") && table.contains("ACTIVE") && table.contains("2.0"),
        "{table}"
    );
    let shown = ctl.yaml(&["modules", "get", "essentials"])?;
    ensure!(
        shown["state"] == "ACTIVE" && shown["active"]["version"] == "2.0",
        "{shown}"
    );
    let err = ctl.fails(&["modules", "delete", "essentials"])?;
    ensure!(
        err.contains("409") && err.contains("uninstall it first"),
        "{err}"
    );
    ctl.ok(&["modules", "uninstall", "essentials"])?;
    wait_doc(cluster, "modules", "essentials", "UNINSTALLED", |d| {
        d.get_str("state") == Ok("UNINSTALLED")
    })
    .await?;
    let out = ctl.ok(&["modules", "delete", "essentials"])?;
    ensure!(out.contains("deletion requested"), "{out}");
    eventually("module essentials deleted", CONDITION_WITHIN, async || {
        Ok(find_doc(cluster, "modules", "essentials")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let (status, _) = rest.get("/modules/essentials").await?;
    ensure!(status == 404, "{status}");
    Ok(())
}
