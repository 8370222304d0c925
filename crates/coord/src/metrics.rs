//! Lease metrics, exported on every replica's `/metrics`.
//!
//! - `prexor_lease_acquisitions_total{kind}`: leases acquired or taken over.
//! - `prexor_lease_contention_total{scope}`: acquisition attempts that found the scope held.
//! - `prexor_lease_stale_acquisitions_total{kind}`: acquisitions abandoned because a higher
//!   token had already marked the scope.
//! - `prexor_lease_renew_failures_total{kind}`: renewals refused or not answered.
//! - `prexor_lease_losses_total{kind,reason}`: leases lost while held (`refused`, `self-fenced`).
//! - `prexor_leases_held{kind}`: leases a keeper currently holds.

use prexor_domain::Scope;

pub(crate) fn acquired(scope: &Scope) {
    metrics::counter!("prexor_lease_acquisitions_total", "kind" => scope.kind().as_str())
        .increment(1);
}

pub(crate) fn contended(scope: &Scope) {
    metrics::counter!("prexor_lease_contention_total", "scope" => scope.to_string()).increment(1);
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
