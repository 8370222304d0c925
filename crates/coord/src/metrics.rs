//! Lease metrics, exported on every replica's `/metrics`.
//!
//! - `prexor_lease_acquisitions_total{kind}`: leases acquired or taken over.
//! - `prexor_lease_contention_total{kind}`: acquisition attempts that found the scope held.
//! - `prexor_lease_stale_acquisitions_total{kind}`: acquisitions abandoned because a higher
//!   token had already marked the scope.
//! - `prexor_lease_renew_failures_total{kind}`: renewals refused or not answered.
//! - `prexor_lease_losses_total{kind,reason}`: leases lost while held (`refused`, `self-fenced`).
//! - `prexor_leases_held{kind}`: leases a keeper currently holds.
//! - `prexor_lease_last_renewal_timestamp_seconds{kind}`: when a keeper last renewed its leases
//!   (or took a new one), in Unix seconds.
//!
//! `kind` is a scope kind (`group`, `node`, …; [`prexor_domain::ScopeKind`]), or for the keeper
//! metrics the keeper's own label (`mixed` for one holding several kinds): never a scope's name,
//! so the series stay bounded (docs/observability.md, "Metrics").

use prexor_domain::{Scope, ScopeKind};

pub(crate) fn acquired(scope: &Scope) {
    metrics::counter!("prexor_lease_acquisitions_total", "kind" => scope.kind().as_str())
        .increment(1);
}

pub(crate) fn contended(scope: &Scope) {
    metrics::counter!("prexor_lease_contention_total", "kind" => scope.kind().as_str())
        .increment(1);
}

pub(crate) fn stale_acquisition(scope: &Scope) {
    metrics::counter!("prexor_lease_stale_acquisitions_total", "kind" => scope.kind().as_str())
        .increment(1);
}

pub(crate) fn renew_failed(scope: &Scope) {
    metrics::counter!("prexor_lease_renew_failures_total", "kind" => scope.kind().as_str())
        .increment(1);
}

pub(crate) fn lost(scope: &Scope, reason: &'static str) {
    metrics::counter!("prexor_lease_losses_total", "kind" => scope.kind().as_str(), "reason" => reason)
        .increment(1);
}

pub(crate) fn held(kind: &'static str, count: usize) {
    metrics::gauge!("prexor_leases_held", "kind" => kind).set(count as f64);
}

/// A keeper labelled `kind` started: its renewal failures are exported at 0 for every scope kind
/// it may hold (so that `increase()` sees the first failure), and its last renewal is now.
pub(crate) fn keeper_started(kind: &'static str) {
    let kinds: Vec<ScopeKind> = match ScopeKind::ALL.into_iter().find(|k| k.as_str() == kind) {
        Some(one) => vec![one],
        None => ScopeKind::ALL.to_vec(),
    };
    for scope_kind in kinds {
        metrics::counter!("prexor_lease_renew_failures_total", "kind" => scope_kind.as_str())
            .increment(0);
    }
    renewed(kind);
}

/// The keeper labelled `kind` renewed its leases (or took a new one) just now.
pub(crate) fn renewed(kind: &'static str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    metrics::gauge!("prexor_lease_last_renewal_timestamp_seconds", "kind" => kind).set(now);
}
