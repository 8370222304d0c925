//! The physical floors every other benchmark is compared with.

use mongodb::bson::doc;

use crate::Servers;
use crate::report::{Metric, Samples};

/// The floors measured in this run.
pub struct Floors {
    pub valkey_set_get_p50: Metric,
    pub valkey_set_get_p95: Metric,
    pub mongo_insert_p50: Metric,
    pub mongo_update_p50: Metric,
    pub mongo_update_p95: Metric,
    pub mongo_transaction_p50: Metric,
    pub mongo_transaction_p95: Metric,
    pub mongo_transaction_two_p50: Metric,
}

/// Measures and prints the floors; returns them for comparison.
pub async fn run(servers: &Servers, n: usize) -> anyhow::Result<Floors> {
    let client = redis::Client::open(servers.valkey_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = format!("{}floor", servers.namespace);
    let set_get = Samples::measure(n, |i| {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(i)
                .query_async(&mut conn)
                .await?;
            let _: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            Ok(())
        }
    })
    .await?;
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;

    let mongo = mongodb::Client::with_uri_str(&servers.mongo_uri).await?;
    let coll = mongo
        .database(&servers.database)
        .collection::<mongodb::bson::Document>("floor");
    // Inserts need ids not taken by an earlier run against the same database.
    coll.drop().await?;
    let insert_find = Samples::measure(n, |i| {
        let coll = coll.clone();
        async move {
            coll.insert_one(doc! { "_id": i as i64, "v": 0_i64 })
                .await?;
            coll.find_one(doc! { "_id": i as i64 }).await?;
            Ok(())
        }
    })
    .await?;
    let insert = Samples::measure(n, |i| {
        let coll = coll.clone();
        async move {
            coll.insert_one(doc! { "_id": format!("insert-{i}"), "v": 0_i64 })
                .await?;
            Ok(())
        }
    })
    .await?;
    let update = Samples::measure(n, |i| {
        let coll = coll.clone();
        async move {
            coll.update_one(
                doc! { "_id": (i % 50) as i64 },
                doc! { "$inc": { "v": 1_i64 } },
            )
            .await?;
            Ok(())
        }
    })
    .await?;

    // A transaction of the same update (majority write concern, as every fenced write uses):
    // the update and the commit, two round trips.
    let transaction = Samples::measure(n, |i| {
        let mongo = mongo.clone();
        let coll = coll.clone();
        async move {
            let mut session = transaction_on(&mongo).await?;
            coll.update_one(
                doc! { "_id": (i % 50) as i64 },
                doc! { "$inc": { "v": 1_i64 } },
            )
            .session(&mut session)
            .await?;
            session.commit_transaction().await?;
            Ok(())
        }
    })
    .await?;

    // The shape of a fenced write without the store around it: one transaction whose single
    // bulkWrite updates a fence-like document and the target, then the commit.
    let namespace = mongodb::Namespace {
        db: servers.database.clone(),
        coll: "floor".into(),
    };
    let transaction_two = Samples::measure(n, |i| {
        let mongo = mongo.clone();
        let namespace = namespace.clone();
        async move {
            let mut session = transaction_on(&mongo).await?;
            let update = |id: mongodb::bson::Bson| {
                mongodb::options::UpdateOneModel::builder()
                    .namespace(namespace.clone())
                    .filter(doc! { "_id": id })
                    .update(doc! { "$inc": { "v": 1_i64 } })
                    .upsert(true)
                    .build()
            };
            mongo
                .bulk_write([update("fence".into()), update(((i % 50) as i64).into())])
                .session(&mut session)
                .await?;
            session.commit_transaction().await?;
            Ok(())
        }
    })
    .await?;

    let floors = Floors {
        valkey_set_get_p50: Metric::floor("valkey_set_get_p50", set_get.percentile(50.0)),
        valkey_set_get_p95: Metric::floor("valkey_set_get_p95", set_get.percentile(95.0)),
        mongo_insert_p50: Metric::floor("mongo_insert_p50", insert.percentile(50.0)),
        mongo_update_p50: Metric::floor("mongo_update_p50", update.percentile(50.0)),
        mongo_update_p95: Metric::floor("mongo_update_p95", update.percentile(95.0)),
        mongo_transaction_p50: Metric::floor("mongo_transaction_p50", transaction.percentile(50.0)),
        mongo_transaction_p95: Metric::floor("mongo_transaction_p95", transaction.percentile(95.0)),
        mongo_transaction_two_p50: Metric::floor(
            "mongo_transaction_two_updates_p50",
            transaction_two.percentile(50.0),
        ),
    };
    floors.valkey_set_get_p50.print();
    floors.valkey_set_get_p95.print();
    Metric::floor("mongo_insert_find_p50", insert_find.percentile(50.0)).print();
    Metric::floor("mongo_insert_find_p95", insert_find.percentile(95.0)).print();
    floors.mongo_insert_p50.print();
    floors.mongo_update_p50.print();
    floors.mongo_update_p95.print();
    floors.mongo_transaction_p50.print();
    floors.mongo_transaction_p95.print();
    floors.mongo_transaction_two_p50.print();
    Ok(floors)
}

/// A session with a transaction started, under the majority write concern every fenced write uses.
async fn transaction_on(mongo: &mongodb::Client) -> mongodb::error::Result<mongodb::ClientSession> {
    let mut session = mongo.start_session().await?;
    session
        .start_transaction()
        .write_concern(mongodb::options::WriteConcern::majority())
        .await?;
    Ok(session)
}
