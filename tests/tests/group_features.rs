//! Group features beyond scaling and placement (docs/scheduling.md), each through the REST API
//! with the real binaries: config rules patch a template's files per group when a server is
//! prepared (a rule the API can tell is wrong is refused naming it, one that cannot be applied on
//! the node fails the start naming it); typed variables reach the files and environment, and a
//! secret's value reaches its server and nothing else (no MongoDB record, backup, log line or API
//! answer holds it); a DYNAMIC group scales on the MSPT its servers report, in steps, and its
//! holder's successor keeps the decision going after the holder is killed; and `explain` says,
//! on any api replica, why each node could not take a missing instance and why the group scales
//! as it does; a CANARY deployment updates one instance, waits for its health gate (through a
//! holder failover), then rolls the rest, and one whose canary stays unhealthy rolls itself back;
//! files of a running instance's directory become a template version through its node and
//! gateway (only the paths asked for, no symlink, bad input refused by field) that a new group
//! then starts from.

use std::time::Duration;

use std::io::Read;

use anyhow::{Context, ensure};
use futures::TryStreamExt;
use mongodb::bson::doc;
use prexor_acceptance::{
    Cluster, Fleet, Proc, Rest, create_group, deploy, find_docs, find_one, get_doc, instance_token,
    nodes, refused_group, report_metrics, reported_pid, running, scenario_tests, schedulers,
    spec_of, stop_all, tar_gz, wait_state,
};
use prexor_testkit::eventually;
use serde_json::json;

const READY_WITHIN: Duration = Duration::from_secs(60);
const WITHIN: Duration = Duration::from_secs(30);

scenario_tests! {
    config_rules_patch_a_templates_files_per_group: config_rules,
    variables_and_secrets_reach_the_server_and_nothing_else: variables,
    a_dynamic_group_scales_on_reported_mspt_in_steps_across_a_failover: scaling_on_load,
    explain_says_why_each_node_could_not_take_an_instance: explain,
    a_canary_gates_a_deployment_across_a_failover_and_a_failing_one_rolls_back: canary,
    an_instance_configured_by_hand_is_saved_as_a_template: save_to_template,
}

