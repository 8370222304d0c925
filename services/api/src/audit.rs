//! The audit log: every change an operator made, newest first (`GET /api/v1/audit`, and the
//! dashboard's audit page through [`read_audit`]).

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use mongodb::bson::{Bson, Document};
use prexor_model::access::AuditRecord;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiResult, Json};
use crate::paging::{Page, PageRequest};

pub fn routes() -> Router<App> {
    Router::new().route("/audit", get(audit_log))
}

#[derive(Deserialize, Default)]
pub(crate) struct AuditQuery {
    /// `after` by its older name.
    pub cursor: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
}

/// One page of the audit log, newest first.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditPage {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `after` for older entries; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One change an operator made.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditEntryView {
    /// Its place in the log (a MongoDB object id, hex).
    pub id: String,
    pub at_ms: i64,
    pub actor: String,
    /// `session`, `token:<id>` or `login`.
    pub via: String,
    pub action: String,
    pub target: String,
    /// The changed thing before and after (`null` for none), as the operation that changed it
    /// showed it: open-ended, since every kind of record is audited.
    pub before: serde_json::Value,
    pub after: serde_json::Value,
    /// The api replica that recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

impl AuditEntryView {
    /// `entry` as shown; `hide_archives` leaves out where backup archives are stored (their
    /// blob hash), for a reader without `backups:read`.
    fn new(mut entry: AuditRecord, hide_archives: bool) -> AuditEntryView {
        if hide_archives && entry.action.starts_with("backup.") {
            for side in [&mut entry.before, &mut entry.after] {
                if let Bson::Document(recorded) = side {
                    recorded.remove("hash");
                }
            }
        }
        AuditEntryView {
            id: entry.id.to_hex(),
            at_ms: entry.at_ms,
            actor: entry.actor,
            via: entry.via,
            action: entry.action,
            target: entry.target,
            before: crate::json::value_of(entry.before),
            after: crate::json::value_of(entry.after),
            replica: entry.replica,
        }
    }
}

#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit",
    params(PageRequest, ("cursor" = Option<String>, Query, description = "`after` by its older name"), ("actor" = Option<String>, Query), ("action" = Option<String>, Query), ("target" = Option<String>, Query)),
    responses((status = 200, body = AuditPage))
)]
async fn audit_log(
    Caller(app, who): Caller,
    mut page: PageRequest,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    page.after = page.after.take().or(query.cursor.clone());
    Ok(Json(read_audit(&app, &who, &query, &page).await?))
}

/// One page of the audit log as `who` may read it (`audit:read`), filtered by `query`.
pub(crate) async fn read_audit(
    app: &App,
    who: &Principal,
    query: &AuditQuery,
    page: &PageRequest,
) -> ApiResult<AuditPage> {
    who.require("audit:read")?;
    let mut filter = Document::new();
    for (key, value) in [
        ("actor", &query.actor),
        ("action", &query.action),
        ("target", &query.target),
    ] {
        if let Some(value) = value {
            filter.insert(key, value);
        }
    }
    let entries: Page<AuditRecord> = app.page("reading the audit log", filter, page).await?;
    // Where a backup archive is stored is for those who may read backups.
    let hide_archives = who.require("backups:read").is_err();
    let entries = entries.map(|entry| AuditEntryView::new(entry, hide_archives));
    Ok(AuditPage {
        entries: entries.items,
        next_cursor: entries.next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::{self, doc};

    use super::*;

    #[test]
    fn an_audit_entry_is_shown_as_stored_and_hides_archives_when_asked() {
        let stored = doc! {
            "_id": ObjectId::new(), "atMs": 1_i64, "actor": "ann", "via": "session",
            "action": "backup.create", "target": "backup-1", "before": null,
            "after": { "id": "backup-1", "hash": "h", "size": 3_i64 }, "replica": "api-1",
        };
        let record: AuditRecord = bson::from_document(stored.clone()).unwrap();
        let shown = serde_json::to_value(AuditEntryView::new(record.clone(), false)).unwrap();
        assert_eq!(shown, crate::json::record(stored));
        let hidden = serde_json::to_value(AuditEntryView::new(record, true)).unwrap();
        assert!(hidden["after"].get("hash").is_none() && hidden["after"]["size"] == 3);
    }
}
