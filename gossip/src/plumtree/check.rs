//! The broadcast state's invariants: every collection within its bound of
//! [`BroadcastConfig`](super::BroadcastConfig), and each tree disjoint (no peer both eager
//! and lazy) and free of this node. Part of [`crate::invariants::check`].

use super::{Plumtree, RootTree};

/// A broadcast invariant that does not hold, with the values involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastViolation {
    #[error("{roots} root trees, above roots_max {max}")]
    TooManyRoots { roots: usize, max: usize },
    #[error("{seen} seen ids, above seen_max {max}")]
    TooManySeen { seen: usize, max: usize },
    #[error("{bytes} cached payload bytes, above payload_cache_bytes_max {max}")]
    PayloadCacheOverfull { bytes: usize, max: usize },
    #[error("{missing} missing changes, above missing_max {max}")]
    TooManyMissing { missing: usize, max: usize },
    #[error("{pending} announcements pending for {peer}, above ihave_per_peer_max {max}")]
    TooManyAnnouncements {
        peer: String,
        pending: usize,
        max: usize,
    },
    #[error("{peer} is both eager and lazy for root {root}")]
    EagerAndLazy { peer: String, root: String },
    #[error("{node} is its own peer in the tree of root {root}")]
    OwnPeer { node: String, root: String },
    #[error("{peers} eager peers for root {root}, above eager_peers_max {max}")]
    TooManyEager {
        root: String,
        peers: usize,
        max: usize,
    },
    #[error("{peers} lazy peers for root {root}, above lazy_peers_max {max}")]
    TooManyLazy {
        root: String,
        peers: usize,
        max: usize,
    },
}

impl Plumtree {
    /// Checks the bounds, and that the last changed tree is disjoint and free of `me`. Cheap
    /// (one tree), for the invariant checker after every input.
    pub fn check(&self, me: &str) -> Result<(), BroadcastViolation> {
        let b = &self.bounds;
        if self.trees.len() > b.roots_max {
            return Err(BroadcastViolation::TooManyRoots {
                roots: self.trees.len(),
                max: b.roots_max,
            });
        }
        if self.seen.len() > b.seen_max {
            return Err(BroadcastViolation::TooManySeen {
                seen: self.seen.len(),
                max: b.seen_max,
            });
        }
        if self.payload_bytes > b.payload_cache_bytes_max {
            return Err(BroadcastViolation::PayloadCacheOverfull {
                bytes: self.payload_bytes,
                max: b.payload_cache_bytes_max,
            });
        }
        if self.missing.len() > b.missing_max {
            return Err(BroadcastViolation::TooManyMissing {
                missing: self.missing.len(),
                max: b.missing_max,
            });
        }
        if let Some((peer, count)) = self
            .pending_count
            .iter()
            .find(|(_, c)| **c > b.ihave_per_peer_max)
        {
            return Err(BroadcastViolation::TooManyAnnouncements {
                peer: peer.clone(),
                pending: *count,
                max: b.ihave_per_peer_max,
            });
        }
        if let Some(root) = &self.last_root {
            if let Some(tree) = self.trees.get(root) {
                self.check_tree(me, root, tree)?;
            }
        }
        Ok(())
    }

    /// [`Self::check`] over every tree: linear in roots × peers, for tests.
    pub fn check_all(&self, me: &str) -> Result<(), BroadcastViolation> {
        self.check(me)?;
        for (root, tree) in &self.trees {
            self.check_tree(me, root, tree)?;
        }
        Ok(())
    }

    fn check_tree(&self, me: &str, root: &str, tree: &RootTree) -> Result<(), BroadcastViolation> {
        if let Some(both) = tree.eager.intersection(&tree.lazy).next() {
            return Err(BroadcastViolation::EagerAndLazy {
                peer: both.clone(),
                root: root.to_owned(),
            });
        }
        if tree.eager.contains(me) || tree.lazy.contains(me) {
            return Err(BroadcastViolation::OwnPeer {
                node: me.to_owned(),
                root: root.to_owned(),
            });
        }
        if tree.eager.len() > self.bounds.eager_peers_max {
            return Err(BroadcastViolation::TooManyEager {
                root: root.to_owned(),
                peers: tree.eager.len(),
                max: self.bounds.eager_peers_max,
            });
        }
        if tree.lazy.len() > self.bounds.lazy_peers_max {
            return Err(BroadcastViolation::TooManyLazy {
                root: root.to_owned(),
                peers: tree.lazy.len(),
                max: self.bounds.lazy_peers_max,
            });
        }
        Ok(())
    }
}
