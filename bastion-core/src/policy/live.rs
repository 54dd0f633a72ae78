//! The policy in force, shared by every session: an immutable snapshot behind an `Arc`, replaced
//! whole when an admin changes it. A session reads with a pointer copy, never a deep clone, and
//! never sees a half-applied change.

use std::sync::{Arc, Mutex, MutexGuard};

use super::Policy;

#[derive(Debug, Default)]
pub struct Live {
    current: Mutex<Arc<Policy>>,
    /// Held for the whole of a change (check, store, kernel, swap), so changes run one at a time
    /// while readers keep reading the previous snapshot.
    changing: Mutex<()>,
}

impl Live {
    pub fn new(policy: Policy) -> Live {
        Live {
            current: Mutex::new(Arc::new(policy)),
            changing: Mutex::new(()),
        }
    }

    /// The policy in force now.
    pub fn snapshot(&self) -> Arc<Policy> {
        relock(&self.current).clone()
    }

    /// Serialises changes: the guard is held from reading the snapshot a change starts from
    /// until [`replace`](Self::replace) has put the result in force, which asks for it.
    pub fn begin_change(&self) -> Changing<'_> {
        Changing {
            _guard: relock(&self.changing),
        }
    }

    pub fn replace(&self, _changing: &Changing<'_>, next: Policy) {
        *relock(&self.current) = Arc::new(next);
    }
}

/// Proof that a change holds the change lock (see [`Live::begin_change`]).
pub struct Changing<'a> {
    _guard: MutexGuard<'a, ()>,
}

/// A panic while holding either lock leaves consistent data (the snapshot is swapped in one
/// assignment), so a poisoned lock is still usable.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_their_snapshot_across_a_change() {
        let live = Live::new(Policy::default());
        let before = live.snapshot();
        let mut next = (*before).clone();
        next.insert(super::super::Entity::Group(super::super::Group {
            name: "ops".into(),
            members: vec![],
        }));
        {
            let changing = live.begin_change();
            live.replace(&changing, next);
        }
        assert!(before.groups.is_empty(), "an old snapshot is never edited");
        assert!(live.snapshot().groups.contains_key("ops"));
        assert!(
            Arc::ptr_eq(&live.snapshot(), &live.snapshot()),
            "a read is a pointer copy"
        );
    }
}
