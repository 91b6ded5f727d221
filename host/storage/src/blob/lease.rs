//! The lease state machine shared by blobs and containers (Azure "Lease Blob" / "Lease
//! Container"): available, leased, expired, breaking, broken. States that depend on time
//! (leased -> expired, breaking -> broken) are resolved lazily against the clock.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::BlobError;

/// Shortest and longest finite lease, in seconds (or infinite).
pub const LEASE_SECONDS: std::ops::RangeInclusive<u32> = 15..=60;
/// Longest break period, in seconds.
pub const MAX_BREAK_PERIOD: u32 = 60;

/// A lease operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Take the lease for `duration` seconds (15..=60) or forever (`None`).
    Acquire {
        /// Seconds, or `None` for an infinite lease.
        duration: Option<u32>,
        /// The id to use (a new GUID if `None`).
        proposed_id: Option<String>,
    },
    /// Restart the holder's lease clock.
    Renew {
        /// The current lease id.
        id: String,
    },
    /// Give the lease a new id.
    Change {
        /// The current lease id.
        id: String,
        /// The new id.
        proposed_id: String,
    },
    /// Give the lease up.
    Release {
        /// The current lease id.
        id: String,
    },
    /// End the lease after `period` seconds (0..=60); `None`: when a fixed lease ends, or at
    /// once for an infinite one.
    Break {
        /// Seconds.
        period: Option<u32>,
    },
}

/// Azure's lease headers for a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// `available`, `leased`, `expired`, `breaking` or `broken`.
    pub state: &'static str,
    /// `locked` or `unlocked`.
    pub status: &'static str,
    /// `infinite` or `fixed` while leased.
    pub duration: Option<&'static str>,
}

/// What a lease operation returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseOutcome {
    /// The lease id (acquire, renew, change).
    pub lease_id: Option<String>,
    /// Seconds until the break completes (break).
    pub lease_time: Option<u32>,
}

/// A blob's or a container's lease as every engine stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseRecord {
    /// Never leased, or released.
    #[default]
    Available,
    /// Held.
    Leased {
        /// The lease id.
        id: String,
        /// When it ends (`None`: infinite).
        expires: Option<Timestamp>,
        /// Its duration in seconds (`None`: infinite).
        duration: Option<u32>,
    },
    /// Being broken.
    Breaking {
        /// The lease id.
        id: String,
        /// When the break completes.
        break_at: Timestamp,
    },
    /// Broken.
    Broken {
        /// The lease id it had.
        id: String,
    },
    /// Ended by time.
    Expired {
        /// The lease id it had.
        id: String,
    },
}

impl LeaseRecord {
    /// The state now: a lease past its end has expired; a break past its time is broken.
    pub fn at(&self, now: Timestamp) -> LeaseRecord {
        match self {
            LeaseRecord::Leased {
                id,
                expires: Some(e),
                ..
            } if *e <= now => LeaseRecord::Expired { id: id.clone() },
            LeaseRecord::Breaking { id, break_at } if *break_at <= now => {
                LeaseRecord::Broken { id: id.clone() }
            }
            other => other.clone(),
        }
    }

    /// What Get Properties shows of it at `now`.
    pub fn info(&self, now: Timestamp) -> LeaseInfo {
        match self.at(now) {
            LeaseRecord::Available => LeaseInfo {
                state: "available",
                status: "unlocked",
                duration: None,
            },
            LeaseRecord::Leased { duration, .. } => LeaseInfo {
                state: "leased",
                status: "locked",
                duration: Some(if duration.is_some() {
                    "fixed"
                } else {
                    "infinite"
                }),
            },
            LeaseRecord::Breaking { .. } => LeaseInfo {
                state: "breaking",
                status: "locked",
                duration: None,
            },
            LeaseRecord::Broken { .. } => LeaseInfo {
                state: "broken",
                status: "unlocked",
                duration: None,
            },
            LeaseRecord::Expired { .. } => LeaseInfo {
                state: "expired",
                status: "unlocked",
                duration: None,
            },
        }
    }

    /// The id of a lease that currently locks the resource (leased or breaking).
    fn active_id(&self, now: Timestamp) -> Option<String> {
        match self.at(now) {
            LeaseRecord::Leased { id, .. } | LeaseRecord::Breaking { id, .. } => Some(id),
            _ => None,
        }
    }

