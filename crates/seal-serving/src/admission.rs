//! Admission: how many requests of one function run at once, and how much
//! of the runtime's instance pool one function may hold when it is
//! contended.
//!
//! Two rules, checked before a request takes an instance:
//! - a function's own limit (its manifest's `max_concurrency`, else the
//!   server's default) on its requests in flight in one environment, all
//!   versions together: past it, `429 throttled`;
//! - once more than half the pool is in use, no function holds more than an
//!   equal share of the pool among the functions with requests in flight
//!   and one more (room for a function that has none yet): past it, `503
//!   overloaded`. A function alone gets half the pool, two a third each…
//!   so a hog never leaves a neighbour without a slot.
//!
//! Counting is a few atomic adds per request (no lock); a request's
//! [`Permit`] is held until its guest's task ends, body streaming
//! included, which is when its instance slot is free again.

use seal_runtime::InvokeError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Requests in flight of one function in one environment.
#[derive(Debug, Default)]
pub struct InFlight(AtomicU32);

impl InFlight {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The admission state of the serving layer.
#[derive(Debug)]
pub struct Admission {
    /// Instance slots of the runtime's pool.
    pool: u32,
    /// A function's limit when its manifest declares none.
    default_limit: u32,
    /// Requests in flight, every function together.
    total: AtomicU32,
    /// Functions (per environment) with at least one request in flight.
    busy: AtomicU32,
}

/// One admitted request; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    slot: Arc<InFlight>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
        if self.slot.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.admission.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Admission {
    /// `pool`: the runtime's instance slots; `default_limit`: a function's
    /// limit when its manifest declares none (both at least 1).
    pub fn new(pool: u32, default_limit: u32) -> Arc<Self> {
        Arc::new(Self {
            pool: pool.max(1),
            default_limit: default_limit.max(1),
            total: AtomicU32::new(0),
            busy: AtomicU32::new(0),
        })
    }

    pub fn default_limit(&self) -> u32 {
        self.default_limit
    }

    /// Requests in flight, every function together.
    pub fn in_flight(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits one request of the function whose in-flight count is `slot`
    /// and whose manifest declares `declared` (its `max_concurrency`).
    pub fn admit(
        self: &Arc<Self>,
        slot: &Arc<InFlight>,
        declared: Option<u32>,
    ) -> Result<Permit, InvokeError> {
        let limit = declared.unwrap_or(self.default_limit);
        let mine = slot.0.fetch_add(1, Ordering::AcqRel) + 1;
        if mine == 1 {
            self.busy.fetch_add(1, Ordering::AcqRel);
        }
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        // From here on, dropping the permit undoes the counting.
        let permit = Permit {
            admission: self.clone(),
            slot: slot.clone(),
        };
        if mine > limit {
            return Err(InvokeError::Throttled { limit });
        }
        if total > self.pool / 2 {
            let busy = self.busy.load(Ordering::Acquire).max(1);
            let share = (self.pool / (busy + 1)).max(1);
            if mine > share {
                return Err(InvokeError::Overloaded(format!(
                    "this function holds its fair share of the instance pool ({share} of {} slots, {busy} functions busy)",
                    self.pool
                )));
            }
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_is_held_to_its_own_limit_and_its_permits_free_their_place() {
        let a = Admission::new(1000, 2);
        let f = Arc::new(InFlight::default());
        let p1 = a.admit(&f, None).unwrap();
        let p2 = a.admit(&f, None).unwrap();
        assert_eq!(
            a.admit(&f, None).unwrap_err(),
            InvokeError::Throttled { limit: 2 }
        );
        // A refused request leaves nothing counted.
        assert_eq!((f.get(), a.in_flight()), (2, 2));
        // The manifest's own limit wins over the default.
        assert!(a.admit(&f, Some(3)).is_ok());
        drop((p1, p2));
        assert_eq!((f.get(), a.in_flight()), (0, 0));
        assert_eq!(a.busy.load(Ordering::Relaxed), 0);
        assert!(a.admit(&f, None).is_ok());
    }

    #[test]
    fn past_half_the_pool_a_function_gets_an_equal_share_leaving_room_for_one_more() {
        let a = Admission::new(12, 100);
        let hog = Arc::new(InFlight::default());
        // Alone, the hog gets half the pool: the rest waits for others.
        let held: Vec<Permit> = (0..6).map(|_| a.admit(&hog, None).unwrap()).collect();
        let e = a.admit(&hog, None).unwrap_err();
        assert!(e.is_overloaded() && e.kind() == "overloaded", "{e:?}");
        assert!(e.to_string().contains("fair share"), "{e}");
        assert_eq!(a.in_flight(), 6, "a refusal leaves nothing counted");
        // A neighbour gets in, up to a third of the pool now that two are
        // busy; the hog, holding 6 > 4, gets nothing more.
        let other = Arc::new(InFlight::default());
        let others: Vec<Permit> = (0..4).map(|_| a.admit(&other, None).unwrap()).collect();
        assert!(a.admit(&other, None).is_err());
        assert!(a.admit(&hog, None).is_err());
        // A third function still finds room.
        let third = Arc::new(InFlight::default());
        assert!(a.admit(&third, None).is_ok());
        drop((held, others));
        assert_eq!((hog.get(), other.get()), (0, 0));
        // Below half the pool, only a function's own limit applies.
        let held: Vec<Permit> = (0..6).map(|_| a.admit(&hog, None).unwrap()).collect();
        assert_eq!(held.len(), 6);
    }
}
