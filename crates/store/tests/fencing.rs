//! Fencing tokens and fenced writes against the real MongoDB-wire server.

use std::time::Duration;

use prexor_store::bson::{Document, doc};
use prexor_store::{Fence, Store, StoreError, Write};
use prexor_testkit::TestStores;

async fn stores(test: &str) -> anyhow::Result<(TestStores, Vec<(&'static str, Store)>)> {
    let t = TestStores::new(test)?;
    let store = Store::connect(
        &t.mongo_uri,
        &t.database,
        "store-tests",
        Duration::from_secs(10),
    )
    .await?;
    store.ping().await?;
    Ok((
        t,
        vec![
            ("bulk", store.clone()),
            ("per-operation", store.without_bulk_write()),
        ],
    ))
}

async fn docs(store: &Store, coll: &str) -> anyhow::Result<Vec<Document>> {
    use futures::TryStreamExt;
    Ok(store
        .documents(coll)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?)
}

#[tokio::test]
async fn tokens_strictly_increase_even_when_minted_concurrently() -> anyhow::Result<()> {
    let (_t, stores) = stores("mint").await?;
    let store = &stores[0].1;
    let mints = (0..20).map(|_| store.mint_token("group:lobby"));
    let mut tokens: Vec<u64> = futures::future::try_join_all(mints).await?;
    tokens.sort();
    assert_eq!(tokens, (1..=20).collect::<Vec<_>>());
    assert_eq!(store.mint_token("group:lobby").await?, 21);
    assert_eq!(
        store.mint_token("group:other").await?,
        1,
        "scopes count separately"
    );
    Ok(())
}

#[tokio::test]
async fn a_deposed_holder_changes_nothing_on_either_path() -> anyhow::Result<()> {
    let (_t, stores) = stores("deposed").await?;
    for (path, store) in stores {
        let scope = format!("group:{path}");
        let coll = format!("instances_{}", path.replace('-', "_"));
        let old = Fence::new(&scope, store.mint_token(&scope).await?);
        assert!(store.raise_fence(&old).await?);
        store
            .fenced_write(
                &old,
                vec![
                    Write::insert(&coll, doc! { "_id": "a", "state": "RUNNING" }),
                    Write::insert(&coll, doc! { "_id": "b", "state": "RUNNING" }),
                ],
            )
            .await?;

        let new = Fence::new(&scope, store.mint_token(&scope).await?);
        assert!(store.raise_fence(&new).await?);
        let before = docs(&store, &coll).await?;

        let stale_writes = [
            Write::insert(&coll, doc! { "_id": "c" }),
            Write::update_one(
                &coll,
                doc! { "_id": "a" },
                doc! { "$set": { "state": "STOPPED" } },
            ),
            Write::update_many(&coll, doc! {}, doc! { "$set": { "state": "STOPPED" } }),
            Write::update_one(&coll, doc! { "_id": "z" }, doc! { "$set": { "x": 1 } }).upsert(),
            Write::replace_one(&coll, doc! { "_id": "b" }, doc! { "state": "GONE" }),
            Write::delete_one(&coll, doc! { "_id": "a" }),
            Write::delete_many(&coll, doc! {}),
        ];
        for write in stale_writes {
            let err = store
                .fenced_write(&old, vec![write.clone()])
                .await
                .unwrap_err();
            match err {
                StoreError::StaleFence { token, mark, .. } => {
                    assert_eq!((token, mark), (old.token, new.token), "{path}: {write:?}");
                }
                other => panic!("{path}: {write:?} gave {other}"),
            }
        }
        // A multi-document write with a stale token: nothing of it lands.
        let err = store
            .fenced_write(
                &old,
                vec![
                    Write::insert(&coll, doc! { "_id": "d" }),
                    Write::delete_one(&coll, doc! { "_id": "b" }),
                ],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::StaleFence { .. }),
            "{path}: {err}"
        );
        assert_eq!(
            docs(&store, &coll).await?,
            before,
            "{path}: the stale holder changed something"
        );

        // The new holder writes normally, and every document names the token that last wrote it.
        store
            .fenced_write(
                &new,
                vec![
                    Write::update_one(
                        &coll,
                        doc! { "_id": "a" },
                        doc! { "$set": { "state": "DRAINING" } },
                    )
                    .require_match(),
                ],
            )
            .await?;
        let a = store
            .documents(&coll)
            .find_one(doc! { "_id": "a" })
            .await?
            .unwrap();
        assert_eq!(a.get_str("state")?, "DRAINING");
        assert_eq!(
            a.get_document("_fence")?.get_i64("token")?,
            new.token as i64
        );
        assert_eq!(store.fence_mark(&scope).await?, new.token);
    }
    Ok(())
}

