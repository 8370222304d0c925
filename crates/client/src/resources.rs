//! Typed calls for the common resources: sign-in and tokens, users and roles, the audit log,
//! groups, instances, nodes and deployments. Their shapes are the api's answers
//! (`services/api/src/*.rs`); group specs are `prexor_domain::GroupSpec`, as the api takes them.
//! Records the api shows as stored documents (instances, nodes, deployments, drains, audit
//! entries) name the fields callers read and keep every other field in `fields`, so nothing is
//! lost when they are shown again. Lists come in pages ([`Page`], `?limit=&after=`); the list
//! methods follow every page ([`Client::all`]).

use std::collections::BTreeMap;

pub use prexor_domain::GroupSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{Client, Error, EventStream, segment};

/// The largest page a list endpoint serves (`?limit=`).
pub const MAX_PAGE: usize = 1000;

/// A signed-in session (`POST /auth/login`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub token: String,
    pub expires_at_ms: i64,
    pub user: String,
    pub permissions: Vec<String>,
}

/// Who the caller is (`GET /auth/me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub user: String,
    /// `session` or `token:<id>`.
    pub via: String,
    pub permissions: Vec<String>,
}

/// An API token as listed (its secret is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub permissions: Vec<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

/// A new API token (`POST /auth/tokens`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewToken {
    pub name: String,
    /// Default: everything the caller holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// E.g. `"30d"`; default: no expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// A token just created, with its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub view: Token,
    /// The bearer secret, shown once.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub username: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub created_at_ms: i64,
    pub last_login_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub roles: Vec<String>,
}

/// A change of a user (`PATCH /users/{name}`): only what is set changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    pub name: String,
    pub builtin: bool,
    pub permissions: Vec<String>,
    #[serde(default)]
    pub description: String,
}

/// One entry of the audit log (`GET /audit`), newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    #[serde(default)]
    pub at_ms: i64,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub target: String,
    /// `via`, `before`, `after`, ...
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// One page of a list (`?limit=&after=`); the audit log calls its items `entries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    #[serde(alias = "entries")]
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `None` on the last one.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A group as the api shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub name: String,
    pub revision: i64,
    /// Being deleted: its instances are stopping, then the group disappears.
    pub deleting: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub spec: GroupSpec,
    pub status: GroupStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    /// Instances by scheduler state (`RUNNING`, ...).
    #[serde(default)]
    pub instances: BTreeMap<String, u32>,
    /// Set while a crash loop pauses new placements.
    #[serde(default)]
    pub paused_until_ms: Option<i64>,
    #[serde(default)]
    pub pause_reason: Option<String>,
}

/// An operator request recorded for the group's lease holder (start, stop, kill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub request: String,
    pub message: String,
}

/// An instance record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    #[serde(default)]
    pub group: String,
    /// The scheduler's state (`prexor_domain::InstanceState`, e.g. `RUNNING`).
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// `port`, `reported`, `plan`, `attempt`, ...
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// Which instances [`Client::instances`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    pub group: Option<String>,
    pub node: Option<String>,
    pub state: Option<String>,
    /// `Some(true)`: only warm-pool instances; `Some(false)`: only the groups' own.
    pub warm: Option<bool>,
}

/// A node record, with the memory reserved on it and its drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    /// `ONLINE`, `OFFLINE`, ...
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub cordoned: bool,
    /// `gateway`, `labels`, `resources`, `reservedMb`, `drain`, ...
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// A node's drain (`GET /nodes/{id}/drain`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// `DRAINING`, `DONE`, `CANCELLED`, ...
    #[serde(default)]
    pub state: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// How a node is drained (`POST /nodes/{id}/drain`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRequest {
    /// How long the instances get to stop before they are killed (e.g. `"10m"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Shut the daemon down once the node is empty.
    pub shutdown: bool,
}

/// A single-use join token for a node (`POST /nodes/{id}/join-token`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub node_id: String,
    /// Shown once; the node's `daemon.joinToken`.
    pub token: String,
    pub expires_at_ms: i64,
    pub ca_fingerprint: String,
}

/// A rolling deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    #[serde(default)]
    pub group: String,
    /// `ROLLING`, `PAUSED`, `DONE`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub live: Progress,
    /// `batchSize`, `rolledBack`, `createdBy`, ...
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// How far a deployment got: instances running the target spec, of those active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub updated: u64,
    pub active: u64,
}

/// A new rolling deployment (`POST /groups/{name}/deployments`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewDeployment {
    /// The spec to roll out; `None` rolls the current one out again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<GroupSpec>,
    pub batch_size: i64,
    pub max_unavailable: i64,
    /// CANARY: the canaries first, behind `canary`'s health gate (the server's default gate
    /// when `canary` is `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<prexor_domain::canary::Strategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<prexor_domain::canary::CanaryGate>,
}

impl Default for NewDeployment {
    fn default() -> NewDeployment {
        NewDeployment {
            spec: None,
            batch_size: 1,
            max_unavailable: 1,
            strategy: None,
            canary: None,
        }
    }
}

