//! The OpenAPI document (`GET /api/v1/openapi.json`), generated from the handlers' annotations
//! and the request types themselves, so it cannot drift from the code.

use axum::Json;
use axum::routing::get;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::app::App;

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
        crate::users::audit_log,
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
    modifiers(&Security),
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

pub fn routes() -> axum::Router<App> {
    axum::Router::new().route("/openapi.json", get(document))
}

async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
