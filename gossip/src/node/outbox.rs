//! The outbox: the bounded queues the driver drains, frames to send ([`Transmit`], through
//! [`Node::poll_transmit`]) and what happened ([`Event`], through [`Node::poll_event`]).
//! Every frame leaves through `send`, which encodes it and counts it; the oldest entry of a
//! full queue is dropped and counted (anti-entropy repairs a dropped frame).

use statusmesh_crdt::{Coalesced, Cursor, DocEvent, StatusEvent, Transition};

use super::{Node, NodeId};
use crate::codec::{self, Frame};
use crate::error::GossipError;
use crate::version::Ranges;

/// A frame for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: NodeId,
    pub bytes: Vec<u8>,
}

/// Something the driver (and its clients) may want to know.
#[derive(Debug, Clone)]
pub enum Event {
    /// A cell changed here, by a local write or a remote change: one event per transition,
    /// in causal order. `cursor` is where a client that has seen this event resumes;
    /// `transition` its identity, the same on every node (`None` when the event is no single
    /// transition); `coalesced` says how many transitions it folds, when more than its own.
    Status {
        event: StatusEvent,
        cursor: Cursor,
        transition: Option<String>,
        coalesced: Option<Coalesced>,
    },
    /// An incident, maintenance window or override changed here; the rest as for `Status`.
    Record {
        event: DocEvent,
        cursor: Cursor,
        transition: Option<String>,
        coalesced: Option<Coalesced>,
    },
    /// Liveness of a cell moved forward (a heartbeat, no value change).
    Heartbeat { key: String, last_seen_ms: u64 },
    /// The first frame from a peer, or the first after it was silent.
    PeerContact { peer: NodeId },
    /// A peer sent a frame that does not decode or breaks the schema; it was ignored.
    FrameRejected {
        from: NodeId,
        error: std::sync::Arc<GossipError>,
    },
    /// A peer's frame was refused on its versions: of a version this node does not speak, or
    /// from a peer whose ranges (`theirs`, when its header could be read) do not meet this
    /// node's (`ours`). The frame was not read; nothing is sent to a peer whose ranges do not
    /// meet. `first` is false while the peer's frames go on being refused (for drivers that
    /// log once and count every frame).
    VersionRefused {
        peer: NodeId,
        frame_version: u8,
        ours: Ranges,
        theirs: Option<Ranges>,
        first: bool,
    },
    /// The failure detector found a peer alive (first contact, or back after being down).
    PeerUp { peer: NodeId },
    /// The failure detector declared a peer down (it did not refute a suspicion in time).
    PeerDown { peer: NodeId },
    /// A joined member was removed (it left, or was down longer than
    /// [`super::Config::forget_after_ms`]): the driver drops its link.
    MemberRemoved { peer: NodeId },
}

impl Node {
    /// Sends `frame` to every peer.
    pub(super) fn broadcast(&mut self, frame: &Frame) {
        let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.send(&peer, frame);
        }
    }

    /// Queues `frame` for `to`, a peer (never this node), in the version it speaks.
    pub(super) fn send(&mut self, to: &str, frame: &Frame) {
        let Some(spoken) = self.spoken_to(to) else {
            // A peer outside this node's versions is refused both ways.
            self.stats.transmits_refused += 1;
            return;
        };
        self.send_as(to, frame, spoken.frame);
    }

    /// Queues `frame` for `to` in frame version `version` (a probe's may differ from what
    /// the peer is spoken to in).
    pub(super) fn send_as(&mut self, to: &str, frame: &Frame, version: u8) {
        debug_assert!(to != self.id, "a frame addressed to this node itself");
        let bytes = match codec::encode_as(frame, version, &self.config.versions) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Only an oversized frame fails, which chunking prevents; count it as a drop.
                debug_assert!(false, "frame does not encode: {e}");
                self.stats.transmits_dropped += 1;
                return;
            }
        };
        if self.transmits.len() >= self.config.transmit_queue_max {
            self.transmits.pop_front();
            self.stats.transmits_dropped += 1;
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.transmits.push_back(Transmit {
            to: to.to_owned(),
            bytes,
        });
    }

    /// Queues `event` for the driver.
    pub(super) fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.event_queue_max {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Counts a frame from `from` that was refused, and reports why.
    pub(super) fn reject(&mut self, from: &str, error: GossipError) {
        self.stats.frames_rejected += 1;
        self.push_event(Event::FrameRejected {
            from: from.to_owned(),
            error: std::sync::Arc::new(error),
        });
    }

    /// Reports transitions of one document, each with the cursor a client holds once it
    /// has it: the replica's cursor with that document at the transition's heads.
    pub(super) fn emit_transitions(&mut self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        let cursor = self.replica.cursor();
        for Transition {
            event,
            id,
            coalesced,
            epoch,
            heads,
            within,
        } in transitions
        {
            let mut at = cursor.clone();
            at.set_in_epoch(event.service().clone(), heads, epoch);
            at.set_within(event.service(), within);
            self.push_event(match event {
                DocEvent::Status(event) => Event::Status {
                    event,
                    cursor: at,
                    transition: id,
                    coalesced,
                },
                event => Event::Record {
                    event,
                    cursor: at,
                    transition: id,
                    coalesced,
                },
            });
        }
    }
}