impl Client {
    /// Signs in; the session (its token is what later calls present: [`Client::with_token`]).
    pub async fn login(&self, username: &str, password: &str) -> Result<Session, Error> {
        self.post(
            "/auth/login",
            &json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Ends the caller's session on every replica.
    pub async fn logout(&self) -> Result<(), Error> {
        self.post("/auth/logout", &json!({})).await
    }

    pub async fn me(&self) -> Result<Me, Error> {
        self.get("/auth/me").await
    }

    /// One page of the list at `path` (which may have a query already): at most `limit` items
    /// after the cursor `after`.
    pub async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<T>, Error> {
        let mut path = format!(
            "{path}{}limit={limit}",
            if path.contains('?') { '&' } else { '?' }
        );
        if let Some(after) = after {
            path.push_str(&format!("&after={}", segment(after)));
        }
        self.get(&path).await
    }

    /// The first `most` items of the list at `path`, following its pages (`nextCursor`).
    pub async fn first<T: DeserializeOwned>(
        &self,
        path: &str,
        most: usize,
    ) -> Result<Vec<T>, Error> {
        let mut items: Vec<T> = Vec::new();
        let mut after: Option<String> = None;
        while items.len() < most {
            let limit = (most - items.len()).min(MAX_PAGE);
            let page: Page<T> = self.page(path, limit, after.as_deref()).await?;
            items.extend(page.items);
            match page.next_cursor {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        items.truncate(most);
        Ok(items)
    }

    /// Every item of the list at `path`, page after page.
    pub async fn all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, Error> {
        self.first(path, usize::MAX).await
    }

    /// The caller's API tokens, or `owner`'s (which needs `tokens:read`).
    pub async fn tokens(&self, owner: Option<&str>) -> Result<Vec<Token>, Error> {
        match owner {
            Some(owner) => {
                self.all(&format!("/auth/tokens?owner={}", segment(owner)))
                    .await
            }
            None => self.all("/auth/tokens").await,
        }
    }

    pub async fn create_token(&self, new: &NewToken) -> Result<CreatedToken, Error> {
        self.post("/auth/tokens", new).await
    }

    pub async fn delete_token(&self, id: &str) -> Result<(), Error> {
        self.delete(&format!("/auth/tokens/{}", segment(id))).await
    }

    pub async fn users(&self) -> Result<Vec<User>, Error> {
        self.all("/users").await
    }

    pub async fn create_user(&self, new: &NewUser) -> Result<User, Error> {
        self.post("/users", new).await
    }

    /// Changes a user (a change of roles or password ends their sessions).
    pub async fn update_user(&self, username: &str, change: &UserChange) -> Result<User, Error> {
        self.patch(&format!("/users/{}", segment(username)), change)
            .await
    }

    pub async fn delete_user(&self, username: &str) -> Result<(), Error> {
        self.delete(&format!("/users/{}", segment(username))).await
    }

    pub async fn roles(&self) -> Result<Vec<Role>, Error> {
        self.all("/roles").await
    }

    /// A custom role (permissions like `groups:read`, `nodes:*`, `*:read`).
    pub async fn create_role(&self, name: &str, permissions: &[String]) -> Result<Role, Error> {
        self.post(
            "/roles",
            &json!({ "name": name, "permissions": permissions }),
        )
        .await
    }

    pub async fn delete_role(&self, name: &str) -> Result<(), Error> {
        self.delete(&format!("/roles/{}", segment(name))).await
    }

    /// The newest `limit` entries of the audit log, newest first, following its pages.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, Error> {
        self.first("/audit", limit).await
    }

    pub async fn groups(&self) -> Result<Vec<Group>, Error> {
        self.all("/groups").await
    }

    pub async fn group(&self, name: &str) -> Result<Group, Error> {
        self.get(&format!("/groups/{}", segment(name))).await
    }

    /// Why group `name` has the instances it has (`GET /groups/{name}/explain`).
    pub async fn explain_group(&self, name: &str) -> Result<serde_json::Value, Error> {
        self.get(&format!("/groups/{}/explain", segment(name)))
            .await
    }

    pub async fn create_group(&self, name: &str, spec: &GroupSpec) -> Result<Group, Error> {
        self.post("/groups", &json!({ "name": name, "spec": spec }))
            .await
    }

    /// Replaces a group's spec; with `revision`, only if the group is still at it (else 409).
    pub async fn update_group(
        &self,
        name: &str,
        spec: &GroupSpec,
        revision: Option<i64>,
    ) -> Result<Group, Error> {
        let mut body = json!({ "spec": spec });
        if let Some(revision) = revision {
            body["revision"] = json!(revision);
        }
        self.put(&format!("/groups/{}", segment(name)), &body).await
    }

    /// Starts deleting a group: its instances stop, then it is removed.
    pub async fn delete_group(&self, name: &str) -> Result<Group, Error> {
        self.delete(&format!("/groups/{}", segment(name))).await
    }

    /// Asks for one more instance of a MANUAL group.
    pub async fn start_instance(&self, group: &str) -> Result<Accepted, Error> {
        self.post(&format!("/groups/{}/instances", segment(group)), &json!({}))
            .await
    }

    pub async fn instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>, Error> {
        let warm = filter.warm.map(|w| w.to_string());
        let query: Vec<String> = [
            ("group", &filter.group),
            ("node", &filter.node),
            ("state", &filter.state),
            ("warm", &warm),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", segment(value.as_deref()?))))
        .collect();
        if query.is_empty() {
            self.all("/instances").await
        } else {
            self.all(&format!("/instances?{}", query.join("&"))).await
        }
    }

    /// One instance with the plan of its current placement.
    pub async fn instance(&self, id: &str) -> Result<Instance, Error> {
        self.get(&format!("/instances/{}", segment(id))).await
    }

    /// An instance's crash records (exit code, log tail), newest first, as stored.
    pub async fn crashes(&self, id: &str) -> Result<Vec<Value>, Error> {
        self.all(&format!("/instances/{}/crashes", segment(id)))
            .await
    }

    /// Asks for a graceful stop.
    pub async fn stop_instance(&self, id: &str) -> Result<Accepted, Error> {
        self.post(&format!("/instances/{}/stop", segment(id)), &json!({}))
            .await
    }

    pub async fn kill_instance(&self, id: &str) -> Result<Accepted, Error> {
        self.post(&format!("/instances/{}/kill", segment(id)), &json!({}))
            .await
    }

    /// Saves `paths` of instance `id`'s directory as a new version of `template` (the
    /// template as it is then).
    pub async fn save_to_template(
        &self,
        id: &str,
        template: &str,
        paths: &[String],
    ) -> Result<Value, Error> {
        self.post(
            &format!("/instances/{}/save-to-template", segment(id)),
            &json!({ "template": template, "paths": paths }),
        )
        .await
    }

    /// Sends one console line.
    pub async fn send_command(&self, id: &str, line: &str) -> Result<(), Error> {
        self.post(
            &format!("/instances/{}/command", segment(id)),
            &json!({ "command": line }),
        )
        .await
    }

    /// An instance's console: the last `lines` lines, then what follows.
    pub async fn console(&self, id: &str, lines: usize) -> Result<EventStream, Error> {
        self.events(
            &format!("/instances/{}/console?lines={lines}", segment(id)),
            None,
        )
        .await
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, Error> {
        self.all("/nodes").await
    }

    pub async fn node(&self, id: &str) -> Result<Node, Error> {
        self.get(&format!("/nodes/{}", segment(id))).await
    }

    /// No new placements on the node (`cordoned: false` undoes it).
    pub async fn cordon(&self, id: &str, cordoned: bool) -> Result<(), Error> {
        let action = if cordoned { "cordon" } else { "uncordon" };
        self.post(&format!("/nodes/{}/{action}", segment(id)), &json!({}))
            .await
    }

    /// Starts moving everything off the node (durable).
    pub async fn drain_node(&self, id: &str, request: &DrainRequest) -> Result<Drain, Error> {
        self.post(&format!("/nodes/{}/drain", segment(id)), request)
            .await
    }

    pub async fn drain(&self, id: &str) -> Result<Drain, Error> {
        self.get(&format!("/nodes/{}/drain", segment(id))).await
    }

    /// Cancels a drain and uncordons the node.
    pub async fn undrain(&self, id: &str) -> Result<(), Error> {
        self.post(&format!("/nodes/{}/undrain", segment(id)), &json!({}))
            .await
    }

    /// Forgets a disconnected node.
    pub async fn delete_node(&self, id: &str) -> Result<(), Error> {
        self.delete(&format!("/nodes/{}", segment(id))).await
    }

    /// A join token for node `id`, redeemable for `expires_in` (e.g. `"1h"`).
    pub async fn join_token(&self, id: &str, expires_in: &str) -> Result<JoinToken, Error> {
        self.post(
            &format!("/nodes/{}/join-token", segment(id)),
            &json!({ "expiresIn": expires_in }),
        )
        .await
    }

    /// A group's deployments, newest first.
    pub async fn deployments(&self, group: &str) -> Result<Vec<Deployment>, Error> {
        self.all(&format!("/groups/{}/deployments", segment(group)))
            .await
    }

    pub async fn deployment(&self, id: &str) -> Result<Deployment, Error> {
        self.get(&format!("/deployments/{}", segment(id))).await
    }

    pub async fn create_deployment(
        &self,
        group: &str,
        new: &NewDeployment,
    ) -> Result<Deployment, Error> {
        self.post(&format!("/groups/{}/deployments", segment(group)), new)
            .await
    }

    pub async fn pause_deployment(&self, id: &str) -> Result<Deployment, Error> {
        self.deployment_action(id, "pause").await
    }

    pub async fn resume_deployment(&self, id: &str) -> Result<Deployment, Error> {
        self.deployment_action(id, "resume").await
    }

    /// Back to the spec the deployment started from.
    pub async fn rollback_deployment(&self, id: &str) -> Result<Deployment, Error> {
        self.deployment_action(id, "rollback").await
    }

    async fn deployment_action(&self, id: &str, action: &str) -> Result<Deployment, Error> {
        self.post(
            &format!("/deployments/{}/{action}", segment(id)),
            &json!({}),
        )
        .await
    }
}
