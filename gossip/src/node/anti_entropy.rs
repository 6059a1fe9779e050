//! Anti-entropy: the periodic repair of whatever broadcast lost (lost pushes, partitions,
//! restarts with an empty disk).
//!
//! # Flow
//! 1. Every `anti_entropy_interval_ms` (±25% jitter) this node sends a [`Frame::Digest`] (a
//!    hash of every document's heads and one of the liveness map: a few bytes) to one random
//!    peer; the rollover trigger runs first (see [`super::rollover`]).
//! 2. A peer whose documents differ answers with its heads ([`Frame::Heads`], reply wanted).
//! 3. Each side sends the changes the other lacks ([`Frame::Changes`], applied as a repair)
//!    and answers a reply-wanted heads frame with its own heads, so both learn what the other
//!    holds (the rollover proposer waits for that).
//! 4. Liveness is repaired beside it ([`super::liveness`]). The answer to a digest times a
//!    round trip for the tree policy.
//!
//! [`Frame::Digest`]: crate::codec::Frame::Digest
//! [`Frame::Heads`]: crate::codec::Frame::Heads
//! [`Frame::Changes`]: crate::codec::Frame::Changes

use std::collections::BTreeMap;

use rand::Rng;
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::{ChangeHash, Name};

use super::{Node, NodeId};
use crate::codec::Frame;
use crate::error::GossipError;

/// The last anti-entropy digest this node sent, to time its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DigestSent {
    pub(super) peer: NodeId,
    pub(super) sent_ms: u64,
}

impl Node {
    /// Runs the anti-entropy round if it is due (see the module docs, step 1).
    pub(super) fn anti_entropy_round(&mut self, now_ms: u64) {
        if now_ms < self.next_anti_entropy_ms {
            return;
        }
        // Jitter of ±25% keeps nodes from running rounds in lockstep.
        let interval = self.config.anti_entropy_interval_ms;
        let jitter = self.rng.random_range(0..=interval / 2);
        self.next_anti_entropy_ms = now_ms + interval - interval / 4 + jitter;
        if self.peers.is_empty() {
            return;
        }
        let index = self.rng.random_range(0..self.peers.len());
        let Some(peer) = self.peers.keys().nth(index).cloned() else {
            return;
        };
        self.maybe_roll_over(now_ms);
        self.stats.anti_entropy_rounds += 1;
        self.digest_sent = Some(DigestSent {
            peer: peer.clone(),
            sent_ms: now_ms,
        });
        let frame = self.digest_frame();
        self.send(&peer, &frame);
    }

    /// The digest of everything this node holds: documents' heads and liveness.
    pub(super) fn digest_frame(&self) -> Frame {
        Frame::Digest {
            docs: self.docs_digest(),
            liveness: self.replica.liveness().digest(),
        }
    }

    /// An answer to this node's last digest is a round-trip sample.
    pub(super) fn sample_digest_rtt(&mut self, from: &str, reply_wanted: bool) {
        if !reply_wanted {
            return;
        }
        if let Some(sent) = self.digest_sent.take() {
            if sent.peer == from {
                self.plumtree
                    .sample_rtt(from, self.now_ms.saturating_sub(sent.sent_ms));
            } else {
                self.digest_sent = Some(sent);
            }
        }
    }

    /// Answers a peer's digest: heads when the documents differ (step 2); equal digests mean
    /// the peer holds what this node holds. Then the liveness part.
    pub(super) fn on_digest(&mut self, from: &str, docs: u64, liveness: u64) {
        if docs != self.docs_digest() {
            let frame = Frame::Heads {
                docs: self.all_heads(),
                reply_wanted: true,
            };
            self.send(from, &frame);
        } else {
            // Equal digests: the peer holds what this node holds.
            let heads: BTreeMap<Name, Vec<ChangeHash>> = self
                .replica
                .docs()
                .map(|d| (d.service().clone(), d.heads()))
                .collect();
            if let Some(peer) = self.peers.get_mut(from) {
                peer.heads = heads;
            }
        }
        self.on_liveness_digest(from, liveness);
    }

    /// Sends a peer the changes it lacks given its heads, and our heads when it wants a reply
    /// (step 3); remembers its heads.
    pub(super) fn on_heads(
        &mut self,
        from: &str,
        docs: Vec<(String, Vec<[u8; 32]>)>,
        reply_wanted: bool,
    ) {
        let mut theirs: BTreeMap<Name, Vec<ChangeHash>> = BTreeMap::new();
        for (service, heads) in docs {
            match Name::parse("service", &service) {
                Ok(name) => {
                    theirs.insert(name, heads.into_iter().map(ChangeHash).collect());
                }
                Err(e) => {
                    self.reject(from, GossipError::Crdt(e));
                    return;
                }
            }
        }
        // Send what they lack, service by service, in bounded frames.
        let services: Vec<Name> = self.replica.docs().map(|d| d.service().clone()).collect();
        for service in &services {
            let their_heads = theirs.get(service).cloned().unwrap_or_default();
            let changes = self.replica.changes_since(service, &their_heads);
            for chunk in changes.chunks(self.config.changes_per_frame_max) {
                let frame = Frame::Changes {
                    service: service.to_string(),
                    changes: chunk.to_vec(),
                };
                self.send(from, &frame);
            }
        }
        // Our heads ask for what we lack (they hold heads we do not know), and are sent even
        // when nothing is lacking: the asker learns what this node holds, which a rollover
        // proposer waits for.
        if reply_wanted {
            let frame = Frame::Heads {
                docs: self.all_heads(),
                reply_wanted: false,
            };
            self.send(from, &frame);
        }
        if let Some(peer) = self.peers.get_mut(from) {
            peer.heads = theirs;
        }
    }

    /// Every document's heads, as a [`Frame::Heads`] carries them.
    pub(super) fn all_heads(&self) -> Vec<(String, Vec<[u8; 32]>)> {
        self.replica
            .docs()
            .map(|d| {
                (
                    d.service().to_string(),
                    d.heads().into_iter().map(|h| h.0).collect(),
                )
            })
            .collect()
    }

    /// A hash of every document's name and heads: equal digests, equal documents.
    fn docs_digest(&self) -> u64 {
        let mut hash = Fnv64::new();
        for doc in self.replica.docs() {
            hash.write(doc.service().as_str().as_bytes());
            for head in doc.heads() {
                hash.write(&head.0);
            }
        }
        hash.finish()
    }
}
