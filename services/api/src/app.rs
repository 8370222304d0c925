//! What every handler shares: the replica's stores and coordination, the session signing key,
//! the CA signer client and channels to gateways; plus the audit log writer.

use std::sync::Arc;

use axum::http::StatusCode;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::results::UpdateResult;
use prexor_model::access::{
    API_TOKENS, ApiTokenRecord, AuditRecord, ROLES, RoleRecord, USERS, UserRecord,
};
use prexor_model::groups::{GROUPS, GroupRecord};
use prexor_model::instances::{CRASHES, CrashRecord, INSTANCES, InstanceRecord};
use prexor_model::nodes::{NODES, NodeRecord};
use prexor_model::workflows::backups::BackupRecord;
use prexor_model::workflows::deployments::DeploymentRecord;
use prexor_model::workflows::modules::ModuleRecord;
use prexor_model::workflows::templates::TemplateRecord;
use prexor_model::workflows::{BACKUPS, DEPLOYMENTS, MODULES, TEMPLATES};
use prexor_serve::Service;
use prexor_serve::signer::SignerClient;
use prexor_store::Store;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{Principal, SessionKeys};
use crate::error::{ApiError, ApiResult};

pub type App = Arc<AppState>;

/// A record kept one to a document in its own collection, found by its id.
pub trait Stored: DeserializeOwned + Send + Sync + Unpin {
    /// Its collection.
    const COLLECTION: &'static str;
    /// What a 404 calls it: `no <WHAT> "<id>"`.
    const WHAT: &'static str;
}

/// `Record in COLLECTION as "what",`: the [`Stored`] records.
macro_rules! stored {
    ($($record:ident in $collection:ident as $what:literal,)*) => {
        $(
            impl Stored for $record {
                const COLLECTION: &'static str = $collection;
                const WHAT: &'static str = $what;
            }
        )*
    };
}

stored! {
    ApiTokenRecord in API_TOKENS as "API token",
    BackupRecord in BACKUPS as "backup",
    AuditRecord in AUDIT as "audit entry",
    CrashRecord in CRASHES as "crash record",
    DeploymentRecord in DEPLOYMENTS as "deployment",
    GroupRecord in GROUPS as "group",
    InstanceRecord in INSTANCES as "instance",
    ModuleRecord in MODULES as "module",
    NodeRecord in NODES as "node",
    RoleRecord in ROLES as "role",
    TemplateRecord in TEMPLATES as "template",
    UserRecord in USERS as "user",
}

pub struct AppState {
    pub service: Service,
    pub sessions: SessionKeys,
    pub signer: SignerClient,
    pub gateways: prexor_serve::Gateways,
    pub verifications: crate::login::Verifications,
    pub trusted_proxies: crate::login::TrustedProxies,
    pub streams: crate::streams::StreamCounts,
    /// Every console followed on this replica, through one Valkey connection (none without
    /// Valkey).
    pub console_hub: Option<prexor_coord::ConsoleHub>,
    /// What an uploaded archive may be (`uploads.*`).
    pub uploads: prexor_config::UploadLimits,
    /// Callers resolved a moment ago (`api.callerCacheTtl`).
    pub callers: crate::auth::CallerCache,
    /// List reads in flight on this replica (`api.maxConcurrentLists`).
    pub list_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

pub use prexor_model::access::AUDIT;
use prexor_model::cluster::CLUSTER_SECRETS as SECRETS;

/// The cluster's secret `name` (at least 32 random bytes), created by whichever replica asks
/// first; every replica reads the same one.
pub async fn cluster_secret(
    store: &Store,
    name: &str,
    what: &str,
) -> Result<Vec<u8>, prexor_store::StoreError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rand::RngCore;
    let mut fresh = [0u8; 64];
    rand::rng().fill_bytes(&mut fresh);
    let secrets = store.documents(SECRETS);
    let created = store
        .bounded(
            &format!("creating {what}"),
            secrets
                .update_one(
                    doc! { "_id": name },
                    doc! { "$setOnInsert": { "key": URL_SAFE_NO_PAD.encode(fresh), "createdAtMs": prexor_domain::now_ms() } },
                )
                .upsert(true),
        )
        .await;
    if let Err(err) = created
        && !err.is_duplicate_key()
    {
        return Err(err);
    }
    let record = store
        .bounded(
            &format!("reading {what}"),
            secrets.find_one(doc! { "_id": name }),
        )
        .await?
        .unwrap_or_default();
    Ok(record
        .get_str("key")
        .ok()
        .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
        .filter(|k| k.len() >= 32)
        .unwrap_or_else(|| fresh.to_vec()))
}

impl AppState {
    pub fn store(&self) -> &Store {
        &self.service.store
    }