#[tokio::test]
async fn a_failed_precondition_undoes_the_whole_write() -> anyhow::Result<()> {
    let (_t, stores) = stores("precondition").await?;
    for (path, store) in stores {
        let scope = format!("group:{path}");
        let coll = format!("plans_{}", path.replace('-', "_"));
        let fence = Fence::new(&scope, store.mint_token(&scope).await?);
        assert!(store.raise_fence(&fence).await?);
        let err = store
            .fenced_write(
                &fence,
                vec![
                    Write::insert(&coll, doc! { "_id": "plan-1" }),
                    Write::update_one(
                        &coll,
                        doc! { "_id": "missing" },
                        doc! { "$set": { "x": 1 } },
                    )
                    .require_match(),
                ],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Precondition { .. }),
            "{path}: {err}"
        );
        assert!(
            docs(&store, &coll).await?.is_empty(),
            "{path}: the insert was kept"
        );

        let outcomes = store
            .fenced_write(
                &fence,
                vec![
                    Write::insert(&coll, doc! { "_id": "plan-1" }),
                    Write::update_one(&coll, doc! { "_id": "plan-1" }, doc! { "$set": { "x": 1 } })
                        .require_match(),
                    Write::update_one(&coll, doc! { "_id": "plan-2" }, doc! { "$set": { "x": 2 } })
                        .upsert()
                        .require_match(),
                ],
            )
            .await?;
        assert_eq!(outcomes[1].modified, 1, "{path}");
        assert!(
            outcomes[2].upserted_id.is_some(),
            "{path}: an upsert satisfies require_match"
        );
        assert_eq!(docs(&store, &coll).await?.len(), 2, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn a_lower_token_cannot_lower_the_mark() -> anyhow::Result<()> {
    let (_t, stores) = stores("mark").await?;
    let store = &stores[0].1;
    let first = store.mint_token("platform-module").await?;
    let second = store.mint_token("platform-module").await?;
    assert!(
        store
            .raise_fence(&Fence::new("platform-module", second))
            .await?
    );
    assert!(
        !store
            .raise_fence(&Fence::new("platform-module", first))
            .await?,
        "a slower acquisition with a lower token must be told it lost"
    );
    assert_eq!(store.fence_mark("platform-module").await?, second);
    Ok(())
}

#[tokio::test]
async fn malformed_writes_are_refused_before_anything_is_sent() -> anyhow::Result<()> {
    let (_t, stores) = stores("malformed").await?;
    let store = &stores[0].1;
    let fence = Fence::new("group:x", store.mint_token("group:x").await?);
    for (write, expected) in [
        (
            Write::update_one("c", doc! {}, doc! { "state": "x" }),
            "update operators",
        ),
        (
            Write::replace_one("c", doc! {}, doc! { "$set": { "a": 1 } }),
            "must not contain update operators",
        ),
        (
            Write::insert("fences", doc! { "_id": "group:y" }),
            "fences collection",
        ),
    ] {
        let err = store.fenced_write(&fence, vec![write]).await.unwrap_err();
        assert!(matches!(err, StoreError::BadWrite { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert_eq!(
        store.fence_mark("group:x").await?,
        0,
        "nothing was written, not even the fence"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_unavailable_within_the_timeout() -> anyhow::Result<()>
{
    let port = prexor_testkit::free_port();
    let store = Store::connect(
        &format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        "nothing",
        "store-tests",
        Duration::from_millis(500),
    )
    .await?;
    let err = store.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let err = store.mint_token("group:x").await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    Ok(())
}

#[tokio::test]
async fn blobs_are_content_addressed_and_chunked() -> anyhow::Result<()> {
    let stores = TestStores::new("blobs")?;
    let store = stores.store("blobs").await?;
    // Three chunks: 1 MiB, 1 MiB and a remainder.
    let bytes: Vec<u8> = (0..(2 * 1024 * 1024 + 12_345))
        .map(|i| (i % 251) as u8)
        .collect();
    let hash = store.put_blob(&bytes).await?;
    assert_eq!(hash, prexor_store::blob_hash(&bytes));
    assert_eq!(store.put_blob(&bytes).await?, hash, "stored once");
    assert_eq!(store.blob_size(&hash).await?, Some(bytes.len() as u64));
    assert_eq!(store.get_blob(&hash).await?.as_deref(), Some(&bytes[..]));
    assert_eq!(store.get_blob(&"0".repeat(64)).await?, None);
    let empty = store.put_blob(b"").await?;
    assert_eq!(store.get_blob(&empty).await?, Some(Vec::new()));

    // From a file, a chunk at a time, and back out to one.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("layer");
    let other: Vec<u8> = bytes.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&file, &other)?;
    let other_hash = prexor_store::blob_hash(&other);
    store.put_blob_file(&file, &other_hash).await?;
    let (size, chunks) = store.blob_chunks(&other_hash).await?.unwrap();
    assert_eq!(size, other.len() as u64);
    let pieces: Vec<Vec<u8>> = futures::TryStreamExt::try_collect(chunks).await?;
    assert_eq!(pieces.len(), 3, "served a stored chunk at a time");
    assert_eq!(pieces.concat(), other);
    let out = dir.path().join("out");
    assert!(store.blob_to_file(&other_hash, &out).await?);
    assert_eq!(std::fs::read(&out)?, other);
    // A file that does not have the hash it is stored under is refused, and nothing is kept.
    let wrong = "1".repeat(64);
    let err = store.put_blob_file(&file, &wrong).await.unwrap_err();
    assert!(
        err.to_string().contains("changed while it was stored"),
        "{err}"
    );
    assert_eq!(store.blob_size(&wrong).await?, None);
    assert!(store.blob_chunks(&wrong).await?.is_none());
    Ok(())
}
