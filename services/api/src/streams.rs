//! Caps on long-lived streams (`/events`, instance consoles): a caller holds at most
//! [`PER_CALLER`] at once and a replica at most [`PER_REPLICA`]; past them a new stream gets 429
//! at once, so viewers cannot exhaust a replica (or, through it, Valkey).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Streams one caller (a user, whichever credentials it uses) may hold open on one replica.
pub const PER_CALLER: usize = 8;
/// Streams one replica serves at once.
pub const PER_REPLICA: usize = 512;

/// Who holds how many streams on this replica.
#[derive(Default)]
pub struct StreamCounts(Mutex<(usize, HashMap<String, usize>)>);

/// One open stream; dropping it frees its place.
pub struct StreamSlot {
    app: App,
    caller: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.app.streams.0.lock().expect("stream counts lock");
        counts.0 = counts.0.saturating_sub(1);
        if let Some(held) = counts.1.get_mut(&self.caller) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.1.remove(&self.caller);
            }
        }
        metrics::gauge!("prexor_api_streams_open").set(counts.0 as f64);
    }
}

/// A place for one more stream of `who`, or 429 naming the cap it would pass.
pub fn open(app: &App, who: &Principal) -> ApiResult<StreamSlot> {
    let caller = if who.user_id.is_empty() {
        who.user.clone()
    } else {
        who.user_id.clone()
    };
    let mut counts = app.streams.0.lock().expect("stream counts lock");
    let held = counts.1.get(&caller).copied().unwrap_or(0);
    if held >= PER_CALLER {
        metrics::counter!("prexor_api_streams_refused_total", "cap" => "caller").increment(1);
        return Err(ApiError::too_many(
            ErrorCode::TooManyStreams,
            format!(
                "user {:?} already has {held} streams open on this replica (at most {PER_CALLER}); close one first",
                who.user
            ),
            5,
        ));
    }
    if counts.0 >= PER_REPLICA {
        metrics::counter!("prexor_api_streams_refused_total", "cap" => "replica").increment(1);
        return Err(ApiError::too_many(
            ErrorCode::TooManyStreams,
            format!(
                "this replica serves {PER_REPLICA} streams already; try another replica or later"
            ),
            5,
        ));
    }
    counts.0 += 1;
    *counts.1.entry(caller.clone()).or_default() += 1;
    metrics::gauge!("prexor_api_streams_open").set(counts.0 as f64);
    Ok(StreamSlot {
        app: app.clone(),
        caller,
    })
}
