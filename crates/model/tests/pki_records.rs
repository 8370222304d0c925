//! Join tokens, the published CA and the revocation list against the MongoDB-wire server.

use std::time::Duration;

use prexor_model::pki::{self as records, JoinError};
use prexor_pki::JoinToken;
use prexor_pki::{CertificateAuthority, Identity, KeyAndCsr, ServiceNames};
use prexor_store::Store;
use prexor_testkit::TestStores;

async fn store(test: &str) -> anyhow::Result<(TestStores, Store)> {
    let stores = TestStores::new(test)?;
    let store = stores.store(test).await?;
    Ok((stores, store))
}

#[tokio::test]
async fn the_cluster_ca_is_published_once() -> anyhow::Result<()> {
    let (_stores, store) = store("pki-publish").await?;
    assert!(records::published_ca(&store).await?.is_none());
    let (first, _) = CertificateAuthority::generate("c")?;
    let (second, _) = CertificateAuthority::generate("c")?;
    assert!(
        records::publish_ca(&store, first.certificate(), "ca-1")
            .await?
            .is_ok()
    );
    let refused = records::publish_ca(&store, second.certificate(), "ca-2").await?;
    let existing = refused.expect_err("a second CA is refused");
    assert_eq!(existing.certificate, *first.certificate());
    assert_eq!(existing.created_by, "ca-1");
    let published = records::published_ca(&store).await?.expect("published");
    assert_eq!(
        published.certificate.fingerprint,
        first.certificate().fingerprint
    );
    Ok(())
}

#[tokio::test]
async fn join_tokens_are_single_use_bound_and_expiring() -> anyhow::Result<()> {
    let (_stores, store) = store("pki-join").await?;
    let (ca, _) = CertificateAuthority::generate("c")?;
    let hour = Duration::from_secs(3600);
    let (token, _) =
        records::create_join_token(&store, "node-1", ca.certificate(), hour, "t").await?;
    let parsed = JoinToken::parse(&token.to_string())?;
    assert_eq!(parsed.ca_fingerprint, ca.certificate().fingerprint);

    // Bound to its node.
    let err = records::claim_join_token(&store, &parsed, "node-2")
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::WrongNode { .. }), "{err}");

    // Eight concurrent redemptions: exactly one claims it.
    let attempts = futures::future::join_all(
        (0..8).map(|_| records::claim_join_token(&store, &parsed, "node-1")),
    )
    .await;
    let (won, lost): (Vec<_>, Vec<_>) = attempts.into_iter().partition(|r| r.is_ok());
    assert_eq!(won.len(), 1, "exactly one redemption wins");
    assert!(lost.iter().all(|r| matches!(r, Err(JoinError::Busy))));

    // Released (signing failed): redeemable again; completed: used for good.
    let claim = won.into_iter().next().expect("one")?;
    records::release_join_token(&store, claim).await?;
    let claim = records::claim_join_token(&store, &parsed, "node-1").await?;
    records::complete_join_token(&store, claim, "4a").await?;
    let err = records::claim_join_token(&store, &parsed, "node-1")
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Used), "{err}");

    // Expired.
    let (short, _) = records::create_join_token(
        &store,
        "node-3",
        ca.certificate(),
        Duration::from_millis(1),
        "t",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = records::claim_join_token(&store, &short, "node-3")
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Expired), "{err}");

    // Unknown (another cluster's, or mistyped).
    let (other_ca, _) = CertificateAuthority::generate("other")?;
    let foreign = format!(
        "pxj1.node-1.{}.{}",
        "ab".repeat(32),
        other_ca.certificate().fingerprint
    );
    let err = records::claim_join_token(&store, &JoinToken::parse(&foreign)?, "node-1")
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Unknown), "{err}");
    Ok(())
}

#[tokio::test]
async fn revoked_serials_are_listed() -> anyhow::Result<()> {
    let (_stores, store) = store("pki-revoke").await?;
    let (ca, _) = CertificateAuthority::generate("c")?;
    let csr = KeyAndCsr::new(&Identity::Node("n1".into()), &ServiceNames::default())?;
    let issued = ca.sign_node("n1", &csr.csr_pem, Duration::from_secs(3600))?;
    records::record_issued(&store, &issued, "ca-1").await?;
    assert!(
        records::revocation(&store, &issued.info.serial)
            .await?
            .is_none()
    );
    assert!(records::revoke(&store, &issued.info.serial, "host decommissioned").await?);
    let (at, reason) = records::revocation(&store, &issued.info.serial)
        .await?
        .expect("revoked");
    assert!(at > 0);
    assert_eq!(reason, "host decommissioned");
    assert!(!records::revoke(&store, "ffff", "unknown").await?);
    Ok(())
}
