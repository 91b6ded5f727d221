//! Client-side retry policies and timeouts, as the 2008 StorageClient had them.
//!
//! Only transient failures are retried ([`Error::is_transient`]): timeouts, internal errors,
//! "server busy". A retried write may have taken effect the first time (a lost response looks
//! like a lost request), so retrying is safe only for idempotent work: conditional writes with
//! an ETag, puts of the same content, deletes that treat "not found" as done.
//!
//! ```no_run
//! use std::time::Duration;
//! use rolehost_sdk::retry::RetryPolicy;
//!
//! // Everything this instance does from now on:
//! rolehost_sdk::retry::set_default(RetryPolicy::exponential(4, Duration::from_millis(200)));
//! // One client only:
//! let queue = rolehost_sdk::Queue::new("orders").with_retry(RetryPolicy::NoRetry);
//! ```

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::Error;
use crate::error::{ErrorCode, Result};

/// How a failed call is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Fail at once.
    NoRetry,
    /// Retry up to `count` times, `interval` apart.
    Fixed {
        /// Retries after the first attempt.
        count: u32,
        /// Wait between attempts.
        interval: Duration,
    },
    /// Retry up to `count` times, waiting `delta * (2^n - 1)` before retry `n` (so `delta`,
    /// `3 delta`, `7 delta`, ...), clamped to `min..=max`.
    Exponential {
        /// Retries after the first attempt.
        count: u32,
        /// The backoff unit.
        delta: Duration,
        /// Shortest wait.
        min: Duration,
        /// Longest wait.
        max: Duration,
    },
}

impl RetryPolicy {
    /// The StorageClient default: 3 retries with exponential backoff from `delta`, waits
    /// between 3 s and 90 s scaled down by `delta` (a `delta` of 100 ms gives 100, 300, 700 ms).
    pub fn exponential(count: u32, delta: Duration) -> Self {
        RetryPolicy::Exponential {
            count,
            delta,
            min: delta,
            max: delta.saturating_mul(30),
        }
    }

    /// `count` retries, `interval` apart.
    pub fn fixed(count: u32, interval: Duration) -> Self {
        RetryPolicy::Fixed { count, interval }
    }

    /// The wait before retry number `retry` (1-based), or `None` when retries are used up.
    pub fn backoff(&self, retry: u32) -> Option<Duration> {
        match *self {
            RetryPolicy::NoRetry => None,
            RetryPolicy::Fixed { count, interval } => (retry <= count).then_some(interval),
            RetryPolicy::Exponential {
                count,
                delta,
                min,
                max,
            } => {
                if retry > count {
                    return None;
                }
                let factor = 2u32.saturating_pow(retry.min(31)).saturating_sub(1);
                Some(delta.saturating_mul(factor).clamp(min, max.max(min)))
            }
        }
    }
}

impl Default for RetryPolicy {
    /// Exponential, 3 retries from 100 ms.
    fn default() -> Self {
        RetryPolicy::exponential(3, Duration::from_millis(100))
    }
}

/// A policy and an overall timeout: what every SDK client carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallOptions {
    /// The retry policy.
    pub retry: RetryPolicy,
    /// The whole operation, retries included, gives up with [`ErrorCode::Timeout`] once this
    /// has passed. A single host call is not cut short: it is bounded by the host.
    pub timeout: Duration,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(90),
        }
    }
}

thread_local! {
    static DEFAULT: Cell<CallOptions> = Cell::new(CallOptions::default());
}

/// Sets the retry policy of clients made from now on without their own.
pub fn set_default(policy: RetryPolicy) {
    DEFAULT.with(|d| {
        let mut o = d.get();
        o.retry = policy;
        d.set(o)
    });
}

/// Sets the timeout of clients made from now on without their own.
pub fn set_default_timeout(timeout: Duration) {
    DEFAULT.with(|d| {
        let mut o = d.get();
        o.timeout = timeout;
        d.set(o)
    });
}

/// The defaults new clients take.
pub fn defaults() -> CallOptions {
    DEFAULT.with(|d| d.get())
}

/// Runs `op` under `options`: retries transient failures with the policy's backoff until the
/// policy or the timeout says stop, or the host asks the instance to stop.
pub(crate) fn call<T>(
    options: &CallOptions,
    mut op: impl FnMut() -> Result<T, crate::bindings::rolehost::platform::types::StorageError>,
) -> Result<T> {
    let started = Instant::now();
    let mut retry = 0;
    loop {
        crate::processing::heartbeat_if_due();
        let err = match op() {
            Ok(v) => return Ok(v),
            Err(e) => Error::from(e),
        };
        if !err.is_transient() {
            return Err(err);
        }
        retry += 1;
        let Some(wait) = options.retry.backoff(retry) else {
            return Err(err);
        };
        let elapsed = started.elapsed();
        if elapsed + wait >= options.timeout {
            return Err(Error::local(
                ErrorCode::Timeout,
                format!(
                    "gave up after {retry} attempt(s) in {elapsed:?} (timeout {:?}); last error: {err}",
                    options.timeout
                ),
            ));
        }
        if crate::env::wait_for_stop(wait) {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_grows_and_stops() {
        let p = RetryPolicy::exponential(3, Duration::from_millis(100));
        assert_eq!(p.backoff(1), Some(Duration::from_millis(100)));
        assert_eq!(p.backoff(2), Some(Duration::from_millis(300)));
        assert_eq!(p.backoff(3), Some(Duration::from_millis(700)));
        assert_eq!(p.backoff(4), None);
        let capped = RetryPolicy::Exponential {
            count: 10,
            delta: Duration::from_secs(1),
            min: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        assert_eq!(capped.backoff(9), Some(Duration::from_secs(5)));
    }

    #[test]
    fn fixed_and_none() {
        let p = RetryPolicy::fixed(2, Duration::from_millis(50));
        assert_eq!(p.backoff(2), Some(Duration::from_millis(50)));
        assert_eq!(p.backoff(3), None);
        assert_eq!(RetryPolicy::NoRetry.backoff(1), None);
    }
}
