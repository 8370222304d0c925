//! Group features beyond scaling and placement (docs/scheduling.md), each through the REST API
//! with the real binaries: config rules patch a template's files per group when a server is
//! prepared; a rule the API can tell is wrong is refused naming it, and one that cannot be
//! applied on the node fails the start naming it.

use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, create_group, find_one, nodes, refused_group, running, scenario_tests, schedulers,
    spec_of, tar_gz,
};
use prexor_testkit::eventually;
use serde_json::json;

const READY_WITHIN: Duration = Duration::from_secs(60);
const WITHIN: Duration = Duration::from_secs(30);

scenario_tests! {
    config_rules_patch_a_templates_files_per_group: config_rules,
}

async fn config_rules(cluster: &Cluster) -> anyhow::Result<()> {
    let password = cluster.bootstrap_admin("admin")?;
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut scheduler = schedulers(cluster, 1).await?.remove(0);
    let mut api = cluster.service("api", "api-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    let rest = api.rest(&api.login("admin", &password).await?);

    // One template for every group: its files as a plain Paper server would ship them.
    let layer = tar_gz(&[
        (
            "server.properties",
            "# Minecraft server properties\nmotd=A Minecraft Server\nonline-mode=true\n",
        ),
        (
            "config/paper-global.yml",
            "chunk-loading:\n  autoconfig-send-distance: true\n",
        ),
        (
            "velocity.toml",
            "# Velocity\nbind = \"0.0.0.0:25577\"\n\n[servers]\nlobby = \"127.0.0.1:30066\"\n",
        ),
        ("plugins/Stats/config.json", "{\"enabled\": false}"),
        ("eula.txt", "eula=false\n"),
    ])?;
    let (status, body) = rest.put_bytes("/templates/base", layer).await?;
    ensure!(status == 201, "uploading the template: {status} {body}");
    let mut spec = spec_of("rules", 1, &[])?;
    spec["templates"] = json!([{ "name": "base" }]);
    spec["configRules"] = json!([
        { "file": "server.properties", "set": { "key": "motd", "value": "{group} on port {port}" } },
        { "file": "server.properties", "set": { "key": "online-mode", "value": false } },
        { "file": "config/paper-global.yml", "set": { "key": "proxies.velocity.enabled", "value": true } },
        { "file": "velocity.toml", "set": { "key": "servers.hub", "value": "127.0.0.1:{port}" } },
        { "file": "plugins/Stats/config.json", "set": { "key": "limits.players", "value": 120 } },
        { "file": "eula.txt", "regex": { "find": "eula=\\w+", "with": "eula=true" } },
        { "file": "velocity.toml", "replace": { "find": "0.0.0.0:25577", "with": "0.0.0.0:{port}" } },
    ]);

    // What the API can tell is wrong is refused when the group is written, naming the rule.
    let mut bad = spec.clone();
    bad["configRules"][5]["regex"]["find"] = json!("eula=(");
    refused_group(&rest, "rules", bad, "configRules[5].regex.find").await?;
    let mut bad = spec.clone();
    bad["configRules"][0]["file"] = json!("../../etc/motd");
    refused_group(&rest, "rules", bad, "configRules[0].file").await?;

    create_group(&rest, "rules", spec).await?;
    let instance = running(cluster, &["rules-1"]).await?.remove(0);
    let port = instance.get_i64("port")?;
    let dir = cluster.dir.join("node-1-servers").join("rules-1");
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file)).with_context(|| format!("reading {file}"))
    };
    let properties = read("server.properties")?;
    ensure!(
        properties
            == format!(
                "# Minecraft server properties\nmotd=rules on port {port}\nonline-mode=false\n"
            ),
        "{properties}"
    );
    let paper: serde_norway::Value = serde_norway::from_str(&read("config/paper-global.yml")?)?;
    ensure!(
        paper["proxies"]["velocity"]["enabled"] == serde_norway::Value::Bool(true)
            && paper["chunk-loading"]["autoconfig-send-distance"]
                == serde_norway::Value::Bool(true),
        "{paper:?}"
    );
    let velocity = read("velocity.toml")?;
    ensure!(
        velocity.starts_with(&format!("# Velocity\nbind = \"0.0.0.0:{port}\""))
            && velocity.contains(&format!("hub = \"127.0.0.1:{port}\"")),
        "{velocity}"
    );
    let stats: serde_json::Value = serde_json::from_str(&read("plugins/Stats/config.json")?)?;
    ensure!(
        stats == json!({ "enabled": false, "limits": { "players": 120 } }),
        "{stats}"
    );
    ensure!(read("eula.txt")? == "eula=true\n");

    // A rule that cannot be applied on the node (its file does not exist) fails the start,
    // naming the rule: the group never runs a server with half its configuration.
    let mut broken = spec_of("broken", 1, &[])?;
    broken["configRules"] = json!([
        { "file": "bukkit.yml", "replace": { "find": "a", "with": "b" } },
    ]);
    create_group(&rest, "broken", broken).await?;
    let crash = eventually("the failed start of broken-1", WITHIN, async || {
        find_one(cluster, "crashes", doc! { "instanceId": "broken-1" }).await
    })
    .await?;
    let detail = crash.get_str("detail").unwrap_or_default();
    ensure!(
        detail.contains("configRules[0] (bukkit.yml): the file does not exist"),
        "{crash:?}"
    );

    api.stop(Duration::from_secs(20)).await?;
    fleet.stop_with(&mut scheduler).await
}
