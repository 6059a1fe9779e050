//! What each peer speaks, on this node: the negotiation rule of [`crate::version`] applied to
//! every frame in (its version and advertised ranges, checked before the frame is read) and
//! every frame out (the version it is encoded in), and the refusal of a peer outside this
//! node's ranges ([`Event::VersionRefused`], counted in [`super::Stats::versions_refused`]).

use super::{Event, Node};
use crate::version::{self, Ranges, Spoken};

impl Node {
    /// Checks a decoded frame's versions against this node's ranges and notes what the peer
    /// speaks. False when the peer is refused (reported; the frame is not read).
    pub(super) fn check_versions(
        &mut self,
        now_ms: u64,
        from: &str,
        frame_version: u8,
        advertised: Option<Ranges>,
    ) -> bool {
        let ours = self.config.versions;
        let Some(peer) = self.peers.get_mut(from) else {
            return false;
        };
        let theirs = peer.version.heard(now_ms, frame_version, advertised);
        // Only a version this node speaks is read, as the release it emulates would.
        if !ours.frame.contains(frame_version) || version::negotiate(&ours, &theirs).is_err() {
            self.refuse_version(now_ms, from, frame_version, Some(theirs));
            return false;
        }
        peer.version.refused = false;
        true
    }

    /// Refuses a frame of `frame_version` from `from` whose sender advertised `theirs` (if its
    /// header could be read): counted, and reported to the driver with both ranges.
    pub(super) fn refuse_version(
        &mut self,
        now_ms: u64,
        from: &str,
        frame_version: u8,
        theirs: Option<Ranges>,
    ) {
        self.stats.versions_refused += 1;
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        if let Some(theirs) = theirs {
            if peer.version.theirs != Some(theirs) {
                peer.version.heard(now_ms, frame_version, Some(theirs));
            }
        }
        let refusal = Some((frame_version, theirs));
        let first = peer.version.last_refusal != refusal;
        peer.version.last_refusal = refusal;
        peer.version.refused = true;
        let ours = self.config.versions;
        self.push_event(Event::VersionRefused {
            peer: from.to_owned(),
            frame_version,
            ours,
            theirs,
            first,
        });
    }

    /// Probes each peer known only by its version-2 frames with one digest at this node's
    /// highest version ([`crate::version`], step 4): on each timeout, at most once per
    /// [`crate::version::PROBE_INTERVAL_MS`] per peer.
    pub(super) fn probe_versions(&mut self, now_ms: u64) {
        let ours = self.config.versions;
        let due: Vec<String> = self
            .peers
            .iter_mut()
            .filter_map(|(id, peer)| peer.version.probe_due(now_ms, &ours).then(|| id.clone()))
            .collect();
        if due.is_empty() {
            return;
        }
        let frame = self.digest_frame();
        for peer in due {
            self.send_as(&peer, &frame, ours.frame.max);
        }
    }

    /// The versions to send to `to` in; `None` when its ranges do not meet this node's
    /// (nothing is sent to it then).
    pub(super) fn spoken_to(&self, to: &str) -> Option<Spoken> {
        let ours = &self.config.versions;
        match self.peers.get(to) {
            Some(peer) => peer.version.spoken(ours).ok(),
            None => Some(Spoken {
                frame: ours.frame.max,
                schema: ours.schema.max,
            }),
        }
    }

    /// What this node advertises.
    pub fn versions(&self) -> &Ranges {
        &self.config.versions
    }

    /// The versions this node speaks with `peer`: `None` for a peer not heard yet, or
    /// refused.
    pub fn spoken_with(&self, peer: &str) -> Option<Spoken> {
        let state = self.peers.get(peer)?;
        if state.version.refused {
            return None;
        }
        state.version.theirs?;
        state.version.spoken(&self.config.versions).ok()
    }
}
