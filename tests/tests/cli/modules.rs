//! Platform modules: `upload`, `install`, `upgrade`, `list`, `get`, `uninstall`, `delete`.

use anyhow::ensure;
use prexor_acceptance::{Cluster, find_doc, module_active, tar_gz, wait_state};
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
        ctl.says(
            &["modules", "upload", "essentials", version, path_str(&file)?],
            &[&format!("version {version} stored")],
        )?;
    }
    let shown = ctl.json(&["modules", "get", "essentials"])?;
    ensure!(
        shown["state"] == "NEW" && shown["versions"].as_array().map(Vec::len) == Some(2),
        "{shown}"
    );
    for (action, version) in [("install", "1.0"), ("upgrade", "2.0")] {
        let out = ctl.ok(&["modules", action, "essentials", version])?;
        let requested = format!("{action} of module essentials requested");
        ensure!(out.contains(&requested), "{out}");
        module_active(cluster, "essentials", version).await?;
    }
    ctl.says(&["modules", "list"], &["essentials", "ACTIVE", "2.0"])?;
    let shown = ctl.yaml(&["modules", "get", "essentials"])?;
    ensure!(
        shown["state"] == "ACTIVE" && shown["active"]["version"] == "2.0",
        "{shown}"
    );
    ctl.fails_saying(
        &["modules", "delete", "essentials"],
        &["409", "uninstall it first"],
    )?;
    ctl.ok(&["modules", "uninstall", "essentials"])?;
    wait_state(cluster, "modules", "essentials", "UNINSTALLED").await?;
    ctl.says(
        &["modules", "delete", "essentials"],
        &["deletion requested"],
    )?;
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