    /// May a write carrying `lease_id` go ahead?
    pub fn check_write(
        &self,
        lease_id: Option<&str>,
        now: Timestamp,
        container: bool,
    ) -> Result<(), BlobError> {
        match (self.active_id(now), lease_id) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(BlobError::LeaseIdMissing),
            (Some(active), Some(given)) if active.eq_ignore_ascii_case(given) => Ok(()),
            (Some(_), Some(_)) if container => {
                Err(BlobError::LeaseIdMismatchWithContainerOperation)
            }
            (Some(_), Some(_)) => Err(BlobError::LeaseIdMismatchWithBlobOperation),
            (None, Some(_)) if container => Err(BlobError::LeaseNotPresentWithContainerOperation),
            (None, Some(_)) => Err(BlobError::LeaseNotPresentWithBlobOperation),
        }
    }

    /// May a read carrying `lease_id` go ahead? Reads need no id, but a wrong one fails.
    pub fn check_read(
        &self,
        lease_id: Option<&str>,
        now: Timestamp,
        container: bool,
    ) -> Result<(), BlobError> {
        match lease_id {
            None => Ok(()),
            Some(_) => self.check_write(lease_id, now, container),
        }
    }

    /// Applies `action` at `now`, returning the new record and the outcome.
    pub fn apply(
        &self,
        action: &LeaseAction,
        now: Timestamp,
        new_id: impl FnOnce() -> String,
    ) -> Result<(LeaseRecord, LeaseOutcome), BlobError> {
        use LeaseRecord as R;
        let current = self.at(now);
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let leased = |id: String, duration: Option<u32>| R::Leased {
            id,
            expires: duration
                .map(|d| now.saturating_add(std::time::Duration::from_secs(u64::from(d)))),
            duration,
        };
        let ok = |rec: R, id: Option<String>| {
            Ok((
                rec,
                LeaseOutcome {
                    lease_id: id,
                    lease_time: None,
                },
            ))
        };
        match action {
            LeaseAction::Acquire {
                duration,
                proposed_id,
            } => {
                if duration.is_some_and(|d| !LEASE_SECONDS.contains(&d)) {
                    return Err(BlobError::InvalidLeaseParameter(
                        "lease duration must be 15..=60 seconds or infinite (-1)",
                    ));
                }
                match &current {
                    R::Leased { id, .. } => match proposed_id {
                        Some(p) if same(p, id) => {
                            ok(leased(id.clone(), *duration), Some(id.clone()))
                        }
                        _ => Err(BlobError::LeaseAlreadyPresent),
                    },
                    R::Breaking { id, .. } => match proposed_id {
                        Some(p) if same(p, id) => {
                            Err(BlobError::LeaseIsBreakingAndCannotBeAcquired)
                        }
                        _ => Err(BlobError::LeaseAlreadyPresent),
                    },
                    R::Available | R::Expired { .. } | R::Broken { .. } => {
                        let id = proposed_id.clone().unwrap_or_else(new_id);
                        ok(leased(id.clone(), *duration), Some(id))
                    }
                }
            }
            LeaseAction::Renew { id: given } => match &current {
                R::Available => Err(BlobError::LeaseNotPresentWithLeaseOperation),
                R::Leased { id, .. } | R::Expired { id } if same(id, given) => {
                    // An expired lease renews only if nobody leased since: it is still ours
                    // here. It keeps the duration it was acquired with.
                    let duration = match self {
                        R::Leased { duration, .. } => *duration,
                        _ => None,
                    };
                    ok(leased(id.clone(), duration), Some(id.clone()))
                }
                R::Breaking { id, .. } if same(id, given) => {
                    Err(BlobError::LeaseIsBreakingAndCannotBeAcquired)
                }
                R::Broken { id } if same(id, given) => {
                    Err(BlobError::LeaseIsBrokenAndCannotBeRenewed)
                }
                _ => Err(BlobError::LeaseIdMismatchWithLeaseOperation),
            },
            LeaseAction::Change {
                id: given,
                proposed_id,
            } => match &current {
                R::Leased {
                    id,
                    expires,
                    duration,
                } if same(id, given) || same(id, proposed_id) => ok(
                    R::Leased {
                        id: proposed_id.clone(),
                        expires: *expires,
                        duration: *duration,
                    },
                    Some(proposed_id.clone()),
                ),
                R::Leased { .. } => Err(BlobError::LeaseIdMismatchWithLeaseOperation),
                R::Breaking { id, .. } if same(id, given) => {
                    Err(BlobError::LeaseIsBreakingAndCannotBeChanged)
                }
                R::Breaking { .. } => Err(BlobError::LeaseIdMismatchWithLeaseOperation),
                _ => Err(BlobError::LeaseNotPresentWithLeaseOperation),
            },
            LeaseAction::Release { id: given } => match &current {
                R::Available => Err(BlobError::LeaseNotPresentWithLeaseOperation),
                R::Leased { id, .. }
                | R::Breaking { id, .. }
                | R::Broken { id }
                | R::Expired { id }
                    if same(id, given) =>
                {
                    ok(R::Available, None)
                }
                _ => Err(BlobError::LeaseIdMismatchWithLeaseOperation),
            },
            LeaseAction::Break { period } => {
                if period.is_some_and(|p| p > MAX_BREAK_PERIOD) {
                    return Err(BlobError::InvalidLeaseParameter(
                        "break period must be 0..=60 seconds",
                    ));
                }
                let secs_until = |t: Timestamp| -> u32 {
                    let s = t.saturating_duration_since(now).as_secs_f64().ceil();
                    s as u32
                };
                let requested = period
                    .map(|p| now.saturating_add(std::time::Duration::from_secs(u64::from(p))));
                let break_at = match &current {
                    R::Leased { expires, .. } => match (requested, expires) {
                        (Some(r), Some(e)) => r.min(*e),
                        (Some(r), None) => r,
                        (None, Some(e)) => *e,
                        (None, None) => now,
                    },
                    R::Breaking { break_at, .. } => {
                        requested.map_or(*break_at, |r| r.min(*break_at))
                    }
                    R::Broken { id } => {
                        return Ok((
                            R::Broken { id: id.clone() },
                            LeaseOutcome {
                                lease_id: None,
                                lease_time: Some(0),
                            },
                        ));
                    }
                    R::Available | R::Expired { .. } => {
                        return Err(BlobError::LeaseNotPresentWithLeaseOperation);
                    }
                };
                let id = match &current {
                    R::Leased { id, .. } | R::Breaking { id, .. } => id.clone(),
                    _ => String::new(),
                };
                let rec = if break_at <= now {
                    R::Broken { id }
                } else {
                    R::Breaking { id, break_at }
                };
                Ok((
                    rec,
                    LeaseOutcome {
                        lease_id: None,
                        lease_time: Some(secs_until(break_at)),
                    },
                ))
            }
        }
    }
}
