//! Property test: random interleavings of acquire / take-over / renew / release / expiry / write
//! from several holders, checked against an exact model of the lease and against the fencing
//! invariant (no write with a lower token after an acquisition with a higher one).

mod common;

use std::time::Duration;

use common::Env;
use prexor_coord::{Lease, Leases};
use prexor_domain::{LeaseTiming, Scope};
use prexor_store::bson::doc;
use prexor_store::{StoreError, Write};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire(usize),
    TakeOver(usize),
    Renew(usize),
    Release(usize),
    Write(usize),
    /// The lease key disappears (TTL ran out, or Valkey lost its data).
    Expire,
}

const HOLDERS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    let h = 0..HOLDERS;
    prop_oneof![
        3 => h.clone().prop_map(Op::Acquire),
        1 => h.clone().prop_map(Op::TakeOver),
        2 => h.clone().prop_map(Op::Renew),
        2 => h.clone().prop_map(Op::Release),
        5 => h.prop_map(Op::Write),
        1 => Just(Op::Expire),
    ]
}

async fn run_case(env: &Env, case: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let scope = Scope::Group(format!("case-{case}"));
    // Long TTL: expiry happens only through Op::Expire, so the model is exact.
    let timing = LeaseTiming {
        ttl: Duration::from_secs(120),
        renew_interval: Duration::from_secs(30),
        self_fence_after: Duration::from_secs(90),
    };
    let holders: Vec<Leases> = (0..HOLDERS)
        .map(|h| {
            Leases::new(
                std::sync::Arc::new(env.valkey.clone()),
                env.store.clone(),
                format!("h{h}"),
                env.stores.namespace.clone(),
                timing,
            )
        })
        .collect();
    let mut held: Vec<Option<Lease>> = vec![None; HOLDERS];
    // Model: who the store says holds the key (holder, token), and the highest token acquired.
    let mut current: Option<(usize, u64)> = None;
    let mut highest_acquired = 0u64;
    let mut written: Vec<u64> = Vec::new();
    let coll = format!("log_{case}");

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Acquire(h) => {
                let got = holders[h].acquire(&scope).await.map_err(fail)?;
                prop_assert_eq!(
                    got.is_some(),
                    current.is_none(),
                    "step {}: acquire by h{}",
                    step,
                    h
                );
                if let Some(lease) = got {
                    prop_assert!(lease.token() > highest_acquired, "tokens must grow");
                    highest_acquired = lease.token();
                    current = Some((h, lease.token()));
                    held[h] = Some(lease);
                }
            }
            Op::TakeOver(h) => {
                let lease = holders[h].take_over(&scope).await.map_err(fail)?;
                prop_assert!(lease.token() > highest_acquired, "tokens must grow");
                highest_acquired = lease.token();
                current = Some((h, lease.token()));
                held[h] = Some(lease);
            }
            Op::Renew(h) => {
                if let Some(lease) = &held[h] {
                    let ok = holders[h].renew(lease).await.map_err(fail)?;
                    prop_assert_eq!(
                        ok,
                        current == Some((h, lease.token())),
                        "step {}: renew by h{}",
                        step,
                        h
                    );
                }
            }
            Op::Release(h) => {
                if let Some(lease) = held[h].take() {
                    let released = holders[h].release(&lease).await.map_err(fail)?;
                    let mine = current == Some((h, lease.token()));
                    prop_assert_eq!(released, mine, "step {}: release by h{}", step, h);
                    if mine {
                        current = None;
                    }
                }
            }
            Op::Write(h) => {
                if let Some(lease) = &held[h] {
                    let write = Write::insert(
                        &coll,
                        doc! { "_id": step as i64, "token": lease.token() as i64 },
                    );
                    match env.store.fenced_write(&lease.fence(), vec![write]).await {
                        Ok(_) => {
                            prop_assert!(
                                lease.token() >= highest_acquired,
                                "step {}: token {} wrote after token {} acquired",
                                step,
                                lease.token(),
                                highest_acquired
                            );
                            written.push(lease.token());
                        }
                        Err(StoreError::StaleFence { mark, .. }) => {
                            prop_assert!(
                                lease.token() < highest_acquired,
                                "step {}: the newest token {} was refused (mark {})",
                                step,
                                lease.token(),
                                mark
                            );
                        }
                        Err(other) => return Err(fail(other)),
                    }
                }
            }
            Op::Expire => {
                let mut raw = env.stores.valkey().await.map_err(fail)?;
                let _: () = redis::cmd("DEL")
                    .arg(holders[0].key(&scope))
                    .query_async(&mut raw)
                    .await
                    .map_err(fail)?;
                current = None;
            }
        }
    }
    prop_assert!(
        written.windows(2).all(|w| w[0] <= w[1]),
        "applied tokens went backwards: {:?}",
        written
    );
    Ok(())
}

fn fail(err: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(err.to_string())
}

#[test]
fn no_lower_token_ever_writes_after_a_higher_one() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let env = runtime.block_on(Env::new("interleavings")).unwrap();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..30))| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        runtime.block_on(run_case(&env, n, ops))?;
    });
}
