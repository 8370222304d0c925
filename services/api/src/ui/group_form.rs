//! Creating and editing a group through a form. The form's fields become a spec, which goes
//! through [`crate::groups::create_group`] / [`crate::groups::update_group`] (the REST handlers'
//! own functions): their validation's problems show next to the fields they name, and an edit
//! made against an old revision shows as a revision conflict. Parts of the spec the form has no
//! field for (templates, modules, affinity, dynamic scaling) are kept as they are.

use std::collections::BTreeMap;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use prexor_domain::GroupSpec;
use serde::Deserialize;
use serde_json::{Value, json};

use super::groups::urlencode;
use super::session::{Guarded, Signed};
use super::{UiError, html, layout};
use crate::error::ApiError;
use crate::groups::{create_group, show_group, update_group};

/// What the form sends (every field as text: the form reports what does not parse).
#[derive(Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct GroupForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    platform: String,
    #[serde(default)]
    version: String,
    /// One argument per line.
    #[serde(default)]
    command: String,
    #[serde(default)]
    memory_mb: String,
    #[serde(default)]
    port_from: String,
    #[serde(default)]
    port_to: String,
    #[serde(default)]
    min_instances: String,
    #[serde(default)]
    max_instances: String,
    #[serde(default)]
    scaling: String,
    /// `KEY=VALUE` per line.
    #[serde(default)]
    env: String,
    #[serde(default)]
    stop_grace_seconds: String,
    #[serde(default)]
    drain_seconds: String,
    #[serde(default)]
    maintenance: Option<String>,
    /// The revision the edit was made against.
    #[serde(default)]
    revision: String,
}

impl GroupForm {
    fn of(name: &str, revision: i64, spec: &GroupSpec) -> GroupForm {
        GroupForm {
            name: name.to_owned(),
            platform: spec.platform.clone(),
            version: spec.version.clone(),
            command: spec.command.join("\n"),
            memory_mb: spec.memory_mb.to_string(),
            port_from: spec.port_range.from.to_string(),
            port_to: spec.port_range.to.to_string(),
            min_instances: spec.min_instances.to_string(),
            max_instances: spec.max_instances.to_string(),
            scaling: serde_json::to_value(spec.scaling)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            stop_grace_seconds: spec.stop_grace_seconds.to_string(),
            drain_seconds: spec.drain_seconds.to_string(),
            maintenance: spec.maintenance.then(|| "on".to_owned()),
            revision: revision.to_string(),
        }
    }

    fn blank() -> GroupForm {
        GroupForm {
            platform: "paper".into(),
            memory_mb: "1024".into(),
            port_from: "30000".into(),
            port_to: "30099".into(),
            min_instances: "1".into(),
            max_instances: "1".into(),
            scaling: "STATIC".into(),
            stop_grace_seconds: "30".into(),
            drain_seconds: "60".into(),
            ..GroupForm::default()
        }
    }

