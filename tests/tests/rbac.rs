//! The RBAC matrix, generated from the OpenAPI document (docs/security.md): every operation's
//! `x-permission` × anonymous, the built-in roles and a narrow custom role. A caller without the
//! permission gets 401 (not signed in, or not an instance) or 403 — reads and writes alike, with
//! real ids and valid bodies, so the refusal comes from the permission check; a caller with it
//! reads every GET with a 2xx. A route documented without a permission fails the api's unit
//! test; one whose handler forgets its check fails here.

use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{
    Cluster, Rest, deploy, group_spec, nodes, operators, running, scenario_tests, stop_all, tar_gz,
    with_version,
};
use reqwest::Method;
use serde_json::{Value, json};

const EXIT_WITHIN: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery";

/// Someone calling the API, with what they hold (`None`: not signed in).
struct Caller {
    name: &'static str,
    rest: Rest,
    holds: Option<Vec<String>>,
}

impl Caller {
    /// Whether the caller may do what `needed` (an `x-permission`) says.
    fn may(&self, needed: &str) -> bool {
        let Some(held) = &self.holds else {
            return needed == "none";
        };
        match needed {
            "none" | "signed-in" => true,
            "instance" => false,
            list => list
                .split(',')
                .all(|permission| prexor_domain::permission_allows(held, permission)),
        }
    }
}

/// The ids the matrix fills paths with: records that exist.
struct Fixtures {
    /// The node with a drain (the other one runs lobby-1).
    drained: String,
    deployment: String,
    backup: String,
    token: String,
}

impl Fixtures {
    fn path(&self, template: &str) -> String {
        let id = by_prefix(
            template,
            &[
                ("/api/v1/nodes/{id}/drain", &self.drained),
                ("/api/v1/deployments/", &self.deployment),
                ("/api/v1/backups/", &self.backup),
                ("/api/v1/auth/tokens/", &self.token),
                ("/api/v1/instances/", "lobby-1"),
            ],
            "node-1",
        );
        // Not one of the callers: everyone may read their own user.
        let name = by_prefix(
            template,
            &[
                ("/api/v1/users/", "rbac-other"),
                ("/api/v1/roles/", "narrow"),
                ("/api/v1/templates/", "base"),
                ("/api/v1/modules/", "proxy"),
            ],
            "lobby",
        );
        let version = by_prefix(template, &[("/api/v1/modules/", "1.0.0")], "1");
        template
            .trim_start_matches("/api/v1")
            .replace("{id}", id)
            .replace("{name}", name)
            .replace("{version}", version)
    }
}

/// The value of the first `(prefix, value)` of `table` whose prefix starts `template`, else
/// `default`.
fn by_prefix<'a>(template: &str, table: &[(&str, &'a str)], default: &'a str) -> &'a str {
    table
        .iter()
        .find(|(prefix, _)| template.starts_with(prefix))
        .map_or(default, |(_, value)| value)
}

/// A body the operation's extractor accepts, so that what answers a signed-in caller without the
/// permission is the permission check (`{}` where any will do).
fn body_for(method: &str, path: &str) -> anyhow::Result<Option<Value>> {
    let spec = group_spec(1)?;
    Ok(Some(match (method, path) {
        ("POST", "/api/v1/auth/tokens") => json!({ "name": "matrix" }),
        ("POST", "/api/v1/users") => {
            json!({ "username": "matrix", "password": PASSWORD, "roles": [] })
        }
        ("PATCH", "/api/v1/users/{name}") => json!({ "disabled": true }),
        ("POST", "/api/v1/roles") => json!({ "name": "matrix", "permissions": ["groups:read"] }),
        ("PUT", "/api/v1/roles/{name}") => json!({ "permissions": ["groups:read"] }),
        ("POST", "/api/v1/groups") => json!({ "name": "matrix", "spec": spec }),
        ("PUT", "/api/v1/groups/{name}") => json!({ "spec": spec }),
        ("POST", "/api/v1/instances/{id}/command") => json!({ "command": "say matrix" }),
        ("POST", "/api/v1/instances/{id}/save-to-template") => {
            json!({ "template": "matrix", "paths": ["server.properties"] })
        }
        ("POST", "/api/v1/modules/{name}/install" | "/api/v1/modules/{name}/upgrade") => {
            json!({ "version": "1.0.0" })
        }
        ("POST", "/api/v1/nodes/{id}/cert-issue") => json!({ "csrPem": "matrix" }),
        ("POST", "/api/v1/templates/{name}/rollback") => json!({ "version": 1 }),
        ("GET", _) => return Ok(None),
        _ => json!({}),
    }))
}

async fn signed_in(
    api: &prexor_acceptance::Proc,
    name: &'static str,
    user: &str,
    password: &str,
) -> anyhow::Result<Caller> {
    let rest = api.rest(&api.login(user, password).await?);
    let (status, me) = rest.get("/auth/me").await?;
    ensure!(status == 200, "{user}: /auth/me {status} {me}");
    let holds = serde_json::from_value(me["permissions"].clone())?;
    Ok(Caller {
        name,
        rest,
        holds: Some(holds),
    })
}

