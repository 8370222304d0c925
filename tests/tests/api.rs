//! The REST API with two replicas: any replica answers any request, sessions, revocations,
//! lockouts and events are shared through the stores; permissions hold; bad input gets a clear
//! 4xx. And operator actions through the API reach real instances: stop, console input and
//! output, manual starts, group deletion.

use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{
    Cluster, Proc, Rest, create_group, fields_of, get_doc, group_spec, refused_group,
    reported_state, run_ok, running, running_again, scenario_tests, stop_all, system, tar_gz,
    wait_state,
};
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const EVENT_WITHIN: Duration = Duration::from_secs(10);

/// A tar.gz with one entry whose name is written as is (tar::Builder refuses `..`).
fn tar_gz_with_raw_path(path: &str, content: &str) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, content.as_bytes())?;
    Ok(builder.into_inner()?.finish()?)
}

/// How soon a change of a session, user or token on one replica holds on the other: its notice
/// travels through the event stream (each replica keeps callers for a minute in this test, so
/// only the notice can end them this soon).
const NOTICE_WITHIN: Duration = Duration::from_secs(1);
const KEEP_CALLERS: &str = "[api]\ntls = \"off\"\ncallerCacheTtl = \"1m\"\n";

/// `GET path` as `rest` once it is refused (not 200): at once, or within [`NOTICE_WITHIN`].
async fn refused_soon(rest: &Rest, path: &str) -> anyhow::Result<(u16, Value)> {
    let deadline = std::time::Instant::now() + NOTICE_WITHIN;
    loop {
        let (status, body) = rest.get(path).await?;
        if status != 200 || std::time::Instant::now() > deadline {
            return Ok((status, body));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn two_replicas(cluster: &Cluster) -> anyhow::Result<()> {
    let password = cluster.bootstrap_admin("admin")?;
    let again = cluster.bootstrap_admin("admin").unwrap_err().to_string();
    ensure!(again.contains("never created twice"), "{again}");
    let mut a = cluster.service("api", "api-1", KEEP_CALLERS)?;
    let mut b = cluster.service("api", "api-2", KEEP_CALLERS)?;
    a.wait_ready(READY_WITHIN).await?;
    b.wait_ready(READY_WITHIN).await?;

    // A session made on one replica works on the other.
    let token = a.login("admin", &password).await?;
    let (admin_a, admin_b) = (a.rest(&token), b.rest(&token));
    let (status, me) = admin_b.get("/auth/me").await?;
    ensure!(status == 200 && me["user"] == "admin", "{status} {me}");

    // A group created on A is streamed by B and read on B.
    let mut events_b = admin_b.sse("/events", None).await?;
    let (status, created) = admin_a
        .post(
            "/groups",
            json!({ "name": "lobby", "spec": group_spec(0)? }),
        )
        .await?;
    ensure!(status == 201, "create: {status} {created}");
    let event = events_b
        .wait_for("GROUP_CREATED", "lobby", EVENT_WITHIN)
        .await?;
    let (status, group) = admin_b.get("/groups/lobby").await?;
    ensure!(
        status == 200 && group["revision"] == 1 && group["spec"]["scaling"] == "STATIC",
        "{status} {group}"
    );
    // An update against an old revision is refused; against the current one it applies.
    let mut spec = group_spec(0)?;
    spec["memoryMb"] = json!(512);
    let (status, stale) = admin_b
        .put("/groups/lobby", json!({ "spec": spec, "revision": 7 }))
        .await?;
    ensure!(
        status == 409 && stale["code"] == "CONFLICT",
        "{status} {stale}"
    );
    let (status, updated) = admin_b
        .put("/groups/lobby", json!({ "spec": spec, "revision": 1 }))
        .await?;
    ensure!(
        status == 200 && updated["revision"] == 2,
        "{status} {updated}"
    );
    // A client reconnecting with Last-Event-ID is replayed what it missed (on either replica).
    let mut replay = admin_a.sse("/events", Some(&event.id)).await?;
    replay
        .wait_for("GROUP_UPDATED", "lobby", EVENT_WITHIN)
        .await?;

    // Bad input: a clear 4xx naming the problem, nothing written.
    let mut bad = group_spec(0)?;
    bad["memoryMb"] = json!(0);
    let (status, invalid) = admin_a
        .post("/groups", json!({ "name": "Not A Name", "spec": bad }))
        .await?;
    let fields = fields_of(&invalid["details"]["fields"], "field").unwrap_or_default();
    ensure!(
        status == 400 && fields.contains(&"name") && fields.contains(&"memoryMb"),
        "{status} {invalid}"
    );
    let (status, unknown) = admin_a
        .post(
            "/groups",
            json!({ "name": "x", "spec": group_spec(0)?, "colour": "red" }),
        )
        .await?;
    ensure!(
        status == 400 && unknown["message"].as_str().unwrap_or("").contains("colour"),
        "{status} {unknown}"
    );
    let huge = "x".repeat(2 * 1024 * 1024);
    let (status, _) = admin_a
        .post("/groups", json!({ "name": huge, "spec": {} }))
        .await?;
    ensure!(status == 413, "an oversized body: {status}");
    let (status, _) = admin_a.get("/groups/nope").await?;
    ensure!(status == 404, "{status}");
    let (status, _) = a.rest("").get("/groups").await?;
    ensure!(status == 401, "no credentials: {status}");
    let (status, listed) = admin_b.get("/groups").await?;
    ensure!(
        status == 200
            && listed["items"].as_array().map(Vec::len) == Some(1)
            && listed["nextCursor"].is_null(),
        "{listed}"
    );

    // Templates: versioned, content-addressed; groups name them and get the hash.
    let v1 = tar_gz(&[("server.properties", "motd=one\n")])?;
    let v2 = tar_gz(&[("server.properties", "motd=two\n")])?;
    let (status, uploaded) = admin_a.put_bytes("/templates/base", v1.clone()).await?;
    ensure!(
        status == 201 && uploaded["current"] == 1,
        "{status} {uploaded}"
    );
    let (status, same) = admin_b.put_bytes("/templates/base", v1.clone()).await?;
    ensure!(
        status == 200 && same["current"] == 1,
        "re-upload: {status} {same}"
    );
    let (status, second) = admin_b.put_bytes("/templates/base", v2).await?;
    ensure!(status == 201 && second["current"] == 2, "{status} {second}");
    let (status, bad) = admin_a
        .put_bytes("/templates/base", b"not a tarball".to_vec())
        .await?;
    ensure!(
        status == 400 && bad["message"].as_str().unwrap_or("").contains("gzip"),
        "{status} {bad}"
    );
    let (status, escape) = admin_a
        .put_bytes("/templates/evil", tar_gz_with_raw_path("../outside", "x")?)
        .await?;
    ensure!(
        status == 400 && escape["message"].as_str().unwrap_or("").contains("outside"),
        "{status} {escape}"
    );
    let (status, _) = admin_a
        .post("/templates/base/rollback", json!({ "version": 1 }))
        .await?;
    ensure!(status == 200, "rollback: {status}");
    let (status, bytes) = admin_b
        .get_bytes("/templates/base/versions/1/content")
        .await?;
    ensure!(
        status == 200 && bytes == v1,
        "download of version 1: {status}"
    );
    let mut templated = group_spec(0)?;
    templated["templates"] = json!([{ "name": "base" }]);
    let (status, with_template) = admin_a
        .post("/groups", json!({ "name": "hub", "spec": templated }))
        .await?;
    ensure!(
        status == 201
            && with_template["spec"]["templates"][0]["version"] == 1
            && with_template["spec"]["templates"][0]["hash"] == uploaded["versions"][0]["hash"],
        "{status} {with_template}"
    );
    templated["templates"] = json!([{ "name": "nope" }]);
    refused_group(&admin_a, "hub2", templated, "templates[0].name").await?;
    let (status, _) = admin_a.delete("/templates/base").await?;
    ensure!(status == 409, "deleting a template in use: {status}");
    let (status, _) = admin_a.delete("/groups/hub").await?;
    ensure!(status == 202, "{status}");

    // Permissions: a viewer reads but cannot mutate; a scoped token cannot exceed its scope.
    let vera = json!({ "username": "vera", "password": "viewer-password-1", "roles": ["viewer"] });
    admin_a.post_created("/users", vera).await?;
    let olga = json!({ "username": "olga", "password": "short", "roles": ["operator"] });
    let (status, weak) = admin_a.post("/users", olga).await?;
    ensure!(
        status == 400 && weak["message"].as_str().unwrap_or("").contains("password"),
        "{weak}"
    );
    let viewer = b.rest(&b.login("vera", "viewer-password-1").await?);
    let (status, _) = viewer.get("/groups").await?;
    ensure!(status == 200, "viewer reads: {status}");
    let (status, denied) = viewer
        .post("/groups", json!({ "name": "v", "spec": group_spec(0)? }))
        .await?;
    ensure!(
        status == 403 && denied["code"] == "FORBIDDEN",
        "{status} {denied}"
    );
    let (status, _) = viewer.get("/users").await?;
    ensure!(status == 403, "viewer lists users: {status}");

    // Lists come in pages: `limit`, then `after` the previous page's `nextCursor`.
    let (status, first) = admin_b.get("/users?limit=1").await?;
    ensure!(
        status == 200 && first["items"][0]["username"] == "admin" && first["nextCursor"] == "admin",
        "{status} {first}"
    );
    let (_, last) = admin_a.get("/users?limit=1&after=admin").await?;
    ensure!(
        fields_of(&last["items"], "username")? == ["vera"] && last["nextCursor"].is_null(),
        "{last}"
    );
    let (_, roles) = admin_a.get("/roles?limit=2&after=admin").await?;
    ensure!(
        fields_of(&roles["items"], "name")? == ["operator", "viewer"],
        "built-in and custom roles page together by name: {roles}"
    );
    for bad in ["limit=0", "limit=1001", "limit=ten"] {
        let (status, refused) = admin_a.get(&format!("/groups?{bad}")).await?;
        ensure!(
            status == 400 && refused["message"].as_str().unwrap_or("").contains("limit"),
            "{bad}: {status} {refused}"
        );
    }
    let (status, _) = admin_a.get("/backups?after=not-a-cursor").await?;
    ensure!(status == 400, "a cursor this list never gave out: {status}");
    let (status, scoped) = admin_a
        .post(
            "/auth/tokens",
            json!({ "name": "dashboard", "permissions": ["groups:read"], "expiresIn": "1h" }),
        )
        .await?;
    ensure!(status == 201, "{status} {scoped}");
    let scoped_token = scoped["token"].as_str().context("token")?.to_owned();
    let dashboard = b.rest(&scoped_token);
    let (status, _) = dashboard.get("/groups").await?;
    ensure!(status == 200, "scoped token reads: {status}");
    let (status, _) = dashboard.get("/nodes").await?;
    ensure!(status == 403, "scoped token beyond its scope: {status}");
    let (status, _) = dashboard
        .post("/groups", json!({ "name": "t", "spec": group_spec(0)? }))
        .await?;
    ensure!(status == 403, "scoped token mutates: {status}");
    // Deleting the token on A is seen by B (which resolved it just now).
    let id = scoped["id"].as_str().context("id")?;
    let (status, _) = admin_a.delete(&format!("/auth/tokens/{id}")).await?;
    ensure!(status == 204, "{status}");
    let (status, _) = refused_soon(&dashboard, "/groups").await?;
    ensure!(status == 401, "deleted token: {status}");

    // Lockout across replicas: five failures spread over A and B lock vera on both.
    let vera_signs_in = async |replica: &Proc, password: &str| {
        let body = json!({ "username": "vera", "password": password });
        replica.rest("").post("/auth/login", body).await
    };
    for attempt in 0..5 {
        let replica = if attempt % 2 == 0 { &a } else { &b };
        let (status, _) = vera_signs_in(replica, "wrong-password-x").await?;
        ensure!(status == 401, "failed login {attempt}: {status}");
    }
    for replica in [&a, &b] {
        let (status, locked) = vera_signs_in(replica, "viewer-password-1").await?;
        ensure!(
            status == 429 && locked["code"] == "LOCKED_OUT",
            "{status} {locked}"
        );
    }

    // The audit log has who did what, newest first, in pages.
    let (status, page) = admin_b.get("/audit?limit=2").await?;
    ensure!(status == 200, "{status} {page}");
    let cursor = page["nextCursor"].as_str().context("a next page")?;
    let (_, older) = admin_b
        .get(&format!("/audit?limit=50&cursor={cursor}"))
        .await?;
    let actions = fields_of(&older["entries"], "action")?;
    ensure!(actions.contains(&"group.create"), "{older}");
    let (status, _) = admin_a.delete("/users/admin").await?;
    ensure!(status == 409, "deleting the last admin: {status}");

    // Logout on A ends the session on B too, which resolved it just now and would keep it for a
    // minute.
    let (status, _) = admin_b.get("/auth/me").await?;
    ensure!(status == 200, "{status}");
    let (status, _) = admin_a.post("/auth/logout", json!({})).await?;
    ensure!(status == 204, "{status}");
    let (status, gone) = refused_soon(&admin_b, "/groups").await?;
    ensure!(
        status == 401
            && gone["message"]
                .as_str()
                .unwrap_or("")
                .contains("logged out"),
        "{status} {gone}"
    );
    stop_all([&mut a, &mut b], EXIT_WITHIN).await
}

async fn operator_actions(cluster: &Cluster) -> anyhow::Result<()> {
    let system = system(cluster, &["node-1"], 1).await?;
    let rest = system.rest.clone();
    let api_url = system.api.http.clone();

    create_group(&rest, "hub", group_spec(1)?).await?;
    let first = running(cluster, &["hub-1"]).await?.remove(0);
    let (status, nodes) = rest.get("/nodes").await?;
    let nodes = &nodes["items"];
    ensure!(
        status == 200 && nodes[0]["id"] == "node-1" && nodes[0]["state"] == "ONLINE",
        "{nodes}"
    );
    let (status, _) = rest.delete("/nodes/node-1").await?;
    ensure!(status == 409, "deleting a connected node: {status}");

    // Console: input through the API reaches the server; its output streams back.
    let mut console = rest.sse("/instances/hub-1/console?lines=0", None).await?;
    let (status, body) = rest
        .post(
            "/instances/hub-1/command",
            json!({ "command": "echo hello-from-api" }),
        )
        .await?;
    ensure!(status == 204, "{status} {body}");
    let deadline = std::time::Instant::now() + EVENT_WITHIN;
    loop {
        let line = console.next(EVENT_WITHIN).await?;
        if line.data.contains("hello-from-api") {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "no echo");
    }

    // prexorctl does the same through the API.
    let ctl = |args: &[&str]| -> anyhow::Result<String> {
        run_ok(
            std::process::Command::new(prexor_acceptance::binary("prexorctl")?)
                .args(["--controller", &api_url, "--token", rest.token()])
                .args(args)
                .env("PREXORCTL_CONFIG", cluster.dir.join("prexorctl.json")),
            &format!("prexorctl {args:?}"),
        )
    };
    let listed: Value = serde_json::from_str(&ctl(&["instances", "list", "-o", "json"])?)?;
    ensure!(listed[0]["id"] == "hub-1", "{listed}");
    let table = ctl(&["groups", "list"])?;
    ensure!(
        table.contains("hub") && table.contains("RUNNING=1"),
        "{table}"
    );
    ctl(&["nodes", "cordon", "node-1"])?;
    let (_, node) = rest.get("/nodes/node-1").await?;
    ensure!(node["cordoned"] == true, "{node}");
    ctl(&["nodes", "uncordon", "node-1"])?;
    let yaml = ctl(&["nodes", "get", "node-1", "-o", "yaml"])?;
    ensure!(yaml.contains("cordoned: false"), "{yaml}");

    // Stop through the API: the holder stops it and the STATIC group starts it again.
    let (status, body) = rest.post("/instances/hub-1/stop", json!({})).await?;
    ensure!(status == 202, "{status} {body}");
    let old_plan = first.get_str("planHash")?.to_owned();
    let restarted = running_again(cluster, "hub-1", &first, "restarted").await?;
    ensure!(
        restarted.get_str("planHash")? != old_plan,
        "a restart is a new plan: {restarted:?}"
    );

    // A MANUAL group starts only what operators start, up to its maximum.
    let mut manual = group_spec(0)?;
    manual["scaling"] = json!("MANUAL");
    manual["maxInstances"] = json!(1);
    create_group(&rest, "event", manual).await?;
    let (status, _) = rest.post("/groups/hub/instances", json!({})).await?;
    ensure!(status == 409, "manual start in a STATIC group: {status}");
    let (status, body) = rest.post("/groups/event/instances", json!({})).await?;
    ensure!(status == 202, "{status} {body}");
    running(cluster, &["event-1"]).await?;
    let (status, _) = rest.post("/groups/event/instances", json!({})).await?;
    ensure!(status == 409, "beyond maxInstances: {status}");
    let (status, listed) = rest.get("/instances?group=event&state=running").await?;
    ensure!(
        status == 200 && listed["items"].as_array().map(Vec::len) == Some(1),
        "{listed}"
    );

    // Deleting a group stops its instances, then the group is gone.
    let (status, _) = rest.delete("/groups/hub").await?;
    ensure!(status == 202, "{status}");
    wait_state(cluster, "instances", "hub-1", "STOPPED").await?;
    rest.wait_gone("/groups/hub", Duration::from_secs(30))
        .await?;

    system.stop(0).await
}

/// Tells the api, as a server (`server` carries its instance token), which `players` are online;
/// the count it answers.
async fn players(server: &Rest, players: Value) -> anyhow::Result<Value> {
    let (status, count) = server
        .put("/workload/players", json!({ "players": players }))
        .await?;
    ensure!(status == 200, "{status} {count}");
    Ok(count)
}

async fn dynamic_scaling(cluster: &Cluster) -> anyhow::Result<()> {
    let system = system(cluster, &["node-1"], 1).await?;
    let rest = system.rest.clone();

    let mut spec = group_spec(1)?;
    spec["scaling"] = json!("DYNAMIC");
    spec["maxInstances"] = json!(3);
    refused_group(&rest, "arena", spec.clone(), "dynamic").await?;
    spec["dynamic"] = json!({
        "maxPlayers": 10, "scaleUpPercent": 80, "scaleDownDelaySeconds": 2, "cooldownSeconds": 1,
    });
    create_group(&rest, "arena", spec).await?;
    let first = running(cluster, &["arena-1"]).await?.remove(0);
    let token = prexor_acceptance::plan_of(cluster, &first)
        .await?
        .get_document("env")?
        .get_str("PREXOR_INSTANCE_TOKEN")?
        .to_owned();
    let (status, shown) = rest.get("/instances/arena-1").await?;
    ensure!(
        status == 200 && shown["plan"]["env"]["PREXOR_INSTANCE_TOKEN"] == "(hidden)",
        "the token is not shown: {shown}"
    );

    // The server reports through the workload endpoints with its own token.
    let server = system.api.rest(&token);
    let (status, _) = server.post("/workload/ready", json!({})).await?;
    ensure!(status == 204, "ready: {status}");
    let (status, _) = system
        .api
        .rest(&format!("{token}x"))
        .post("/workload/ready", json!({}))
        .await?;
    ensure!(status == 401, "a wrong instance token: {status}");
    let (status, count) = server
        .post(
            "/workload/players",
            json!({ "event": "join", "player": "alex" }),
        )
        .await?;
    ensure!(status == 200 && count["players"] == 1, "{status} {count}");
    // 8 of 10 players: at the 80 % mark, a second instance starts.
    let eight: Vec<String> = (0..8).map(|i| format!("player{i}")).collect();
    let count = players(&server, json!(eight)).await?;
    ensure!(count["players"] == 8, "{count}");
    running(cluster, &["arena-2"]).await?;

    // Everyone leaves: after the scale-down delay the emptiest instance goes, down to min.
    players(&server, json!([])).await?;
    wait_state(cluster, "instances", "arena-2", "STOPPED")
        .await
        .context("stopped by scale-down")?;
    let one = get_doc(cluster, "instances", "arena-1").await?;
    ensure!(
        one.get_str("state")? == "RUNNING" && reported_state(&one) == "RUNNING",
        "arena-1 keeps running: {one:?}"
    );
    let state = get_doc(cluster, "group_state", "arena").await?;
    ensure!(state.get_i64("scaleTarget")? == 1, "{state:?}");

    // A node drain with players online: arena-1 DRAINS (still up) until they left, then stops.
    players(&server, json!(["alex", "sam", "kim"])).await?;
    let (status, body) = rest.post("/nodes/node-1/drain", json!({})).await?;
    ensure!(status == 202, "{status} {body}");
    let draining = wait_state(cluster, "instances", "arena-1", "DRAINING").await?;
    ensure!(
        draining.get_i64("drainUntilMs")? > draining.get_i64("stateAtMs")?
            && reported_state(&draining) == "RUNNING",
        "drains with a deadline, the server still up: {draining:?}"
    );
    let (status, shown) = rest.get("/instances/arena-1").await?;
    ensure!(
        status == 200 && shown["state"] == "DRAINING",
        "{status} {shown}"
    );
    players(&server, json!([])).await?;
    wait_state(cluster, "instances", "arena-1", "STOPPED")
        .await
        .context("stopped after draining")?;

    system.stop(0).await
}

scenario_tests! {
    two_api_replicas_share_sessions_events_and_lockouts: two_replicas,
    operator_actions_through_the_api_reach_real_instances: operator_actions,
    a_dynamic_group_follows_the_players_its_servers_report: dynamic_scaling,
}
