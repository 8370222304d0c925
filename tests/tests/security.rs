//! Privilege and credentials through the real API (docs/security.md): nobody grants, changes or
//! removes more than they hold; the last admin survives concurrent demotions; credentials are
//! bound to a user's id, a token never outlives the token that made it, and a stream ends when
//! its caller loses the right to it; console input and group names are checked.

use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{
    Cluster, Proc, Rest, group_spec, scenario_tests, tar_gz_entries, tar_gz_mode,
};
use prexor_testkit::eventually;
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery";

/// An api replica and the bootstrap admin's REST client.
async fn api(cluster: &Cluster) -> anyhow::Result<(Proc, Rest)> {
    let password = cluster.bootstrap_admin("admin")?;
    let mut api = cluster.service("api", "api-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    let admin = api.rest(&api.login("admin", &password).await?);
    Ok((api, admin))
}

async fn create_user(admin: &Rest, name: &str, roles: &[&str]) -> anyhow::Result<()> {
    let (status, body) = admin
        .post(
            "/users",
            json!({ "username": name, "password": PASSWORD, "roles": roles }),
        )
        .await?;
    ensure!(status == 201, "creating {name}: {status} {body}");
    Ok(())
}

fn expect(status: u16, body: &Value, wanted: u16, what: &str) -> anyhow::Result<()> {
    ensure!(
        status == wanted,
        "{what}: expected {wanted}, got {status} {body}"
    );
    Ok(())
}

async fn holds_no_more(api: &Proc, admin: &Rest) -> anyhow::Result<()> {
    let (status, body) = admin
        .post(
            "/roles",
            json!({ "name": "user-manager", "permissions": ["users:read", "users:write"] }),
        )
        .await?;
    expect(status, &body, 201, "a narrow role")?;
    create_user(admin, "mallory", &["user-manager"]).await?;
    let mallory = api.rest(&api.login("mallory", PASSWORD).await?);

    // The reproduced escalation: granting oneself admin.
    let (status, body) = mallory
        .patch("/users/mallory", json!({ "roles": ["admin"] }))
        .await?;
    expect(status, &body, 403, "PATCH self roles [admin]")?;
    let (_, me) = mallory.get("/auth/me").await?;
    ensure!(
        !me["permissions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p == "*"),
        "{me}"
    );
    // Creating users with more than one holds, or changing users who hold more.
    for roles in [json!(["admin"]), json!(["viewer"])] {
        let (status, body) = mallory
            .post(
                "/users",
                json!({ "username": "eve", "password": PASSWORD, "roles": roles }),
            )
            .await?;
        expect(status, &body, 403, &format!("creating a user with {roles}"))?;
    }
    let (status, body) = mallory
        .post(
            "/users",
            json!({ "username": "eve", "password": PASSWORD, "roles": ["user-manager"] }),
        )
        .await?;
    expect(status, &body, 201, "creating a user within what one holds")?;
    for (change, what) in [
        (
            json!({ "password": "a brand new password" }),
            "reset admin's password",
        ),
        (json!({ "disabled": true }), "disable admin"),
        (json!({ "roles": ["viewer"] }), "demote admin"),
    ] {
        let (status, body) = mallory.patch("/users/admin", change).await?;
        expect(status, &body, 403, what)?;
    }
    let (status, body) = mallory.delete("/users/admin").await?;
    expect(status, &body, 403, "delete admin")?;
    // Resetting another's password takes users:* (or admin), even for a peer.
    let reset = json!({ "password": "a brand new password" });
    for (caller, user, wanted, what) in [
        (
            &mallory,
            "eve",
            403,
            "reset a peer's password without users:*",
        ),
        (
            &mallory,
            "mallory",
            400,
            "reset one's own password without the current one",
        ),
        (admin, "eve", 200, "an admin resets eve's password"),
    ] {
        let (status, body) = caller
            .patch(&format!("/users/{user}"), reset.clone())
            .await?;
        expect(status, &body, wanted, what)?;
    }
    let (_, page) = admin.get("/audit?limit=20").await?;
    ensure!(
        page["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["action"] == "user.password-reset" && e["target"] == "eve"),
        "the reset is audited: {page}"
    );
    Ok(())
}

async fn admins(admin: &Rest) -> anyhow::Result<Vec<String>> {
    let (status, users) = admin.get("/users").await?;
    ensure!(status == 200, "{status} {users}");
    Ok(users["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| {
            u["disabled"] != true
                && u["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r == "admin")
        })
        .filter_map(|u| u["username"].as_str().map(str::to_owned))
        .collect())
}

/// Two admins demote themselves at the same moment, six times: one of them always stays.
async fn last_admin_under_concurrency(api: &Proc, admin: &Rest) -> anyhow::Result<()> {
    create_user(admin, "ann", &["admin"]).await?;
    create_user(admin, "bob", &["admin"]).await?;
    let (status, body) = admin
        .patch("/users/admin", json!({ "roles": ["viewer"] }))
        .await?;
    expect(status, &body, 200, "the bootstrap admin steps down")?;
    let mut ann = api.rest(&api.login("ann", PASSWORD).await?);
    let mut bob = api.rest(&api.login("bob", PASSWORD).await?);
    for round in 0..6 {
        let change = if round % 2 == 0 {
            json!({ "roles": ["viewer"] })
        } else {
            json!({ "disabled": true })
        };
        let (a, b) = tokio::join!(
            ann.patch("/users/ann", change.clone()),
            bob.patch("/users/bob", change.clone()),
        );
        let (a, b) = (a?, b?);
        let mut statuses = [a.0, b.0];
        statuses.sort();
        ensure!(
            statuses == [200, 409],
            "round {round}: one demotion passes, the other is refused: {a:?} {b:?}"
        );
        // The one refused is the last admin; it restores the other for the next round (whose
        // sessions the change ended).
        let (kept, other) = if a.0 == 409 {
            (&ann, "bob")
        } else {
            (&bob, "ann")
        };
        let left = admins(kept).await?;
        ensure!(
            left.len() == 1 && left[0] != other,
            "round {round}: admins left {left:?}"
        );
        let restore = json!({ "roles": ["admin"], "disabled": false });
        let (status, body) = kept.patch(&format!("/users/{other}"), restore).await?;
        expect(status, &body, 200, "restoring the other admin")?;
        let relogged = api.rest(&api.login(other, PASSWORD).await?);
        if other == "ann" {
            ann = relogged;
        } else {
            bob = relogged;
        }
    }
    Ok(())
}

async fn bound_credentials(api: &Proc, admin: &Rest) -> anyhow::Result<()> {
    create_user(admin, "carol", &["operator"]).await?;
    let carol = api.rest(&api.login("carol", PASSWORD).await?);
    let (status, token) = carol
        .post("/auth/tokens", json!({ "name": "ci", "expiresIn": "1h" }))
        .await?;
    expect(status, &token, 201, "carol's token")?;
    let secret = token["token"].as_str().context("token")?.to_owned();
    let limit = token["expiresAtMs"].as_i64().context("expiry")?;
    let via_token = api.rest(&secret);

    // A token makes no token that outlives it; by default its children end with it.
    let (status, body) = via_token
        .post(
            "/auth/tokens",
            json!({ "name": "longer", "expiresIn": "2h" }),
        )
        .await?;
    expect(status, &body, 403, "a token minting a longer-lived token")?;
    let (status, child) = via_token
        .post("/auth/tokens", json!({ "name": "child" }))
        .await?;
    expect(status, &child, 201, "a token minting a token")?;
    ensure!(
        child["expiresAtMs"].as_i64().is_some_and(|at| at <= limit),
        "the child ends with its parent: {child}"
    );

    // A stream ends once its caller loses the right to it.
    let mut stream = carol.sse("/events", None).await?;
    let (status, body) = admin
        .patch("/users/carol", json!({ "disabled": true }))
        .await?;
    expect(status, &body, 200, "disabling carol")?;
    let ended = loop {
        match stream.next(Duration::from_secs(20)).await {
            Ok(event) if event.event == "error" => break event.data,
            Ok(_) => continue,
            Err(err) => break err.to_string(),
        }
    };
    ensure!(
        ended.contains("ended") || ended.contains("disabled"),
        "the stream of a disabled user ended: {ended}"
    );

    // Deleting carol deletes her tokens; a new carol gets neither them nor the old session.
    let (status, body) = admin.delete("/users/carol").await?;
    expect(status, &body, 204, "deleting carol")?;
    create_user(admin, "carol", &["operator"]).await?;
    for (rest, what) in [(&via_token, "the old token"), (&carol, "the old session")] {
        let (status, body) = rest.get("/groups").await?;
        expect(
            status,
            &body,
            401,
            &format!("{what} after carol was created again"),
        )?;
    }
    let (_, tokens) = admin.get("/auth/tokens?owner=carol").await?;
    ensure!(
        tokens["items"].as_array().is_some_and(Vec::is_empty),
        "carol's tokens went with her: {tokens}"
    );
    Ok(())
}

/// A backup archive with `edit` applied to its files and the manifest's hashes and counts redone
/// to match — what someone without the cluster's MAC key can make.
fn edited_archive(
    bytes: &[u8],
    edit: impl Fn(&mut std::collections::BTreeMap<String, Vec<u8>>),
) -> anyhow::Result<Vec<u8>> {
    let mut files: std::collections::BTreeMap<String, Vec<u8>> =
        tar_gz_entries(bytes)?.into_iter().collect();
    edit(&mut files);
    let mut manifest: Value = serde_json::from_slice(&files["manifest.json"])?;
    for (path, content) in &files {
        if let Some(name) = path
            .strip_prefix("collections/")
            .and_then(|p| p.strip_suffix(".jsonl"))
        {
            manifest["collections"][name] = json!({
                "count": String::from_utf8_lossy(content).lines().count(),
                "sha256": prexor_domain::sha256_hex(content),
            });
        }
    }
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest)?,
    );
    tar_gz_mode(&files, 0o600)
}

/// A REST client signed in as `user` on the same api replica as `admin`.
async fn cluster_api_rest(admin: &Rest, user: &str) -> anyhow::Result<Rest> {
    let (status, session) = admin
        .with_token("")
        .post(
            "/auth/login",
            json!({ "username": user, "password": PASSWORD }),
        )
        .await?;
    expect(status, &session, 200, &format!("signing in as {user}"))?;
    Ok(admin.with_token(session["token"].as_str().context("token")?))
}

async fn upload(admin: &Rest, id: &str, archive: Vec<u8>) -> anyhow::Result<Value> {
    let (status, body) = admin
        .put_bytes(&format!("/backups/{id}/archive"), archive)
        .await?;
    expect(status, &body, 201, &format!("uploading {id}"))?;
    Ok(body)
}

/// Archives carry the cluster's MAC: one edited elsewhere restores no users, roles, tokens or
/// certificates; a group a restore would bring back is checked like an API write; and a restore
/// never reopens sessions ended since the backup.
async fn forged_backups(cluster: &Cluster, admin: &Rest) -> anyhow::Result<()> {
    create_user(admin, "dave", &["viewer"]).await?;
    let (status, body) = admin
        .post("/groups", json!({ "name": "hub", "spec": group_spec(0)? }))
        .await?;
    expect(status, &body, 201, "a group to back up")?;
    let (status, backup) = admin.post("/backups", json!({})).await?;
    expect(status, &backup, 201, "a backup")?;
    let id = backup["id"].as_str().context("id")?.to_owned();
    let (status, original) = admin.get_bytes(&format!("/backups/{id}/archive")).await?;
    ensure!(status == 200, "downloading {id}: {status}");

    // A backup archive is not a template layer: no group's servers get to unpack it.
    let archive_hash = backup["hash"].as_str().context("the archive's hash")?;
    let mut spec = group_spec(0)?;
    spec["templates"] = json!([{ "hash": archive_hash }]);
    let (status, body) = admin
        .post("/groups", json!({ "name": "thief", "spec": spec }))
        .await?;
    expect(
        status,
        &body,
        400,
        "a group naming a backup archive as its layer",
    )?;
    ensure!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("not the layer of any template"),
        "{body}"
    );
    // Where an archive is stored is for those who may read backups.
    create_user(admin, "olga", &["operator"]).await?;
    let olga = cluster_api_rest(admin, "olga").await?;
    let (status, page) = olga.get("/audit?action=backup.create").await?;
    expect(status, &page, 200, "an operator reads the audit log")?;
    ensure!(
        page["entries"].as_array().is_some_and(|e| !e.is_empty())
            && !page.to_string().contains(archive_hash),
        "the archive's hash is hidden from a reader without backups:read: {page}"
    );

    // An intruder added to the users, the hashes redone: uploaded, but not the cluster's.
    let forged = edited_archive(&original, |files| {
        let users = files.entry("collections/users.jsonl".into()).or_default();
        users.extend(
            br#"{"_id":"intruder","userId":"x","roles":["admin"],"passwordHash":"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$YWFh","disabled":false,"createdAtMs":{"$numberLong":"1"}}"#,
        );
        users.push(b'\n');
    })?;
    let uploaded = upload(admin, "forged", forged).await?;
    ensure!(uploaded["madeByThisCluster"] == false, "{uploaded}");
    let (status, plan) = admin
        .post(
            "/backups/forged/restore",
            json!({ "dryRun": true, "force": true }),
        )
        .await?;
    expect(status, &plan, 200, "planning the forged restore")?;
    ensure!(
        plan["plan"]["identity"]
            .as_str()
            .unwrap_or("")
            .contains("not restored"),
        "{plan}"
    );
    // The cluster's own archive passes through the same upload untouched.
    let own = upload(admin, "own-copy", original.clone()).await?;
    ensure!(own["madeByThisCluster"] == true, "{own}");

    // dave's password is reset after the backup: his sessions from before stay ended even when
    // the backup comes back.
    let reset = json!({ "password": "dave's second password" });
    let (status, body) = admin.patch("/users/dave", reset).await?;
    expect(status, &body, 200, "resetting dave's password")?;
    let users = cluster
        .stores
        .mongo()
        .await?
        .collection::<mongodb::bson::Document>("users");
    let cut_off = |d: Option<mongodb::bson::Document>| {
        d.and_then(|d| d.get_i64("sessionsValidAfterMs").ok())
            .unwrap_or(0)
    };
    let before_restore = cut_off(
        users
            .find_one(mongodb::bson::doc! { "_id": "dave" })
            .await?,
    );
    let (status, body) = admin
        .post("/backups/forged/restore", json!({ "force": true }))
        .await?;
    expect(status, &body, 200, "restoring the forged archive")?;
    let (status, body) = admin.get("/users/intruder").await?;
    expect(status, &body, 404, "the intruder from a forged archive")?;
    let (status, body) = admin.post("/backups/own-copy/restore", json!({})).await?;
    expect(status, &body, 200, "restoring the cluster's own archive")?;
    let after_restore = cut_off(
        users
            .find_one(mongodb::bson::doc! { "_id": "dave" })
            .await?,
    );
    ensure!(
        after_restore >= before_restore,
        "a restore rolled dave's session cut-off back from {before_restore} to {after_restore}"
    );

    // A group the API would refuse is refused in a restore too, with nothing changed.
    let invalid = edited_archive(&original, |files| {
        let groups = files.get_mut("collections/groups.jsonl").expect("groups");
        let text = String::from_utf8_lossy(groups)
            .replace(
                r#""memoryMb":{"$numberLong":"256"}"#,
                r#""memoryMb":{"$numberLong":"1"}"#,
            )
            .replace(
                r#""memoryMb":{"$numberInt":"256"}"#,
                r#""memoryMb":{"$numberInt":"1"}"#,
            );
        *groups = text.into_bytes();
    })?;
    upload(admin, "invalid-group", invalid).await?;
    let (status, body) = admin
        .post("/backups/invalid-group/restore", json!({ "force": true }))
        .await?;
    expect(status, &body, 422, "restoring an invalid group")?;
    ensure!(
        body["message"].as_str().unwrap_or("").contains("memoryMb"),
        "{body}"
    );
    Ok(())
}