    /// Deletes the document `_id = id` of `collection` (`doing` names the act in an error).
    pub async fn delete_by_id(
        &self,
        collection: &str,
        doing: &str,
        id: &str,
    ) -> Result<(), prexor_store::StoreError> {
        let store = self.store();
        store
            .bounded(
                doing,
                store.documents(collection).delete_one(doc! { "_id": id }),
            )
            .await?;
        Ok(())
    }

    /// Applies `update` to the document of `collection` that `filter` matches; with `upsert`, to
    /// a new one when none does (`doing` names the act in an error).
    pub async fn update_one(
        &self,
        collection: &str,
        doing: &str,
        filter: Document,
        update: Document,
        upsert: bool,
    ) -> Result<UpdateResult, prexor_store::StoreError> {
        let documents = self.store().documents(collection);
        let updating = documents.update_one(filter, update).upsert(upsert);
        self.store().bounded(doing, updating).await
    }

    /// [`AppState::update_one`] of the document `_id = id`.
    pub async fn update_by_id(
        &self,
        collection: &str,
        doing: &str,
        id: &str,
        update: Document,
    ) -> Result<UpdateResult, prexor_store::StoreError> {
        let filter = doc! { "_id": id };
        self.update_one(collection, doing, filter, update, false)
            .await
    }

    /// Inserts `record` into `collection` (`doing` names the act in an error).
    pub async fn insert<T: Serialize + Send + Sync>(
        &self,
        collection: &str,
        doing: &str,
        record: &T,
    ) -> Result<(), prexor_store::StoreError> {
        let store = self.store();
        store
            .bounded(doing, store.collection::<T>(collection).insert_one(record))
            .await?;
        Ok(())
    }

    /// [`AppState::insert`], or 409 `exists()` when `collection` has a record of that id.
    pub async fn insert_new<T: Serialize + Send + Sync>(
        &self,
        collection: &str,
        doing: &str,
        record: &T,
        exists: impl FnOnce() -> String,
    ) -> ApiResult<()> {
        self.insert(collection, doing, record)
            .await
            .map_err(|err| crate::error::conflict_if_taken(err, exists))
    }

    /// Deletes the record `id` of `collection` for `who` (`doing` names the act in an error) and
    /// audits it as `action`, with the record as it was shown: 204.
    pub async fn delete_audited<B: Serialize>(
        &self,
        who: &Principal,
        collection: &str,
        doing: &str,
        action: &str,
        id: &str,
        before: &B,
    ) -> ApiResult<StatusCode> {
        self.delete_by_id(collection, doing, id).await?;
        self.audit(who, action, id, Some(before), None::<&()>).await;
        Ok(StatusCode::NO_CONTENT)
    }

    /// The record `_id = id` of `collection` as `T`, if there is one.
    pub async fn record<T: DeserializeOwned + Send + Sync>(
        &self,
        collection: &str,
        id: &str,
    ) -> ApiResult<Option<T>> {
        let store = self.store();
        let records = store.collection::<T>(collection);
        let reading = records.find_one(doc! { "_id": id });
        store
            .bounded(&format!("reading {id} from {collection}"), reading)
            .await
            .map_err(|err| unreadable(collection, Some(id), err))
    }

