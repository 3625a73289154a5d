//! When to refresh, and when to retry: pure functions of
//! (issued, expires, now, policy, a random sample). Nothing here reads a clock
//! or draws a random number; callers pass both in.

use std::time::{Duration, SystemTime};

/// The refresh and retry policy of one client (`[defaults]` merged with the
/// client's own keys).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Refresh once this share of the lifetime has passed, in (0, 1).
    pub refresh_ratio: f64,
    /// Or this long before expiry, whichever comes first.
    pub refresh_before: Duration,
    /// Never refresh one client more often than this after a success.
    pub min_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Written tokens must keep at least this much validity: refresh before
    /// less remains; a new token with less is a failed refresh.
    pub min_valid: Duration,
    /// A longer lifetime is planned as this long (`expires_at` in the year
    /// 9999 must not park a client for ever).
    pub max_lifetime: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            refresh_ratio: 0.75,
            refresh_before: Duration::from_secs(5 * 60),
            min_interval: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            min_valid: Duration::ZERO,
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// Up to this share of a token's lifetime is taken off the refresh point at
/// random, so that thousands of clients issued at once spread out over minutes
/// rather than seconds.
pub const JITTER_SHARE: f64 = 0.10;

/// Why a refresh point is where it is; logged once when it is not the ordinary case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshBasis {
    /// The earlier of `refresh_ratio` and `refresh_before`.
    Policy,
    /// `refresh_before` is at least the token's whole lifetime, so the ratio alone applies.
    MarginExceedsLifetime,
    /// The computed point came sooner than `min_interval` after issue.
    MinInterval,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPlan {
    pub at: SystemTime,
    pub basis: RefreshBasis,
}

/// The moment to refresh a token issued at `issued` that expires at `expires`.
///
/// `jitter` is a sample from [0, 1). The result is never sooner than
/// `min_interval` after `issued` (a zero or tiny lifetime cannot turn into a
/// tight loop), and never before `now`.
pub fn refresh_at(
    issued: SystemTime,
    expires: SystemTime,
    now: SystemTime,
    policy: &Policy,
    jitter: f64,
) -> RefreshPlan {
    let lifetime = expires
        .duration_since(issued)
        .unwrap_or(Duration::ZERO)
        .min(policy.max_lifetime);
    let by_ratio = lifetime.mul_f64(policy.refresh_ratio.clamp(0.0, 1.0));
    let mut basis = RefreshBasis::Policy;
    let mut offset = match lifetime.checked_sub(policy.refresh_before) {
        Some(by_before) if !by_before.is_zero() => by_before.min(by_ratio),
        _ => {
            basis = RefreshBasis::MarginExceedsLifetime;
            by_ratio
        }
    };
    if !policy.min_valid.is_zero() {
        // refresh while at least min_valid (and a tenth of the rest) remains
        let latest = lifetime.saturating_sub(policy.min_valid);
        offset = offset.min(latest.saturating_sub(latest / 10));
    }
    offset = offset.saturating_sub(lifetime.mul_f64(JITTER_SHARE * jitter.clamp(0.0, 1.0)));
    if offset < policy.min_interval {
        offset = policy.min_interval;
        basis = RefreshBasis::MinInterval;
    }
    RefreshPlan {
        at: (issued + offset).max(now),
        basis,
    }
}

/// How an attempt failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Worth retrying soon: 5xx, 429, timeouts, connection errors, garbled bodies.
    Transient,
    /// Will not heal by itself (bad credentials, refused grant): retry slowly.
    Permanent,
}

