//! Plumtree's memory of changes: the changes seen (and their bytes while they fit the cache,
//! to answer grafts), the changes announced but not arrived (grafted from each announcer in
//! turn), and the announcements waiting for the next batch. Each is bounded by
//! [`BroadcastConfig`](super::BroadcastConfig).

use std::collections::{BTreeMap, VecDeque};

use super::{Announcer, Grafts, MessageId, Missing, Plumtree, Seen, ANNOUNCERS_MAX};

impl Plumtree {
    /// Whether `id` was seen (pushed, repaired or made here).
    pub fn has_seen(&self, id: MessageId) -> bool {
        self.seen.contains_key(&id)
    }

    /// A seen change, with its bytes while they are cached.
    pub fn seen(&self, id: MessageId) -> Option<&Seen> {
        self.seen.get(&id)
    }

    /// Records a change as seen (first pushed by `pushed_by`) and caches its bytes; evicts the oldest beyond `seen_max`
    /// entries or `payload_cache_bytes_max` bytes. Returns when it was announced and by whom
    /// first, if it was missing.
    pub fn remember(
        &mut self,
        id: MessageId,
        service: &str,
        root: &str,
        bytes: Vec<u8>,
        pushed_by: Option<&str>,
    ) -> Option<Announcer> {
        let missing = self.missing.remove(&id);
        if self.seen.contains_key(&id) {
            return None;
        }
        let bytes = (bytes.len() <= self.bounds.payload_cache_bytes_max).then_some(bytes);
        self.payload_bytes += bytes.as_ref().map_or(0, Vec::len);
        self.seen.insert(
            id,
            Seen {
                service: service.to_owned(),
                root: root.to_owned(),
                bytes,
                pushed_by: pushed_by.map(str::to_owned),
            },
        );
        self.seen_order.push_back(id);
        while self.seen.len() > self.bounds.seen_max
            || self.payload_bytes > self.bounds.payload_cache_bytes_max
        {
            let Some(oldest) = self.seen_order.pop_front() else {
                break;
            };
            if let Some(evicted) = self.seen.remove(&oldest) {
                self.payload_bytes -= evicted.bytes.map_or(0, |b| b.len());
            }
        }
        missing.and_then(|m| m.announcers.front().cloned())
    }

    /// Notes that `from` announced `id` of `root` at `now_ms`. A change not seen yet becomes
    /// missing, to be grafted after `graft_timeout_ms` unless it arrives first.
    pub fn announced(&mut self, now_ms: u64, from: &str, root: &str, id: MessageId) {
        if self.seen.contains_key(&id) {
            return;
        }
        if let Some(missing) = self.missing.get_mut(&id) {
            let known = missing.announcers.iter().any(|a| a.peer == from);
            if !known && missing.announcers.len() < ANNOUNCERS_MAX {
                missing.announcers.push_back(Announcer {
                    peer: from.to_owned(),
                    at_ms: now_ms,
                });
            }
            return;
        }
        if self.missing.len() >= self.bounds.missing_max {
            return;
        }
        self.missing.insert(
            id,
            Missing {
                root: root.to_owned(),
                announcers: VecDeque::from([Announcer {
                    peer: from.to_owned(),
                    at_ms: now_ms,
                }]),
                graft_at_ms: now_ms + self.bounds.graft_timeout_ms,
            },
        );
    }

    /// The grafts due at `now_ms`: each missing change is requested from its oldest
    /// announcer not yet asked, who also becomes an eager peer of its root. A change whose
    /// announcers were all asked is forgotten (anti-entropy is the backstop).
    pub fn due_grafts(&mut self, now_ms: u64) -> Grafts {
        let mut grafts = Grafts::default();
        let due: Vec<MessageId> = self
            .missing
            .iter()
            .filter(|(_, m)| m.graft_at_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut made_eager = Vec::new();
        for id in due {
            let Some(missing) = self.missing.get_mut(&id) else {
                continue;
            };
            match missing.announcers.pop_front() {
                Some(Announcer { peer, .. }) => {
                    made_eager.push((missing.root.clone(), peer.clone()));
                    grafts.by_peer.entry(peer).or_default().push(id);
                    missing.graft_at_ms = now_ms + self.bounds.graft_timeout_ms;
                    if missing.announcers.is_empty() {
                        self.missing.remove(&id);
                    }
                }
                None => {
                    self.missing.remove(&id);
                }
            }
        }
        for (root, peer) in made_eager {
            if let Some(tree) = self.trees.get_mut(&root) {
                // The grafted peer now pushes to this node; pushing back would be a duplicate.
                tree.lazy.remove(&peer);
            }
        }
        grafts
    }

    /// Queues an announcement of `ids` of `root` for `peer`, sent at the next flush. Beyond
    /// `ihave_per_peer_max` pending ids for one peer the rest are dropped and counted.
    pub fn queue_announcement(&mut self, now_ms: u64, peer: &str, root: &str, ids: &[MessageId]) {
        debug_assert!(root != peer, "nothing is announced back to a root");
        let count = self.pending_count.entry(peer.to_owned()).or_default();
        let room = self.bounds.ihave_per_peer_max.saturating_sub(*count);
        let taken = ids.len().min(room);
        self.announcements_dropped += (ids.len() - taken) as u64;
        if taken == 0 {
            return;
        }
        *count += taken;
        self.pending
            .entry(peer.to_owned())
            .or_default()
            .entry(root.to_owned())
            .or_default()
            .extend_from_slice(&ids[..taken]);
        if self.next_flush_ms.is_none() {
            self.next_flush_ms = Some(now_ms + self.bounds.ihave_interval_ms);
        }
    }

    /// The announcements to send at `now_ms`, per peer, if the flush is due.
    pub fn due_announcements(
        &mut self,
        now_ms: u64,
    ) -> BTreeMap<String, BTreeMap<String, Vec<MessageId>>> {
        if self.next_flush_ms.is_none_or(|at| at > now_ms) {
            return BTreeMap::new();
        }
        self.next_flush_ms = None;
        self.pending_count.clear();
        std::mem::take(&mut self.pending)
    }

    /// When the next flush or graft is due (ms).
    pub fn next_timeout(&self) -> Option<u64> {
        let graft = self.missing.values().map(|m| m.graft_at_ms).min();
        match (self.next_flush_ms, graft) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