/// Valkey's connected clients now.
async fn valkey_clients(cluster: &Cluster) -> anyhow::Result<i64> {
    let client = redis::Client::open(cluster.stores.valkey_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .context("connected_clients in INFO")
}

/// Streams are capped per caller and watched consoles share one Valkey connection.
async fn capped_streams(cluster: &Cluster, api: &Proc, admin: &Rest) -> anyhow::Result<()> {
    create_user(admin, "vic", &["viewer"]).await?;
    let vic = api.rest(&api.login("vic", PASSWORD).await?);
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(vic.sse("/events", None).await?);
    }
    let (status, body) = vic.get("/events").await?;
    expect(status, &body, 429, "a ninth stream of one caller")?;
    ensure!(body["code"] == "TOO_MANY_STREAMS", "{body}");
    drop(open.pop());
    let reopened = eventually(
        "a stream's place freed",
        Duration::from_secs(10),
        async || Ok(vic.sse("/events", None).await.ok()),
    )
    .await?;
    drop(reopened);
    drop(open);

    // Consoles of several instances, watched by several callers, through one connection.
    let instances = cluster
        .stores
        .mongo()
        .await?
        .collection::<mongodb::bson::Document>("instances");
    for k in 1..=4 {
        instances
            .insert_one(mongodb::bson::doc! { "_id": format!("watched-{k}"), "group": "watched", "state": "RUNNING" })
            .await?;
    }
    let first = admin.sse("/instances/watched-1/console", None).await?;
    let before = valkey_clients(cluster).await?;
    let mut consoles = vec![first];
    for k in 1..=4 {
        for rest in [admin, &vic] {
            consoles.push(
                rest.sse(&format!("/instances/watched-{k}/console"), None)
                    .await?,
            );
        }
    }
    let after = valkey_clients(cluster).await?;
    ensure!(
        after <= before,
        "nine open consoles need no more Valkey connections than one: {before} before, {after} after"
    );
    Ok(())
}