    /// The spec the form describes, on top of `base` (the current spec's JSON when editing);
    /// every field that does not parse, by the spec's field name.
    fn spec(&self, base: Value) -> Result<GroupSpec, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut number = |field: &str, text: &str, max: u64| -> Value {
            match text.trim().parse::<u64>() {
                Ok(n) if n <= max => json!(n),
                _ => {
                    problems.push((
                        field.to_owned(),
                        format!("{:?} is not a whole number from 0 to {max}", text.trim()),
                    ));
                    json!(0)
                }
            }
        };
        let memory = number("memoryMb", &self.memory_mb, u64::from(u32::MAX));
        let from = number("portRange", &self.port_from, u64::from(u16::MAX));
        let to = number("portRange", &self.port_to, u64::from(u16::MAX));
        let min = number("minInstances", &self.min_instances, u64::from(u32::MAX));
        let max = number("maxInstances", &self.max_instances, u64::from(u32::MAX));
        let grace = number(
            "stopGraceSeconds",
            &self.stop_grace_seconds,
            u64::from(u32::MAX),
        );
        let drain = number("drainSeconds", &self.drain_seconds, u64::from(u32::MAX));
        let mut env = BTreeMap::new();
        for line in self.env.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => {
                    env.insert(key.trim().to_owned(), value.to_owned());
                }
                _ => problems.push(("env".to_owned(), format!("{line:?} is not KEY=VALUE"))),
            }
        }
        if !["STATIC", "DYNAMIC", "MANUAL"].contains(&self.scaling.as_str()) {
            problems.push((
                "scaling".to_owned(),
                format!("{:?} is not STATIC, DYNAMIC or MANUAL", self.scaling),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let command: Vec<&str> = self
            .command
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let mut spec = match base {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        for (key, value) in [
            ("platform", json!(self.platform.trim())),
            ("version", json!(self.version.trim())),
            ("command", json!(command)),
            ("memoryMb", memory),
            ("portRange", json!({ "from": from, "to": to })),
            ("minInstances", min),
            ("maxInstances", max),
            ("scaling", json!(self.scaling)),
            ("env", json!(env)),
            ("stopGraceSeconds", grace),
            ("drainSeconds", drain),
            ("maintenance", json!(self.maintenance.is_some())),
        ] {
            spec.insert(key.to_owned(), value);
        }
        serde_json::from_value(Value::Object(spec))
            .map_err(|e| vec![("spec".to_owned(), format!("the spec is not valid: {e}"))])
    }
}

/// Where a failed submission went wrong: per field, a general message, a revision conflict.
#[derive(Default)]
struct Problems {
    fields: Vec<(String, String)>,
    message: Option<String>,
    conflict: bool,
}

impl Problems {
    fn of(err: &ApiError) -> Problems {
        Problems {
            fields: err.field_problems(),
            message: Some(err.message().to_owned()),
            conflict: err.status() == StatusCode::CONFLICT,
        }
    }

    fn fields(fields: Vec<(String, String)>) -> Problems {
        Problems {
            message: Some(format!(
                "the form has {} problem{}; see the fields marked below",
                fields.len(),
                if fields.len() == 1 { "" } else { "s" }
            )),
            fields,
            conflict: false,
        }
    }

    fn at(&self, field: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(f, _)| f == field || f.starts_with(&format!("{field}.")))
            .map(|(_, m)| m.as_str())
            .collect()
    }
}

/// The form for a new group (`editing`: none) or an edit of one.
fn form_page(
    signed: &Signed,
    editing: Option<&str>,
    form: &GroupForm,
    problems: &Problems,
) -> Markup {
    let (title, action) = match editing {
        Some(name) => (
            format!("Edit group {name}"),
            format!("/ui/groups/{}/edit", urlencode(name)),
        ),
        None => ("New group".to_owned(), "/ui/groups/_new".to_owned()),
    };
    let field = |name: &str, label: &str, input: Markup| {
        let errors = problems.at(name);
        html! {
            div.field.invalid[!errors.is_empty()] data-field=(name) {
                label { (label) (input) }
                @for error in errors {
                    p.field-error { (error) }
                }
            }
        }
    };
    let content = html! {
        h1 { (title) }
        form.group-form #group-form method="post" action=(action) novalidate {
            @if let Some(message) = &problems.message {
                @if problems.conflict {
                    p.error #form-conflict role="alert" { "Conflict: " (message) }
                } @else {
                    p.error #form-error role="alert" { (message) }
                }
            }
            input type="hidden" name="csrf" value=(signed.csrf);
            input type="hidden" name="revision" value=(form.revision);
            @if editing.is_none() {
                (field("name", "Name", html! { input name="name" value=(form.name) required; }))
            } @else {
                input type="hidden" name="name" value=(form.name);
            }
            div.row {
                (field("platform", "Platform", html! { input name="platform" value=(form.platform); }))
                (field("version", "Version", html! { input name="version" value=(form.version); }))
            }
            (field("command", "Command (one argument per line; {port}, {instance}, {group}, {node}, {memory} are filled in)",
                html! { textarea.mono name="command" rows="4" { (form.command) } }))
            div.row {
                (field("memoryMb", "Memory (MB)", html! { input name="memoryMb" inputmode="numeric" value=(form.memory_mb); }))
                (field("portRange", "Ports from – to", html! {
                    span.pair {
                        input name="portFrom" inputmode="numeric" value=(form.port_from);
                        input name="portTo" inputmode="numeric" value=(form.port_to);
                    }
                }))
            }
            div.row {
                (field("scaling", "Scaling", html! {
                    select name="scaling" {
                        @for mode in ["STATIC", "DYNAMIC", "MANUAL"] {
                            option value=(mode) selected[form.scaling == mode] { (mode) }
                        }
                    }
                }))
                (field("minInstances", "Min instances", html! { input name="minInstances" inputmode="numeric" value=(form.min_instances); }))
                (field("maxInstances", "Max instances", html! { input name="maxInstances" inputmode="numeric" value=(form.max_instances); }))
            }
            @for error in problems.at("dynamic") {
                p.field-error data-field="dynamic" { "Dynamic scaling: " (error) }
            }
            (field("env", "Environment (KEY=VALUE per line)", html! { textarea.mono name="env" rows="3" { (form.env) } }))
            div.row {
                (field("stopGraceSeconds", "Stop grace (s)", html! { input name="stopGraceSeconds" inputmode="numeric" value=(form.stop_grace_seconds); }))
                (field("drainSeconds", "Drain (s)", html! { input name="drainSeconds" inputmode="numeric" value=(form.drain_seconds); }))
            }
            label.check { input type="checkbox" name="maintenance" checked[form.maintenance.is_some()]; " Maintenance (no new instances)" }
            @for (name, message) in &problems.fields {
                @if !KNOWN.iter().any(|k| name == k || name.starts_with(&format!("{k}."))) {
                    p.field-error data-field=(name) { (name) ": " (message) }
                }
            }
            p { button #save-group type="submit" { @if editing.is_some() { "Save" } @else { "Create" } } }
        }
    };
    layout::page(signed, "/ui/groups", &title, content)
}

/// The fields the form shows problems next to; others are listed at its end.
const KNOWN: &[&str] = &[
    "name",
    "platform",
    "version",
    "command",
    "memoryMb",
    "portRange",
    "scaling",
    "minInstances",
    "maxInstances",
    "dynamic",
    "env",
    "stopGraceSeconds",
    "drainSeconds",
];

fn refused(status: StatusCode, page: Markup) -> Response {
    (status, Html(page.into_string())).into_response()
}

/// `GET /ui/groups/_new`.
pub async fn new_form(signed: Signed) -> Result<Html<String>, UiError> {
    signed.who.require("groups:write")?;
    Ok(html(form_page(
        &signed,
        None,
        &GroupForm::blank(),
        &Problems::default(),
    )))
}

/// `POST /ui/groups/_new`: the group's page once created, the form with its problems otherwise.
pub async fn create(Guarded { signed, form }: Guarded<GroupForm>) -> Response {
    // create_group checks it too; checked first so that a refusal is not a form problem.
    if let Err(err) = signed.who.require("groups:write") {
        return UiError::from(err).into_response();
    }
    let spec = match form.spec(json!({})) {
        Ok(spec) => spec,
        Err(fields) => {
            let page = form_page(&signed, None, &form, &Problems::fields(fields));
            return refused(StatusCode::BAD_REQUEST, page);
        }
    };
    match create_group(&signed.app, &signed.who, form.name.trim().to_owned(), spec).await {
        Ok(group) => {
            Redirect::to(&format!("/ui/groups/{}", urlencode(&group.name))).into_response()
        }
        Err(err) => refused(
            err.status(),
            form_page(&signed, None, &form, &Problems::of(&err)),
        ),
    }
}

/// `GET /ui/groups/{name}/edit`.
pub async fn edit_form(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    signed.who.require("groups:write")?;
    let group = show_group(&signed.app, &signed.who, &name).await?;
    let form = GroupForm::of(&group.name, group.revision, &group.spec);
    Ok(html(form_page(
        &signed,
        Some(&name),
        &form,
        &Problems::default(),
    )))
}

/// `POST /ui/groups/{name}/edit`: compare-and-set on the revision the form was opened at.
pub async fn update(
    Path(name): Path<String>,
    Guarded { signed, form }: Guarded<GroupForm>,
) -> Response {
    // update_group checks it too; checked first so that a refusal is not a form problem.
    if let Err(err) = signed.who.require("groups:write") {
        return UiError::from(err).into_response();
    }
    let current = match show_group(&signed.app, &signed.who, &name).await {
        Ok(group) => group,
        Err(err) => return UiError::from(err).into_response(),
    };
    let revision = match form.revision.trim().parse::<i64>() {
        Ok(revision) => revision,
        Err(_) => {
            let problems = Problems {
                message: Some(format!(
                    "the form carries no revision ({:?}); reload the page",
                    form.revision
                )),
                ..Problems::default()
            };
            return refused(
                StatusCode::BAD_REQUEST,
                form_page(&signed, Some(&name), &form, &problems),
            );
        }
    };
    let base = serde_json::to_value(&current.spec).unwrap_or_else(|_| json!({}));
    let spec = match form.spec(base) {
        Ok(spec) => spec,
        Err(fields) => {
            let page = form_page(&signed, Some(&name), &form, &Problems::fields(fields));
            return refused(StatusCode::BAD_REQUEST, page);
        }
    };
    match update_group(&signed.app, &signed.who, &name, spec, Some(revision)).await {
        Ok(group) => {
            Redirect::to(&format!("/ui/groups/{}", urlencode(&group.name))).into_response()
        }
        Err(err) => refused(
            err.status(),
            form_page(&signed, Some(&name), &form, &Problems::of(&err)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_form_reads_and_reports_each_field_it_cannot_read() {
        let form: GroupForm = serde_urlencoded::from_str("name=forged&memoryMb=256").unwrap();
        assert_eq!(form.name, "forged");
        let problems = form.spec(json!({})).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert!(fields.contains(&"portRange"), "{problems:?}");
        assert!(fields.contains(&"scaling"), "{problems:?}");
        assert!(!fields.contains(&"memoryMb"), "{problems:?}");
    }

    #[test]
    fn a_spec_round_trips_through_the_form() {
        let spec: GroupSpec = serde_json::from_value(json!({
            "platform": "paper", "version": "1.21", "command": ["java", "-jar", "server.jar"],
            "memoryMb": 1024, "portRange": { "from": 30000, "to": 30010 },
            "minInstances": 1, "maxInstances": 3, "scaling": "STATIC",
            "env": { "A": "b=c" }, "affinity": { "zone": "eu" },
        }))
        .unwrap();
        let form = GroupForm::of("lobby", 4, &spec);
        let base = serde_json::to_value(&spec).unwrap();
        assert_eq!(form.spec(base).unwrap(), spec);
    }
}
