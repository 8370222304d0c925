//! Paged lists (docs/api.md, "Lists"): every list endpoint takes `?limit=` (1 to 1000, default
//! 100) and `?after=` (the `nextCursor` of the previous page) and answers
//! `{"items": [...], "nextCursor": "..." | null}`. A page is read by its sort key — `_id`, or an
//! integer field then `_id` — from where the previous one ended (`_id > after`), one record more
//! than asked for to know whether another page follows; nothing is skipped or counted.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};
use prexor_model::access::{ApiTokenRecord, AuditRecord, RoleRecord, UserRecord};
use prexor_model::groups::GroupRecord;
use prexor_model::instances::{CrashRecord, InstanceRecord};
use prexor_model::nodes::NodeRecord;
use prexor_model::workflows::backups::BackupRecord;
use prexor_model::workflows::deployments::DeploymentRecord;
use prexor_model::workflows::modules::ModuleRecord;
use prexor_model::workflows::templates::TemplateRecord;
use serde::{Deserialize, Serialize};

use crate::app::{AppState, Stored};
use crate::error::{ApiError, ApiResult, Json};

/// Items per page without `?limit=`, and the most one page holds.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// `?limit=&after=`: which page of a list a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageRequest {
    /// Items per page: 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: i64,
    /// The `nextCursor` of the previous page (none: the first page).
    pub after: Option<String>,
}