async fn checked_input(admin: &Rest) -> anyhow::Result<()> {
    for line in ["say hi\rstop", "say \u{1b}[2J"] {
        let (status, body) = admin
            .post("/instances/lobby-1/command", json!({ "command": line }))
            .await?;
        expect(status, &body, 400, &format!("console input {line:?}"))?;
        ensure!(
            body["message"].as_str().unwrap_or("").contains("control"),
            "{body}"
        );
    }
    let long = "g".repeat(57);
    let (status, body) = admin
        .post("/groups", json!({ "name": long, "spec": group_spec(0)? }))
        .await?;
    expect(
        status,
        &body,
        400,
        "a group name too long for its instance ids",
    )?;
    ensure!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("instance ids"),
        "{body}"
    );
    Ok(())
}

async fn security(cluster: &Cluster) -> anyhow::Result<()> {
    let (mut api, admin) = api(cluster).await?;
    holds_no_more(&api, &admin).await?;
    bound_credentials(&api, &admin).await?;
    checked_input(&admin).await?;
    forged_backups(cluster, &admin).await?;
    capped_streams(cluster, &api, &admin).await?;
    last_admin_under_concurrency(&api, &admin).await?;
    api.stop(EXIT_WITHIN).await
}

scenario_tests! {
    nobody_grants_changes_or_removes_more_than_they_hold: security,
}
