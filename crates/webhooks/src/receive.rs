//! Helpers for processing deliveries correctly: at most once per `webhook-id`, and never going
//! back to an older state of a user.
//!
//! Delivery is at least once: the same event can arrive twice (a lost acknowledgement, a manual
//! retry), and events of one user can arrive out of order (a retry overtaken by a later change).
//! Both helpers keep their state in memory; a receiver that runs several processes or restarts
//! keeps the same facts in its own database, in the transaction that applies the event (a unique
//! `webhook-id` column, and a `version` column compared on update). They show the rule.

use std::collections::{HashMap, HashSet, VecDeque};

/// The `webhook-id`s already processed, the most recent `capacity` of them.
///
/// ```
/// use accommador_webhooks::SeenIds;
/// let mut seen = SeenIds::new(10_000);
/// assert!(seen.first_time("evt_1"));
/// assert!(!seen.first_time("evt_1")); // a redelivery: acknowledge it, do nothing
/// ```
#[derive(Debug, Clone)]
pub struct SeenIds {
    capacity: usize,
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl SeenIds {
    /// Remembers up to `capacity` IDs (at least 1), forgetting the oldest first. Retries of one
    /// event span about three days; size it for the deliveries of that long, or keep the IDs in
    /// your database.
    pub fn new(capacity: usize) -> SeenIds {
        SeenIds {
            capacity: capacity.max(1),
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// `true` the first time `webhook_id` is seen (process it), `false` after (skip it).
    pub fn first_time(&mut self, webhook_id: &str) -> bool {
        if self.ids.contains(webhook_id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(webhook_id.to_owned());
        self.order.push_back(webhook_id.to_owned());
        true
    }

    /// Forgets `webhook_id`, e.g. when processing it failed and the retry must go through.
    pub fn forget(&mut self, webhook_id: &str) {
        if self.ids.remove(webhook_id) {
            self.order.retain(|id| id != webhook_id);
        }
    }
}

/// The last `version` applied per user: drops stale and out-of-order user events.
///
/// Every user event carries the user's `version`, which grows by one with every change, deletion
/// included. Apply an event only when its version is above the last one applied for that user;
/// a lower or equal one is older news. An erased event has no version: it always applies.
///
/// ```
/// use accommador_webhooks::UserVersions;
/// let mut versions = UserVersions::default();
/// assert!(versions.is_newer("usr_1", Some(2))); // apply
/// assert!(!versions.is_newer("usr_1", Some(1))); // an older update arriving late: drop it
/// assert!(versions.is_newer("usr_1", Some(3)));
/// assert!(versions.is_newer("usr_1", None)); // erased: always apply
/// ```
#[derive(Debug, Clone, Default)]
pub struct UserVersions {
    last: HashMap<String, u64>,
}

impl UserVersions {
    /// `true` when an event for `user_id` at `version` is newer than what was applied (and
    /// records it); `false` for a stale one. `None` (an erased event) is always applied.
    pub fn is_newer(&mut self, user_id: &str, version: Option<u64>) -> bool {
        let Some(version) = version else {
            return true;
        };
        match self.last.get_mut(user_id) {
            Some(last) if *last >= version => false,
            Some(last) => {
                *last = version;
                true
            }
            None => {
                self.last.insert(user_id.to_owned(), version);
                true
            }
        }
    }

    /// The last version applied for `user_id`.
    pub fn last(&self, user_id: &str) -> Option<u64> {
        self.last.get(user_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_forget_the_oldest_beyond_capacity() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first_time("a"));
        assert!(seen.first_time("b"));
        assert!(!seen.first_time("a"));
        assert!(seen.first_time("c")); // "a" is forgotten
        assert!(seen.first_time("a"));
        seen.forget("a");
        assert!(seen.first_time("a"));
    }

    #[test]
    fn versions_are_per_user_and_equal_ones_are_stale() {
        let mut v = UserVersions::default();
        assert!(v.is_newer("u1", Some(3)));
        assert!(!v.is_newer("u1", Some(3)));
        assert!(v.is_newer("u2", Some(1)));
        assert_eq!(v.last("u1"), Some(3));
    }
}