    /// The record `id` of `T`'s collection, or 404 `no <what> "<id>"`.
    pub async fn find<T: Stored>(&self, id: &str) -> ApiResult<T> {
        self.record(T::COLLECTION, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no {} {id:?}", T::WHAT)))
    }

    /// The records of `collection` matching `filter` as `T` (decoded as they arrive, no
    /// document in between), in `sort` order (empty: any), at most `limit`.
    pub async fn records<T: DeserializeOwned + Send + Sync + Unpin>(
        &self,
        collection: &str,
        what: &str,
        filter: Document,
        sort: Document,
        limit: Option<i64>,
    ) -> ApiResult<Vec<T>> {
        let store = self.store();
        let records = store.collection::<T>(collection);
        let mut find = records.find(filter);
        if !sort.is_empty() {
            find = find.sort(sort);
        }
        if let Some(limit) = limit {
            find = find.limit(limit);
        }
        store
            .bounded(what, async { find.await?.try_collect().await })
            .await
            .map_err(|err| unreadable(collection, None, err))
    }

    /// What the aggregation `pipeline` over `collection` yields, each result as `T`.
    pub async fn aggregate<T: DeserializeOwned + Send + Sync + Unpin>(
        &self,
        collection: &str,
        what: &str,
        pipeline: Vec<Document>,
    ) -> ApiResult<Vec<T>> {
        let store = self.store();
        let documents = store.documents(collection);
        let aggregate = documents.aggregate(pipeline).with_type::<T>();
        store
            .bounded(what, async { aggregate.await?.try_collect().await })
            .await
            .map_err(|err| unreadable(collection, None, err))
    }

    /// Records a mutation in the audit log (who, what, on what, before/after, when). A failure is
    /// logged: the change itself is already made.
    pub async fn audit<B: Serialize, A: Serialize>(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        before: Option<&B>,
        after: Option<&A>,
    ) {
        let to_bson = |value: Option<Bson>| value.unwrap_or(Bson::Null);
        self.record_audit(
            &who.user,
            &who.via(),
            action,
            target,
            to_bson(before.and_then(|b| mongodb::bson::to_bson(b).ok())),
            to_bson(after.and_then(|a| mongodb::bson::to_bson(a).ok())),
        )
        .await;
    }

    /// A change `who` made to `target`: its audit entry and, at the same time, a `kind` event about
    /// `target` with `data` for whoever follows the event stream.
    #[allow(clippy::too_many_arguments)]
    pub async fn audit_and_publish<B: Serialize, A: Serialize>(
        &self,
        who: &Principal,
        action: &str,
        target: &str,
        before: Option<&B>,
        after: Option<&A>,
        kind: &str,
        data: serde_json::Value,
    ) {
        // Side by side: the event does not wait for the audit entry's round trip.
        tokio::join!(
            self.audit(who, action, target, before, after),
            self.service.events.publish(kind, target, data)
        );
    }

    /// A change that may end or narrow callers (`subject`: the user, role or token): every
    /// replica forgets the callers it resolved, this one at once, the others as the event
    /// reaches them.
    pub async fn access_changed(&self, subject: &str) {
        self.callers.clear();
        let events = &self.service.events;
        events
            .publish(crate::auth::ACCESS_CHANGED, subject, serde_json::json!({}))
            .await;
    }

    /// An audit entry for an act without a signed-in caller (a sign-in, a failed one), by the
    /// name it was made under.
    pub async fn audit_as(&self, actor: &str, via: &str, action: &str, target: &str) {
        self.record_audit(actor, via, action, target, Bson::Null, Bson::Null)
            .await;
    }

    async fn record_audit(
        &self,
        actor: &str,
        via: &str,
        action: &str,
        target: &str,
        before: Bson,
        after: Bson,
    ) {
        let entry = doc! {
            "atMs": prexor_domain::now_ms(),
            "actor": actor,
            "via": via,
            "action": action,
            "target": target,
            "before": before,
            "after": after,
            "replica": &self.service.config.replica_id,
        };
        let store = self.store();
        if let Err(err) = store
            .bounded(
                "writing the audit log",
                store.documents(AUDIT).insert_one(entry),
            )
            .await
        {
            tracing::error!(action, target, error = %err, "audit entry not written");
        }
    }
}

/// A failed read of `collection` (of the record `id`): a 500 naming it when a record does not
/// read as its type (written by hand, or by another version), else what the store said.
pub(crate) fn unreadable(
    collection: &str,
    id: Option<&str>,
    err: prexor_store::StoreError,
) -> ApiError {
    if let prexor_store::StoreError::Mongo { source, .. } = &err
        && let mongodb::error::ErrorKind::BsonDeserialization(e) = &*source.kind
    {
        let record = id.map_or_else(|| "a record".to_owned(), |id| format!("the record {id:?}"));
        return ApiError::internal(format!("{record} in {collection} cannot be read: {e}"));
    }
    err.into()
}

/// Operations that differ only in what they hand one shared handler: each is its own route and
/// OpenAPI operation (`<method> <path>` on one path parameter, with the request body given,
/// answering `responses`) that calls `shared(app, who, parameter, [body,] args...)`.
macro_rules! variants {
    (
        $shared:ident -> $answer:ty, $tag:literal, $(request_body = $body:ty,)?
        responses $responses:tt $operations:tt
    ) => {
        $crate::app::variants!(@each $shared, $answer, $tag, [$($body)?], $responses, $operations);
    };
    (
        @each $shared:ident, $answer:ty, $tag:literal, $body:tt, $responses:tt,
        { $($(#[$doc:meta])* $name:ident = $method:ident $path:literal $args:tt;)+ }
    ) => {
        $(
            $crate::app::variants!(
                @one $shared, $answer, $tag, $body, $responses, $(#[$doc])* $name $method $path $args
            );
        )+
    };
    (
        @one $shared:ident, $answer:ty, $tag:literal, [$($body:ty)?], $responses:tt,
        $(#[$doc:meta])* $name:ident $method:ident $path:literal ($($arg:expr),*)
    ) => {
        $(#[$doc])*
        #[utoipa::path($method, path = $path, tag = $tag, $(request_body = $body,)? responses $responses)]
        async fn $name(
            $crate::auth::Caller(app, who): $crate::auth::Caller,
            axum::extract::Path(parameter): axum::extract::Path<String>,
            $($crate::error::Json(body): $crate::error::Json<$body>,)?
        ) -> $crate::error::ApiResult<$answer> {
            $shared(app, who, parameter, $($crate::app::variants!(@body body $body),)? $($arg),*).await
        }
    };
    (@body $value:ident $body:ty) => {
        $value
    };
}
pub(crate) use variants;
