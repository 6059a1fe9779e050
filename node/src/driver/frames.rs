//! Inbound frames of one iteration into the core, change frames merged per peer and service.

use statusmesh_crdt::doc::REMOTE_BATCH_MAX;
use statusmesh_crdt::Name;
use statusmesh_gossip::codec::{self, Frame, FRAME_BYTES_MAX};
use tracing::warn;

use super::{now_ms, Driver};
use crate::transport::Inbound;

/// The change frames of one peer for one service in one iteration, merged into one batch.
struct MergedChanges {
    from: String,
    service: String,
    /// Eager pushes and repairs are merged apart: a push of nothing new prunes its sender.
    pushed: bool,
    changes: Vec<Vec<u8>>,
    bytes: usize,
}

impl Driver {
    /// Hands this iteration's frames to the gossip core, with the change frames of one peer
    /// for one service merged into one frame (pushes with pushes, repairs with repairs): Automerge applies a batch of changes in about
    /// the time of one (it walks the document once), which is what lets a node keep up with
    /// peers that each push one change per write. A merged batch is rejected whole if one
    /// change in it is bad; all of it came from the same peer, and anti-entropy repairs the
    /// rest. Frames of other kinds, and frames that do not decode, pass through unchanged
    /// (in order) so the core judges and counts them.
    pub(super) fn handle_frames(&mut self, frames: Vec<Inbound>) {
        if frames.is_empty() {
            return;
        }
        self.touched = true;
        let now = now_ms();
        let mut merged: Vec<MergedChanges> = Vec::new();
        let mut others = Vec::new();
        for frame in frames {
            let (service, changes, pushed) = match codec::decode(&frame.bytes) {
                Ok(Frame::Changes { service, changes }) => (service, changes, false),
                Ok(Frame::Push { service, changes }) => (service, changes, true),
                _ => {
                    others.push(frame);
                    continue;
                }
            };
            let bytes: usize = changes.iter().map(Vec::len).sum();
            let slot = merged.iter_mut().find(|m| {
                m.from == frame.from
                    && m.service == service
                    && m.pushed == pushed
                    && m.changes.len() + changes.len() <= REMOTE_BATCH_MAX
                    && m.bytes + bytes <= FRAME_BYTES_MAX / 2
            });
            match slot {
                Some(m) => {
                    m.changes.extend(changes);
                    m.bytes += bytes;
                }
                None => merged.push(MergedChanges {
                    from: frame.from,
                    service,
                    pushed,
                    changes,
                    bytes,
                }),
            }
        }
        for frame in others {
            self.node.handle_frame(now, &frame.from, &frame.bytes);
        }
        for MergedChanges {
            from,
            service,
            pushed,
            changes,
            ..
        } in merged
        {
            let name = Name::parse("service", &service).ok();
            let before = self.heads_of(name.as_ref());
            let frame = if pushed {
                Frame::Push { service, changes }
            } else {
                Frame::Changes { service, changes }
            };
            match codec::encode(&frame) {
                Ok(bytes) => self.node.handle_frame(now, &from, &bytes),
                Err(e) => {
                    warn!(node = %self.info.id, peer = %from, error = %e, "cannot merge frames");
                    continue;
                }
            }
            if let (Some(name), Frame::Changes { changes, .. } | Frame::Push { changes, .. }) =
                (name, frame)
            {
                self.note_remote(name, before, changes);
            }
        }
    }
}