/// One node, `count` scheduler replicas and an api replica with the admin signed in.
async fn stack(cluster: &Cluster, count: usize) -> anyhow::Result<(Fleet, Vec<Proc>, Proc, Rest)> {
    let password = cluster.bootstrap_admin("admin")?;
    let fleet = nodes(cluster, &["node-1"]).await?;
    let replicas = schedulers(cluster, count).await?;
    let mut api = cluster.service("api", "api-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    let rest = api.rest(&api.login("admin", &password).await?);
    Ok((fleet, replicas, api, rest))
}

async fn config_rules(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut fleet, mut replicas, mut api, rest) = stack(cluster, 1).await?;
    let mut scheduler = replicas.remove(0);

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

/// Every document of every collection of the test's database, as extended JSON text.
async fn whole_database(cluster: &Cluster) -> anyhow::Result<String> {
    let store = cluster.store().await?;
    let db = store.database();
    let mut text = String::new();
    for name in db.list_collection_names().await? {
        let docs: Vec<mongodb::bson::Document> = db
            .collection::<mongodb::bson::Document>(&name)
            .find(doc! {})
            .await?
            .try_collect()
            .await?;
        for doc in docs {
            text.push_str(
                &mongodb::bson::Bson::Document(doc)
                    .into_relaxed_extjson()
                    .to_string(),
            );
        }
    }
    Ok(text)
}

/// Every file of a tar.gz archive, unpacked, as one text.
fn unpacked(archive: &[u8]) -> anyhow::Result<String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut text = String::new();
    for entry in tar.entries()? {
        let mut bytes = Vec::new();
        entry?.read_to_end(&mut bytes)?;
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    Ok(text)
}

async fn variables(cluster: &Cluster) -> anyhow::Result<()> {
    // Two secrets, one in the scheduler's environment, one in a file on its host.
    let rcon = format!("rcon-{}", uuid_like());
    let token = format!("token-{}", uuid_like());
    let token_file = cluster.dir.join("discord-token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let password = cluster.bootstrap_admin("admin")?;
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut scheduler = cluster.service_with_env(
        "scheduler",
        "scheduler-1",
        &[("RCON_PASSWORD", rcon.as_str())],
    )?;
    scheduler.wait_ready(READY_WITHIN).await?;
    let mut api = cluster.service("api", "api-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    let rest = api.rest(&api.login("admin", &password).await?);

    let layer = tar_gz(&[(
        "server.properties",
        "rcon.password={vars.RCON}\nmax-players={vars.SLOTS}\npvp={vars.PVP}\nquery.port={vars.QUERY}\n",
    )])?;
    let (status, body) = rest.put_bytes("/templates/vars", layer).await?;
    ensure!(status == 201, "uploading the template: {status} {body}");
    let mut spec = spec_of("vars", 1, &[])?;
    spec["templates"] = json!([{ "name": "vars" }]);
    spec["env"]["RCON_ENV"] = json!("{vars.RCON}");
    spec["env"]["MOTD_ENV"] = json!("{vars.MOTD} ({group})");
    spec["variables"] = json!({
        "MOTD": { "type": "string", "value": "Welcome" },
        "SLOTS": { "type": "int", "value": 120 },
        "PVP": { "type": "bool", "value": false },
        "QUERY": { "type": "port", "value": 25575 },
        "RCON": { "type": "secret", "from": "env://RCON_PASSWORD" },
        "DISCORD": { "type": "secret", "from": format!("file://{}", token_file.display()) },
    });
    spec["configRules"] = json!([
        { "file": "bot.yml", "set": { "key": "discord.token", "value": "{vars.DISCORD}" } },
    ]);

    // A value that does not fit its type, or a secret given as a value, is refused by field.
    let mut bad = spec.clone();
    bad["variables"]["QUERY"]["value"] = json!(70000);
    refused_group(&rest, "vars", bad, "variables.QUERY.value").await?;
    let mut bad = spec.clone();
    bad["variables"]["RCON"] = json!({ "type": "secret", "value": "hunter2" });
    refused_group(&rest, "vars", bad, "variables.RCON.value").await?;

    create_group(&rest, "vars", spec).await?;
    let instance = running(cluster, &["vars-1"]).await?.remove(0);
    let dir = cluster.dir.join("node-1-servers").join("vars-1");
    let properties = std::fs::read_to_string(dir.join("server.properties"))?;
    ensure!(
        properties
            == format!("rcon.password={rcon}\nmax-players=120\npvp=false\nquery.port=25575\n"),
        "{properties}"
    );
    let bot = std::fs::read_to_string(dir.join("bot.yml"))?;
    ensure!(bot.contains(&token), "{bot}");
    let environ = std::fs::read(format!("/proc/{}/environ", reported_pid(&instance)))?;
    let environ = String::from_utf8_lossy(&environ);
    ensure!(
        environ.split('\0').any(|v| v == format!("RCON_ENV={rcon}"))
            && environ.split('\0').any(|v| v == "MOTD_ENV=Welcome (vars)"),
        "the server's environment: {environ}"
    );

    // The API shows where a secret comes from, never its value.
    let (_, group) = rest.get("/groups/vars").await?;
    ensure!(
        group["spec"]["variables"]["RCON"]
            == json!({ "type": "secret", "from": "env://RCON_PASSWORD" }),
        "{group}"
    );
    // Nothing kept anywhere holds a secret's value: no record, no backup, no log line.
    let (status, backup) = rest.post("/backups", json!({})).await?;
    ensure!(status == 201, "{status} {backup}");
    let id = backup["id"].as_str().context("the backup's id")?;
    let archive = rest.get_bytes(&format!("/backups/{id}/archive")).await?.1;
    let mut kept = vec![
        ("MongoDB".to_owned(), whole_database(cluster).await?),
        ("the backup".to_owned(), unpacked(&archive)?),
        ("the API's answer".to_owned(), group.to_string()),
    ];
    let processes = [&scheduler, &api, &fleet.ca]
        .into_iter()
        .chain(&fleet.gateways)
        .chain(&fleet.daemons);
    for proc in processes {
        kept.push((format!("{}'s log", proc.name), proc.log_text()));
    }
    for (place, text) in kept {
        ensure!(!text.is_empty(), "{place} is empty");
        ensure!(
            !text.contains(&rcon) && !text.contains(&token),
            "{place} holds a secret's value"
        );
    }

    // A secret whose source is missing on the scheduler's host: not started, naming the source.
    let mut missing = spec_of("nosecret", 1, &[])?;
    missing["variables"] =
        json!({ "KEY": { "type": "secret", "from": "env://PREXOR_TEST_UNSET_SECRET" } });
    create_group(&rest, "nosecret", missing).await?;
    let ended = wait_state(cluster, "instances", "nosecret-1", "CRASHED").await?;
    let reason = ended.get_str("reason").unwrap_or_default();
    ensure!(
        reason.contains(
            "secret KEY (env://PREXOR_TEST_UNSET_SECRET): PREXOR_TEST_UNSET_SECRET is not set"
        ),
        "{ended:?}"
    );

    stop_all([&mut api], Duration::from_secs(20)).await?;
    fleet.stop_with(&mut scheduler).await
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

async fn scaling_on_load(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut fleet, mut replicas, mut api, rest) = stack(cluster, 2).await?;

    let mut spec = spec_of("load", 1, &[])?;
    spec["scaling"] = json!("DYNAMIC");
    spec["maxInstances"] = json!(4);
    spec["dynamic"] = json!({
        "load": { "metric": "mspt", "scaleUpAt": 40, "scaleDownAt": 40 },
        "step": 2, "cooldownSeconds": 5, "scaleDownDelaySeconds": 2,
    });
    // Thresholds that do not make sense for their metric are refused by field.
    refused_group(&rest, "load", spec.clone(), "dynamic.load.scaleDownAt").await?;
    spec["dynamic"]["load"]["scaleDownAt"] = json!(15);
    create_group(&rest, "load", spec).await?;
    let first = running(cluster, &["load-1"]).await?.remove(0);
    let report = async |instance: &mongodb::bson::Document, mspt: f64| {
        report_metrics(
            cluster,
            &api,
            instance,
            json!({ "mspt": mspt, "tps": 19.5 }),
        )
        .await
    };

    // Busy (55 ms a tick against 40): two more at once; then (within the cooldown) the load
    // spreads and sits between the thresholds.
    report(&first, 55.0).await?;
    let three = running(cluster, &["load-1", "load-2", "load-3"]).await?;
    for instance in &three {
        report(instance, 30.0).await?;
    }
    let (_, group) = rest.get("/groups/load").await?;
    let scaling = &group["status"]["scaling"];
    ensure!(
        scaling["metric"] == "mspt"
            && scaling["target"] == 3
            && scaling["reading"]
                .as_str()
                .is_some_and(|r| r.contains("busy at 40")),
        "{group}"
    );
    // The holder decided it: kill it; its successor takes the decision on from group_state.
    let holder = replicas
        .iter()
        .position(|s| s.log_text().contains("scaling") && s.log_text().contains("load"))
        .context("the holder logged its scaling")?;
    let mut killed = replicas.remove(holder);
    killed.kill();
    // Idle (5 ms a tick on all three): after the delay, two fewer (never below min).
    for instance in &three {
        report(instance, 5.0).await?;
    }
    wait_state(cluster, "instances", "load-3", "STOPPED").await?;
    wait_state(cluster, "instances", "load-2", "STOPPED").await?;
    // Decided by the successor (its token), which then holds at the minimum.
    let state = get_doc(cluster, "group_state", "load").await?;
    ensure!(
        state.get_i64("scaleTarget")? == 1
            && state.get_document("_fence")?.get_i64("token")? >= 2
            && state
                .get_str("decision")
                .is_ok_and(|d| d.contains("scaled from 3 to 1") || d == "idle, at minInstances (1)"),
        "{state:?}"
    );
    let one = get_doc(cluster, "instances", "load-1").await?;
    ensure!(
        one.get_str("state")? == "RUNNING",
        "load-1 keeps running: {one:?}"
    );

    stop_all([&mut api], Duration::from_secs(20)).await?;
    let mut survivor = replicas.remove(0);
    fleet.stop_with(&mut survivor).await
}

async fn explain(cluster: &Cluster) -> anyhow::Result<()> {
    let password = cluster.bootstrap_admin("admin")?;
    let mut fleet = nodes(cluster, &["node-1"]).await?;
    let mut scheduler = schedulers(cluster, 1).await?.remove(0);
    let mut a = cluster.service("api", "api-1", "")?;
    let mut b = cluster.service("api", "api-2", "")?;
    a.wait_ready(READY_WITHIN).await?;
    b.wait_ready(READY_WITHIN).await?;
    let token = a.login("admin", &password).await?;
    let (rest, other) = (a.rest(&token), b.rest(&token));

    // No node carries zone=mars: nothing is placed, and every replica says why.
    let mut spec = spec_of("mars", 1, &[])?;
    spec["affinity"] = json!({ "zone": "mars" });
    create_group(&rest, "mars", spec.clone()).await?;
    let explained = eventually("the holder's verdict on node-1", WITHIN, async || {
        let (status, body) = other.get("/groups/mars/explain").await?;
        ensure!(status == 200, "{status} {body}");
        Ok((!body["placement"].is_null()).then_some(body))
    })
    .await?;
    ensure!(
        explained["wanted"] == 1
            && explained["active"] == 0
            && explained["scaling"] == "STATIC: keeps exactly minInstances (1); 0 active"
            && explained["placement"]["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("placed 0 of 1: no node can take an instance"))
            && explained["placement"]["nodes"]
                == json!([{ "node": "node-1", "eligible": false, "reason": "lacks the affinity label zone=mars" }]),
        "{explained}"
    );
    // The label the node has: placed, and the explanation says so.
    spec["affinity"] = json!({ "zone": "test" });
    let (status, body) = rest
        .put("/groups/mars", json!({ "spec": spec, "revision": 1 }))
        .await?;
    ensure!(status == 200, "{status} {body}");
    running(cluster, &["mars-1"]).await?;
    let explained = eventually("the placement explained", WITHIN, async || {
        let (_, body) = rest.get("/groups/mars/explain").await?;
        Ok((body["placement"]["outcome"] == "placed all 1 missing instances").then_some(body))
    })
    .await?;
    ensure!(explained["active"] == 1, "{explained}");
    let (status, body) = rest.get("/groups/nope/explain").await?;
    ensure!(status == 404, "{status} {body}");

    stop_all([&mut a, &mut b], Duration::from_secs(20)).await?;
    fleet.stop_with(&mut scheduler).await
}

/// The ids of group `group`'s live instances running spec `hash`, and how many of them run.
async fn on_spec(
    cluster: &Cluster,
    group: &str,
    hash: &str,
) -> anyhow::Result<(Vec<String>, usize)> {
    let docs = find_docs(
        cluster,
        "instances",
        doc! { "group": group, "specHash": hash, "state": { "$nin": ["STOPPED", "CRASHED"] } },
    )
    .await?;
    let running = docs
        .iter()
        .filter(|d| d.get_str("state") == Ok("RUNNING"))
        .count();
    let ids = docs
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect();
    Ok((ids, running))
}

async fn canary(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut fleet, mut replicas, mut api, rest) = stack(cluster, 2).await?;
    let spec = spec_of("canary", 3, &[])?;
    create_group(&rest, "canary", spec.clone()).await?;
    running(cluster, &["canary-1", "canary-2", "canary-3"]).await?;

    // A gate that cannot pass before it times out is refused before anything changes.
    let mut next = spec.clone();
    next["env"]["RELEASE"] = json!("2");
    let (status, body) = rest
        .post(
            "/groups/canary/deployments",
            json!({ "spec": next, "strategy": "CANARY", "canary": { "healthySeconds": 60, "timeoutSeconds": 30 } }),
        )
        .await?;
    ensure!(
        status == 400 && body["details"]["fields"][0]["field"] == "canary.timeoutSeconds",
        "{status} {body}"
    );
    ensure!(
        get_doc(cluster, "groups", "canary")
            .await?
            .get_i64("revision")?
            == 1
    );

    let deployment = deploy(
        &rest,
        "canary",
        json!({ "spec": next, "strategy": "CANARY", "canary": { "instances": 1, "minTps": 18, "healthySeconds": 3, "timeoutSeconds": 120 } }),
    )
    .await?;
    let id = deployment["id"].as_str().context("id")?.to_owned();
    let target = deployment["targetSpecHash"]
        .as_str()
        .context("target")?
        .to_owned();
    // One canary, and no more while it has not reported.
    let canary_id = eventually("one canary running the new spec", WITHIN, async || {
        let (ids, running) = on_spec(cluster, "canary", &target).await?;
        Ok((running == 1).then(|| ids[0].clone()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ids, _) = on_spec(cluster, "canary", &target).await?;
    ensure!(
        ids == [canary_id.clone()],
        "only the canary is updated: {ids:?}"
    );
    let (_, shown) = rest.get(&format!("/deployments/{id}")).await?;
    ensure!(
        shown["gate"]
            .as_str()
            .is_some_and(|g| g.contains("has not reported ready")),
        "{shown}"
    );
    // The canary reports healthy; its holder is killed during the healthy window, and the
    // successor passes the gate and rolls the rest.
    let instance = get_doc(cluster, "instances", &canary_id).await?;
    let server = api.rest(&instance_token(cluster, &instance).await?);
    server.post("/workload/ready", json!({})).await?;
    let (status, _) = server
        .post("/workload/metrics", json!({ "tps": 19.8 }))
        .await?;
    ensure!(status == 204);
    eventually("the gate counting", WITHIN, async || {
        let (_, shown) = rest.get(&format!("/deployments/{id}")).await?;
        Ok((!shown["gateSinceMs"].is_null()).then_some(()))
    })
    .await?;
    let holder = replicas
        .iter()
        .position(|s| s.log_text().contains("canary gate"))
        .context("the holder logged the gate")?;
    replicas.remove(holder).kill();
    // The canary keeps reporting (its report must stay fresh) while the rest rolls.
    let done = eventually("the deployment done", Duration::from_secs(90), async || {
        let _ = server
            .post("/workload/metrics", json!({ "tps": 19.8 }))
            .await;
        let (_, shown) = rest.get(&format!("/deployments/{id}")).await?;
        Ok((shown["state"] == "DONE").then_some(shown))
    })
    .await?;
    ensure!(
        !done["canaryPassedAtMs"].is_null()
            && done["gate"]
                .as_str()
                .is_some_and(|g| g.starts_with("passed: canaries"))
            && !done["rolledBack"].as_bool().unwrap_or(true),
        "{done}"
    );
    let (ids, running) = on_spec(cluster, "canary", &target).await?;
    ensure!(ids.len() == 3 && running == 3, "{ids:?}");

    // A canary that stays below the TPS floor: the deployment rolls itself back.
    let mut bad = next.clone();
    bad["env"]["RELEASE"] = json!("3");
    let deployment = deploy(
        &rest,
        "canary",
        json!({ "spec": bad, "strategy": "CANARY", "canary": { "minTps": 18, "healthySeconds": 2, "timeoutSeconds": 10 } }),
    )
    .await?;
    let id = deployment["id"].as_str().context("id")?.to_owned();
    let bad_hash = deployment["targetSpecHash"]
        .as_str()
        .context("target")?
        .to_owned();
    let slow = eventually("the second canary running", WITHIN, async || {
        let (ids, running) = on_spec(cluster, "canary", &bad_hash).await?;
        Ok((running == 1).then(|| ids[0].clone()))
    })
    .await?;
    let instance = get_doc(cluster, "instances", &slow).await?;
    let server = api.rest(&instance_token(cluster, &instance).await?);
    server.post("/workload/ready", json!({})).await?;
    let rolled = eventually(
        "the automatic rollback",
        Duration::from_secs(60),
        async || {
            let _ = server
                .post("/workload/metrics", json!({ "tps": 5.0 }))
                .await;
            let (_, shown) = rest.get(&format!("/deployments/{id}")).await?;
            Ok((shown["state"] == "DONE").then_some(shown))
        },
    )
    .await?;
    ensure!(
        rolled["rolledBack"] == true
            && rolled["rolledBackBy"] == "canary gate"
            && rolled["targetSpecHash"] == json!(target)
            && rolled["gate"]
                .as_str()
                .is_some_and(|g| g.contains("runs at 5 TPS, below 18")),
        "{rolled}"
    );
    let group = get_doc(cluster, "groups", "canary").await?;
    ensure!(
        group
            .get_document("spec")?
            .get_document("env")?
            .get_str("RELEASE")?
            == "2",
        "the group runs the previous spec again: {group:?}"
    );
    let (ids, _) = on_spec(cluster, "canary", &target).await?;
    ensure!(
        ids.len() == 3,
        "every instance back on the previous spec: {ids:?}"
    );

    stop_all([&mut api], Duration::from_secs(20)).await?;
    let mut survivor = replicas.remove(0);
    fleet.stop_with(&mut survivor).await
}

/// Every entry of a tar.gz archive: its path and, for a file, its bytes.
fn entries(archive: &[u8]) -> anyhow::Result<std::collections::BTreeMap<String, Option<Vec<u8>>>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut found = std::collections::BTreeMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let content = if entry.header().entry_type().is_file() {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            Some(bytes)
        } else {
            None
        };
        found.insert(path.trim_end_matches('/').to_owned(), content);
    }
    Ok(found)
}

async fn save_to_template(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut fleet, mut replicas, mut api, rest) = stack(cluster, 1).await?;
    let mut scheduler = replicas.remove(0);
    create_group(&rest, "hand", spec_of("hand", 1, &[])?).await?;
    running(cluster, &["hand-1"]).await?;

    // An operator configured the server by hand.
    let dir = cluster.dir.join("node-1-servers").join("hand-1");
    std::fs::create_dir_all(dir.join("world/region"))?;
    std::fs::write(dir.join("world/level.dat"), "level")?;
    std::fs::write(dir.join("world/region/r.0.0.mca"), vec![7u8; 100_000])?;
    std::fs::create_dir_all(dir.join("plugins/Essentials"))?;
    std::fs::write(dir.join("plugins/Essentials/config.yml"), "spawn: hub\n")?;
    std::fs::write(dir.join("ops.json"), "[]")?;
    std::os::unix::fs::symlink("/etc/passwd", dir.join("world/passwd"))?;
    let save =
        |template: &str, paths: serde_json::Value| json!({ "template": template, "paths": paths });
    let path = "/instances/hand-1/save-to-template";

    // Bad input is refused naming the field; an unknown path by the node, naming it; nothing
    // is created.
    for (body, field) in [
        (save("saved", json!(["world", "../etc"])), "paths[1]"),
        (save("saved", json!([])), "paths"),
        (save("Not A Name", json!(["world"])), "template"),
    ] {
        let (status, refused) = rest.post(path, body).await?;
        ensure!(
            status == 400 && refused["details"]["fields"][0]["field"] == field,
            "{field}: {status} {refused}"
        );
    }
    let (status, _) = rest
        .post(
            "/instances/nope-1/save-to-template",
            save("saved", json!(["world"])),
        )
        .await?;
    ensure!(status == 404, "an unknown instance: {status}");
    let (status, refused) = rest
        .post(path, save("saved", json!(["world", "nether"])))
        .await?;
    ensure!(
        status == 409
            && refused["message"]
                .as_str()
                .is_some_and(|m| m.contains("nether does not exist")),
        "{status} {refused}"
    );
    let (status, _) = rest.get("/templates/saved").await?;
    ensure!(status == 404, "nothing saved by a refused capture");

    // Saved: exactly the paths asked for, without the symlink, as the template's version 1.
    let (status, saved) = rest
        .post(
            path,
            save("saved", json!(["world", "plugins/Essentials/config.yml"])),
        )
        .await?;
    ensure!(status == 201 && saved["current"] == 1, "{status} {saved}");
    let (status, archive) = rest
        .get_bytes("/templates/saved/versions/1/content")
        .await?;
    ensure!(status == 200);
    let found = entries(&archive)?;
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    ensure!(
        names
            == [
                "plugins/Essentials/config.yml",
                "world",
                "world/level.dat",
                "world/region",
                "world/region/r.0.0.mca",
            ],
        "{names:?}"
    );
    ensure!(
        found["world/level.dat"].as_deref() == Some(&b"level"[..])
            && found["world/region/r.0.0.mca"]
                .as_ref()
                .is_some_and(|b| b.len() == 100_000 && b.iter().all(|&x| x == 7))
    );
    ensure!(
        prexor_acceptance::count_docs(cluster, "captures", doc! {}).await? == 0,
        "no capture left open"
    );
    // The same files again: the same bytes, nothing changes.
    let (status, again) = rest
        .post(
            path,
            save("saved", json!(["world", "plugins/Essentials/config.yml"])),
        )
        .await?;
    ensure!(status == 200 && again["current"] == 1, "{status} {again}");

    // A new group starts from it.
    let mut spec = spec_of("copy", 1, &[])?;
    spec["templates"] = json!([{ "name": "saved" }]);
    create_group(&rest, "copy", spec).await?;
    running(cluster, &["copy-1"]).await?;
    let copied = cluster.dir.join("node-1-servers").join("copy-1");
    ensure!(
        std::fs::read_to_string(copied.join("plugins/Essentials/config.yml"))? == "spawn: hub\n"
            && std::fs::read(copied.join("world/region/r.0.0.mca"))?.len() == 100_000
            && !copied.join("ops.json").exists()
    );

    api.stop(Duration::from_secs(20)).await?;
    fleet.stop_with(&mut scheduler).await
}