impl PageRequest {
    /// The page a query string asks for: 400 naming `limit` when it is not 1 to 1000.
    fn parse(limit: Option<&str>, after: Option<String>) -> ApiResult<PageRequest> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::field(
                        "limit",
                        format!("{text:?} is not a page size: give 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        Ok(PageRequest { limit, after })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PageRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        #[derive(Deserialize)]
        struct Raw {
            limit: Option<String>,
            after: Option<String>,
        }
        let Query(raw) = Query::<Raw>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::bad_request(format!("the query string: {e}")))?;
        PageRequest::parse(raw.limit.as_deref(), raw.after)
    }
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// A record listed in pages, in the order of its sort key: its `_id`, or the integer field
/// [`Listed::RANK`] and then its `_id`.
pub trait Listed: Stored {
    /// The integer field that orders the list before `_id` (none: `_id` alone).
    const RANK: Option<&'static str> = None;
    /// Largest (newest) first.
    const DESCENDING: bool = false;
    /// Its `_id`.
    fn id(&self) -> Bson;
    /// Its value of [`Listed::RANK`].
    fn rank(&self) -> i64 {
        0
    }
    /// The `_id` a cursor names (`None`: it names none of this list's).
    fn id_of(cursor: &str) -> Option<Bson> {
        Some(Bson::String(cursor.to_owned()))
    }
}

/// `Record by id_field [after "rankField" = rank_field][, newest first];`: the [`Listed`]
/// records whose `_id` is a string.
macro_rules! listed {
    ($($record:ident by $id:ident $(after $field:literal = $rank:ident)? $(, $newest:ident first)?;)*) => {
        $(
            impl Listed for $record {
                $(const RANK: Option<&'static str> = Some($field);)?
                $(const DESCENDING: bool = { let _ = stringify!($newest); true };)?
                fn id(&self) -> Bson {
                    Bson::String(self.$id.clone())
                }
                $(fn rank(&self) -> i64 {
                    self.$rank
                })?
            }
        )*
    };
}

listed! {
    GroupRecord by name;
    InstanceRecord by id;
    NodeRecord by id;
    ModuleRecord by name;
    RoleRecord by name;
    TemplateRecord by name;
    UserRecord by name;
    ApiTokenRecord by id after "createdAtMs" = created_at_ms;
    BackupRecord by id after "createdAtMs" = created_at_ms, newest first;
    DeploymentRecord by id after "createdAtMs" = created_at_ms, newest first;
    CrashRecord by id after "atMs" = at_ms, newest first;
}

/// The audit log, newest first: object ids grow with time.
impl Listed for AuditRecord {
    const DESCENDING: bool = true;

    fn id(&self) -> Bson {
        Bson::ObjectId(self.id)
    }

    fn id_of(cursor: &str) -> Option<Bson> {
        ObjectId::parse_str(cursor).ok().map(Bson::ObjectId)
    }
}

/// The cursor that points just past `record`.
pub fn cursor_of<T: Listed>(record: &T) -> String {
    let id = match record.id() {
        Bson::String(id) => id,
        Bson::ObjectId(id) => id.to_hex(),
        other => other.to_string(),
    };
    match T::RANK {
        None => id,
        Some(_) => format!("{}.{id}", record.rank()),
    }
}

/// What selects the records after `cursor` in `T`'s order; 400 naming `after` when it is not a
/// cursor of this list.
fn after<T: Listed>(cursor: &str) -> ApiResult<Document> {
    let beyond = if T::DESCENDING { "$lt" } else { "$gt" };
    let bad = || {
        ApiError::field(
            "after",
            "is not a cursor of this list: pass the nextCursor of the previous page",
        )
    };
    let Some(field) = T::RANK else {
        return Ok(doc! { "_id": { beyond: T::id_of(cursor).ok_or_else(bad)? } });
    };
    // `<rank>.<id>`: the rank is an integer, so the first dot ends it.
    let (rank, id) = cursor.split_once('.').ok_or_else(bad)?;
    let rank: i64 = rank.parse().map_err(|_| bad())?;
    let id = T::id_of(id).ok_or_else(bad)?;
    Ok(doc! { "$or": [ { field: { beyond: rank } }, { field: rank, "_id": { beyond: id } } ] })
}

/// A slot for one list read: past `api.maxConcurrentLists` reads at once the replica sheds the
/// load (503, `Retry-After: 1`) rather than holding ever more pages in memory.
fn list_slot(slots: &tokio::sync::Semaphore) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
    slots.try_acquire().map_err(|_| {
        metrics::counter!("prexor_api_lists_shed_total").increment(1);
        ApiError::new(
            prexor_proto::ErrorCode::Unavailable,
            "this replica is reading as many lists as api.maxConcurrentLists allows; retry in a second",
        )
        .retry_after(1)
    })
}

/// `T`'s order.
fn order<T: Listed>() -> Document {
    let direction = if T::DESCENDING { -1 } else { 1 };
    match T::RANK {
        None => doc! { "_id": direction },
        Some(field) => doc! { field: direction, "_id": direction },
    }
}

/// `read` (at most one more than `limit`, in list order) cut to one page, with the cursor of the
/// next page when there is one (`cursor` of its last item).
pub fn cut<T>(mut read: Vec<T>, limit: i64, cursor: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = read.len() > limit;
    read.truncate(limit);
    let next_cursor = if more { read.last().map(cursor) } else { None };
    Page {
        items: read,
        next_cursor,
    }
}

impl<T> Page<T> {
    /// The same page with each item as `view` shows it.
    pub fn map<V>(self, view: impl FnMut(T) -> V) -> Page<V> {
        Page {
            items: self.items.into_iter().map(view).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

impl AppState {
    /// The records of `T` matching `filter` past `page.after`, in `T`'s order: at most one more
    /// than `page.limit` (what [`cut`] takes).
    pub async fn page_read<T: Listed>(
        &self,
        what: &str,
        filter: Document,
        page: &PageRequest,
    ) -> ApiResult<Vec<T>> {
        let filter = match &page.after {
            None => filter,
            Some(cursor) => doc! { "$and": [filter, after::<T>(cursor)?] },
        };
        let _slot = list_slot(&self.list_slots)?;
        let limit = Some(page.limit + 1);
        self.records(T::COLLECTION, what, filter, order::<T>(), limit)
            .await
    }

    /// One page of the records of `T` matching `filter`.
    pub async fn page<T: Listed>(
        &self,
        what: &str,
        filter: Document,
        page: &PageRequest,
    ) -> ApiResult<Page<T>> {
        let read = self.page_read(what, filter, page).await?;
        Ok(cut(read, page.limit, cursor_of::<T>))
    }

    /// [`AppState::page`], each record as its view `V`.
    pub async fn views<T: Listed, V>(
        &self,
        what: &str,
        filter: Document,
        page: &PageRequest,
        view: impl FnMut(T) -> V,
    ) -> ApiResult<Json<Page<V>>> {
        Ok(Json(self.page(what, filter, page).await?.map(view)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserRecord {
        mongodb::bson::from_document(doc! {
            "_id": name, "passwordHash": "", "roles": [], "disabled": false, "createdAtMs": 1_i64,
        })
        .unwrap()
    }

    #[test]
    fn lists_past_the_limit_are_shed_with_a_retry_after() {
        use axum::response::IntoResponse;
        let slots = tokio::sync::Semaphore::new(1);
        let held = list_slot(&slots).unwrap();
        let shed = list_slot(&slots).unwrap_err().into_response();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1");
        drop(held);
        assert!(list_slot(&slots).is_ok(), "a slot is free again");
    }

    #[test]
    fn limits_default_and_are_bounded() {
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, 100);
        assert_eq!(PageRequest::parse(Some("1000"), None).unwrap().limit, 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            let err = PageRequest::parse(Some(bad), None).unwrap_err().to_string();
            assert!(err.contains("limit"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_page_one_longer_than_asked_has_a_next_cursor() {
        let read = vec![user("a"), user("b"), user("c")];
        let page = cut(read, 2, cursor_of::<UserRecord>);
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_cursor.as_deref(), Some("b"));
        let last = cut(vec![user("c")], 2, cursor_of::<UserRecord>);
        assert_eq!((last.items.len(), last.next_cursor), (1, None));
    }

    #[test]
    fn cursors_select_what_follows_in_list_order() {
        assert_eq!(
            after::<UserRecord>("b").unwrap(),
            doc! { "_id": { "$gt": "b" } }
        );
        assert_eq!(order::<UserRecord>(), doc! { "_id": 1 });
        let backup: BackupRecord = mongodb::bson::from_document(doc! {
            "_id": "backup-1", "hash": "h", "size": 1_i64, "createdAtMs": 7_i64,
            "createdBy": "ann", "manifest": {},
        })
        .unwrap();
        let cursor = cursor_of(&backup);
        assert_eq!(cursor, "7.backup-1");
        assert_eq!(
            after::<BackupRecord>(&cursor).unwrap(),
            doc! { "$or": [ { "createdAtMs": { "$lt": 7_i64 } }, { "createdAtMs": 7_i64, "_id": { "$lt": "backup-1" } } ] }
        );
        assert_eq!(
            order::<BackupRecord>(),
            doc! { "createdAtMs": -1, "_id": -1 }
        );
        let id = ObjectId::new();
        assert_eq!(
            after::<AuditRecord>(&id.to_hex()).unwrap(),
            doc! { "_id": { "$lt": id } }
        );
        assert!(after::<AuditRecord>("not-an-object-id").is_err());
        for bad in ["backup-1", "x.backup-1"] {
            assert!(after::<BackupRecord>(bad).is_err(), "{bad}");
        }
    }
}