/// Delay before the next attempt after `failures` consecutive failures (>= 1).
///
/// Transient: exponential from `backoff_initial`, capped at `backoff_max`,
/// with full jitter over [backoff_initial, cap]. Permanent: `backoff_max`
/// less up to 10 %. A `Retry-After` is honoured as a floor, itself capped at
/// `backoff_max` so a hostile or broken header cannot park a client forever.
pub fn retry_delay(
    failures: u32,
    class: FailureClass,
    retry_after: Option<Duration>,
    policy: &Policy,
    jitter: f64,
) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let initial = policy.backoff_initial.min(policy.backoff_max);
    let delay = match class {
        // less up to a tenth, but never below backoff_initial
        FailureClass::Permanent => policy.backoff_max.mul_f64(1.0 - 0.1 * jitter).max(initial),
        FailureClass::Transient => {
            let exponent = failures.saturating_sub(1).min(32);
            let cap = initial
                .checked_mul(1u32 << exponent.min(31))
                .unwrap_or(policy.backoff_max)
                .min(policy.backoff_max);
            initial + (cap - initial).mul_f64(jitter)
        }
    };
    match retry_after {
        Some(floor) => delay.max(floor.min(policy.backoff_max)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn secs_after_issue(plan: RefreshPlan) -> f64 {
        plan.at.duration_since(t(0)).unwrap().as_secs_f64()
    }

    #[test]
    fn refresh_point_table() {
        let p = Policy::default(); // 0.75, 5m, min 10s
        // (lifetime s, now s, jitter, expected seconds after issue, basis)
        let cases = [
            (3600, 0, 0.0, 2700.0, RefreshBasis::Policy), // ratio wins (45m < 55m)
            (600, 0, 0.0, 300.0, RefreshBasis::Policy),   // refresh_before wins (5m < 7.5m)
            (3600, 0, 0.5, 2520.0, RefreshBasis::Policy), // 5% of 1h off
            (3600, 0, 0.999_999, 2340.0, RefreshBasis::Policy), // ~10% of 1h off
            (60, 0, 0.0, 45.0, RefreshBasis::MarginExceedsLifetime), // 5m margin > 60s lifetime
            (300, 0, 0.0, 225.0, RefreshBasis::MarginExceedsLifetime), // margin == lifetime
            (5, 0, 0.0, 10.0, RefreshBasis::MinInterval), // tiny lifetime: never sooner than 10s
            (0, 0, 0.0, 10.0, RefreshBasis::MinInterval), // no lifetime at all
            (3600, 3000, 0.0, 3000.0, RefreshBasis::Policy), // point passed (restart): now
        ];
        for (lifetime, now, jitter, expected, basis) in cases {
            let plan = refresh_at(t(0), t(lifetime), t(now), &p, jitter);
            assert!(
                (secs_after_issue(plan) - expected).abs() < 0.01,
                "lifetime {lifetime}s now {now}s jitter {jitter}: got {}s, want {expected}s",
                secs_after_issue(plan)
            );
            assert_eq!(plan.basis, basis, "lifetime {lifetime}s");
        }
    }

    #[test]
    fn permanent_failures_never_retry_sooner_than_backoff_initial() {
        let policy = Policy {
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
            ..Policy::default()
        };
        for jitter in [0.0, 0.5, 0.999] {
            let d = retry_delay(1, FailureClass::Permanent, None, &policy, jitter);
            assert_eq!(d, Duration::from_secs(60), "jitter {jitter}");
        }
    }

    #[test]
    fn an_absurd_lifetime_is_planned_as_max_lifetime() {
        let policy = Policy::default();
        let issued = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // expires_at in the year 9999
        let expires = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        let plan = refresh_at(issued, expires, issued, &policy, 0.0);
        // a day's token: the earlier of 75 % (18 h) and 5 min before expiry
        assert_eq!(plan.at, issued + Duration::from_secs(18 * 3600));
    }

    #[test]
    fn min_valid_moves_the_refresh_before_the_consumers_cache_window() {
        let p = Policy {
            min_valid: Duration::from_secs(30 * 60),
            ..Policy::default()
        };
        // 1h token: ratio says 45m, min_valid says before 30m remain (27m after a tenth of margin)
        let plan = refresh_at(t(0), t(3600), t(0), &p, 0.0);
        assert_eq!(secs_after_issue(plan), 1620.0);
    }

    #[test]
    fn expired_before_issue_never_loops() {
        let p = Policy::default();
        let plan = refresh_at(t(100), t(0), t(100), &p, 0.3);
        assert_eq!(plan.at, t(110));
    }

    #[test]
    fn jitter_spreads_simultaneous_issues_over_minutes() {
        let p = Policy::default();
        let points: Vec<f64> = (0..1000)
            .map(|i| secs_after_issue(refresh_at(t(0), t(3600), t(0), &p, i as f64 / 1000.0)))
            .collect();
        let spread = points.iter().cloned().fold(f64::MIN, f64::max)
            - points.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 300.0, "1h tokens spread over only {spread}s");
    }

    #[test]
    fn transient_backoff_grows_and_is_capped() {
        let p = Policy {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..Policy::default()
        };
        let top = |n| retry_delay(n, FailureClass::Transient, None, &p, 1.0).as_secs_f64();
        let bottom = |n| retry_delay(n, FailureClass::Transient, None, &p, 0.0).as_secs_f64();
        assert_eq!([top(1), top(2), top(3), top(4)], [1.0, 2.0, 4.0, 8.0]);
        assert_eq!(top(7), 60.0);
        assert_eq!(top(1000), 60.0);
        assert_eq!(
            bottom(10),
            1.0,
            "full jitter never goes below backoff_initial"
        );
    }

    #[test]
    fn permanent_failures_retry_slowly() {
        let p = Policy::default();
        let d = retry_delay(1, FailureClass::Permanent, None, &p, 0.5);
        assert!(
            d >= Duration::from_secs(270) && d <= Duration::from_secs(300),
            "{d:?}"
        );
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_backoff_max() {
        let p = Policy::default();
        let ra = Some(Duration::from_secs(30));
        assert_eq!(
            retry_delay(1, FailureClass::Transient, ra, &p, 0.0),
            Duration::from_secs(30)
        );
        let huge = Some(Duration::from_secs(86_400));
        assert_eq!(
            retry_delay(1, FailureClass::Transient, huge, &p, 0.0),
            Duration::from_secs(300)
        );
    }
}
