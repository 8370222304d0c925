//! The OpenAPI document (`GET /api/v1/openapi.json`), generated from the handlers' annotations
//! and the request types themselves, so it cannot drift from the code.

use axum::http::StatusCode;
use axum::routing::get;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::app::App;
use crate::error::{ErrorBody, Json};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "PrexorCloud API",
        description = "Operate a PrexorCloud cluster: groups, instances, nodes, templates, deployments, platform modules, users and events. Any replica answers any request."
    ),
    paths(
        crate::system::info,
        crate::system::status,
        crate::system::ca,
        crate::login::login,
        crate::login::logout,
        crate::auth::me,
        crate::auth::change_password,
        crate::auth::list_tokens,
        crate::auth::create_token,
        crate::auth::delete_token,
        crate::users::list_users,
        crate::users::create_user,
        crate::users::get_user,
        crate::users::update_user,
        crate::users::delete_user,
        crate::users::list_roles,
        crate::users::create_role,
        crate::users::get_role,
        crate::users::update_role,
        crate::users::delete_role,
        crate::audit::audit_log,
        crate::backups::create,
        crate::backups::list,
        crate::backups::show,
        crate::backups::verify,
        crate::backups::download,
        crate::backups::upload,
        crate::backups::remove,
        crate::backups::restore,
        crate::groups::list,
        crate::groups::create,
        crate::groups::show,
        crate::groups::update,
        crate::groups::remove,
        crate::explain::explain,
        crate::groups::start_instance,
        crate::deployments::list,
        crate::deployments::create,
        crate::deployments::show,
        crate::deployments::pause,
        crate::deployments::resume,
        crate::deployments::rollback,
        crate::instances::list,
        crate::instances::show,
        crate::instances::crashes,
        crate::instances::stop,
        crate::instances::kill,
        crate::instances::command,
        crate::instances::console,
        crate::instances::capture::save,
        crate::nodes::list,
        crate::nodes::show,
        crate::nodes::remove,
        crate::nodes::cordon,
        crate::nodes::uncordon,
        crate::nodes::join_token,
        crate::nodes::cert_issue,
        crate::nodes::drain,
        crate::nodes::drain_status,
        crate::nodes::undrain,
        crate::templates::list,
        crate::templates::show,
        crate::templates::upload,
        crate::templates::remove,
        crate::templates::rollback,
        crate::templates::content,
        crate::modules::list,
        crate::modules::show,
        crate::modules::mutation,
        crate::modules::upload,
        crate::modules::install,
        crate::modules::upgrade,
        crate::modules::uninstall,
        crate::modules::delete_storage,
        crate::events::events,
        crate::workload::ready,
        crate::workload::player,
        crate::workload::players,
        crate::workload::metrics
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security, &EveryOperation),
    tags(
        (name = "system"), (name = "auth"), (name = "users"), (name = "roles"), (name = "audit"),
        (name = "groups"), (name = "deployments"), (name = "instances"), (name = "nodes"),
        (name = "templates"), (name = "modules"), (name = "events"),
        (name = "workload", description = "for the plugin inside each game server")
    )
)]
pub struct ApiDoc;

/// The two credentials: operators' bearer tokens (sessions, API tokens) and instance tokens.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "instance",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// What every operation has, added here rather than on each handler: its `x-permission`
/// (what a caller must hold, [`crate::permissions::ROUTES`]) and the credential that goes with
/// it, the error answer as its `default` response ([`ErrorBody`]), and a description for each
/// response that does not say more.
struct EveryOperation;

impl Modify for EveryOperation {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                if let Some(needed) = crate::permissions::route_permission(method, path) {
                    operation
                        .extensions
                        .get_or_insert_with(Default::default)
                        .insert("x-permission".to_owned(), serde_json::json!(needed));
                    operation.security = credential(needed)
                        .map(|scheme| vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
                }
                let responses = &mut operation.responses.responses;
                for (status, response) in responses.iter_mut() {
                    if let RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        response.description = status_description(status);
                    }
                }
                responses.insert("default".to_owned(), error_response().into());
            }
        }
    }
}

/// The security scheme an operation needing `permission` is called with: an instance token for
/// the plugin's endpoints, none for the public ones, an operator's bearer token otherwise.
fn credential(permission: &str) -> Option<&'static str> {
    match permission {
        "none" => None,
        "instance" => Some("instance"),
        _ => Some("bearer"),
    }
}

/// Every error: its status and an [`ErrorBody`] naming the code.
fn error_response() -> Response {
    ResponseBuilder::new()
        .description("an error")
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
        )
        .build()
}

/// A status's reason phrase (`200` "OK", `204` "No Content").
fn status_description(status: &str) -> String {
    status
        .parse::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .and_then(|code| code.canonical_reason())
        .unwrap_or("done")
        .to_owned()
}

/// The operations of a path item with their HTTP methods.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut utoipa::openapi::path::Operation)> {
    [
        ("GET", item.get.as_mut()),
        ("PUT", item.put.as_mut()),
        ("POST", item.post.as_mut()),
        ("DELETE", item.delete.as_mut()),
        ("PATCH", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op?)))
}

pub fn routes() -> axum::Router<App> {
    axum::Router::new().route("/openapi.json", get(document))
}

async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_its_success_and_its_error_answer() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let error_schema = serde_json::json!({ "$ref": "#/components/schemas/ErrorBody" });
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let responses = operation["responses"].as_object().unwrap();
                let default = &responses["default"];
                assert_eq!(
                    default["content"]["application/json"]["schema"], error_schema,
                    "{method} {path}: the default response is not the ErrorBody"
                );
                assert!(
                    responses.keys().any(|status| status.starts_with('2')),
                    "{method} {path} documents no success"
                );
                for (status, response) in responses {
                    assert!(
                        response["description"]
                            .as_str()
                            .is_some_and(|d| !d.is_empty()),
                        "{method} {path} {status}: no description"
                    );
                }
            }
        }
        assert!(operations > 70, "only {operations} operations");
    }

    #[test]
    fn every_list_is_paged() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut lists = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let Some(get) = item.get("get") else {
                continue;
            };
            let schema = &get["responses"]["200"]["content"]["application/json"]["schema"];
            assert_ne!(schema["type"], "array", "GET {path} answers a bare list");
            let reference = schema["$ref"].as_str().unwrap_or_default();
            if reference.starts_with("#/components/schemas/Page_") || path.ends_with("/audit") {
                let parameters: Vec<&str> = get["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert!(
                    parameters.contains(&"limit") && parameters.contains(&"after"),
                    "GET {path} pages without limit and after: {parameters:?}"
                );
                lists.push(path.as_str());
            }
        }
        assert_eq!(lists.len(), 12, "{lists:?}");
    }

    #[test]
    fn every_operation_documents_its_permission_and_every_listed_route_exists() {
        let mut doc = ApiDoc::openapi();
        let mut documented = Vec::new();
        let mut missing = Vec::new();
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                documented.push((method, path.clone()));
                let has = operation
                    .extensions
                    .as_ref()
                    .is_some_and(|e| e.contains_key("x-permission"));
                if !has {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "operations without a permission in permissions::ROUTES: {missing:#?}"
        );
        for (method, path, _) in crate::permissions::ROUTES {
            assert!(
                documented.iter().any(|(m, p)| m == method && p == path),
                "permissions::ROUTES lists {method} {path}, which the API does not have"
            );
        }
    }
}