async fn matrix(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = nodes(cluster, &["node-1", "node-2"]).await?;
    let mut ops = operators(cluster, 1).await?;
    let admin = ops.rest.clone();

    // Fixtures: one of everything a path can name.
    let (status, body) = admin
        .post(
            "/roles",
            json!({ "name": "narrow", "permissions": ["groups:read", "templates:write"] }),
        )
        .await?;
    ensure!(status == 201, "role: {status} {body}");
    for (user, role) in [
        ("rbac-viewer", "viewer"),
        ("rbac-operator", "operator"),
        ("rbac-narrow", "narrow"),
        ("rbac-other", "viewer"),
    ] {
        let (status, body) = admin
            .post(
                "/users",
                json!({ "username": user, "password": PASSWORD, "roles": [role] }),
            )
            .await?;
        ensure!(status == 201, "{user}: {status} {body}");
    }
    let layer = tar_gz(&[("server.properties", "server-port={port}\n")])?;
    let (status, body) = admin.put_bytes("/templates/base", layer.clone()).await?;
    ensure!(status == 201, "template: {status} {body}");
    let (status, body) = admin
        .put_bytes("/modules/proxy/versions/1.0.0", layer)
        .await?;
    ensure!(status == 201, "module: {status} {body}");
    let spec = group_spec(1)?;
    let (status, body) = admin
        .post("/groups", json!({ "name": "lobby", "spec": spec }))
        .await?;
    ensure!(status == 201, "group: {status} {body}");
    let lobby = running(cluster, &["lobby-1"]).await?.remove(0);
    let drained = if lobby.get_str("nodeId")? == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let (status, body) = admin
        .post(&format!("/nodes/{drained}/drain"), json!({}))
        .await?;
    ensure!(status == 202 || status == 200, "drain: {status} {body}");
    let deployment = deploy(&admin, "lobby", json!({ "spec": with_version(&spec, "2") })).await?;
    let (status, backup) = admin.post("/backups", json!({})).await?;
    ensure!(status == 201, "backup: {status} {backup}");
    let operator = signed_in(&ops.api, "operator", "rbac-operator", PASSWORD).await?;
    let (status, token) = operator
        .rest
        .post("/auth/tokens", json!({ "name": "operator's" }))
        .await?;
    ensure!(status == 201, "token: {status} {token}");
    let fixtures = Fixtures {
        drained: drained.to_owned(),
        deployment: deployment["id"]
            .as_str()
            .context("deployment id")?
            .to_owned(),
        backup: backup["id"].as_str().context("backup id")?.to_owned(),
        token: token["id"].as_str().context("token id")?.to_owned(),
    };

    let callers = [
        Caller {
            name: "anonymous",
            rest: ops.api.rest(""),
            holds: None,
        },
        signed_in(&ops.api, "viewer", "rbac-viewer", PASSWORD).await?,
        operator,
        signed_in(&ops.api, "narrow", "rbac-narrow", PASSWORD).await?,
        Caller {
            name: "admin",
            holds: Some(vec!["*".into()]),
            rest: admin.clone(),
        },
    ];

    let (status, document) = admin.get("/openapi.json").await?;
    ensure!(status == 200, "openapi.json: {status}");
    let mut problems = Vec::new();
    let mut checked = 0;
    for (template, item) in document["paths"].as_object().context("paths")? {
        for (method, operation) in item.as_object().context("path item")? {
            let method = method.to_uppercase();
            let Some(needed) = operation["x-permission"].as_str() else {
                problems.push(format!("{method} {template}: no x-permission"));
                continue;
            };
            let path = fixtures.path(template);
            let body = body_for(&method, template)?;
            for caller in &callers {
                let allowed = caller.may(needed);
                if allowed && method != "GET" {
                    // Writes by those who may are the functional suites' business.
                    continue;
                }
                let status = caller
                    .rest
                    .status_of(Method::from_bytes(method.as_bytes())?, &path, body.clone())
                    .await?;
                checked += 1;
                let wanted = if allowed {
                    "2xx"
                } else if caller.holds.is_none() || needed == "instance" {
                    "401"
                } else {
                    "403"
                };
                let fine = match wanted {
                    "2xx" => (200..300).contains(&status),
                    "401" => status == 401,
                    _ => status == 403,
                };
                if !fine {
                    problems.push(format!(
                        "{method} {path} ({needed}) as {}: {status}, documented {wanted}",
                        caller.name
                    ));
                }
            }
        }
    }
    ensure!(
        problems.is_empty(),
        "{} of {checked} calls disagree with the documented permissions:\n{}",
        problems.len(),
        problems.join("\n")
    );
    ensure!(checked > 300, "only {checked} calls were checked");
    stop_all(
        ops.schedulers
            .iter_mut()
            .chain([&mut ops.api])
            .chain(&mut fleet.daemons)
            .chain(&mut fleet.gateways)
            .chain([&mut fleet.ca]),
        EXIT_WITHIN,
    )
    .await
}

scenario_tests! {
    every_operation_answers_as_its_documented_permission_says: matrix,
}
