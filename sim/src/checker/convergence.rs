//! Liveness: after the heal, every node holds the same heads and the same liveness (then
//! their views are equal at equal time), and how far the cut-off side fell behind in epochs.

use std::collections::BTreeMap;

use statusmesh_crdt::Name;

use crate::checker::cursor_of;
use crate::clock;
use crate::failure::Failure;
use crate::sim::Sim;

impl Sim {
    /// Every node runs and holds the first node's heads (liveness may still differ).
    pub(crate) fn heads_converged(&self) -> bool {
        let Some(first) = self.slots[0].node.as_ref() else {
            return false;
        };
        let cursor = cursor_of(first.replica());
        self.slots.iter().skip(1).all(|slot| {
            slot.node
                .as_ref()
                .is_some_and(|n| cursor_of(n.replica()) == cursor)
        })
    }

    /// Equal heads and equal liveness everywhere: the views are equal at equal time.
    pub(crate) fn converged(&self) -> bool {
        let Some(first) = self.slots[0].node.as_ref() else {
            return false;
        };
        let cursor = cursor_of(first.replica());
        let liveness = first.replica().liveness();
        self.slots.iter().skip(1).all(|slot| {
            slot.node.as_ref().is_some_and(|n| {
                cursor_of(n.replica()) == cursor && n.replica().liveness() == liveness
            })
        })
    }

    /// Nodes whose heads or liveness differ from the first node's (at most ten named).
    pub(crate) fn divergent_nodes(&self) -> Vec<String> {
        let Some(first) = self.slots[0].node.as_ref() else {
            return vec![self.members[0].id.clone()];
        };
        let cursor = cursor_of(first.replica());
        let liveness = first.replica().liveness().digest();
        let mut differ = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let same = slot.node.as_ref().is_some_and(|n| {
                n.replica().liveness().digest() == liveness && cursor_of(n.replica()) == cursor
            });
            if !same {
                differ.push(self.members[i].id.clone());
                if differ.len() >= 10 {
                    break;
                }
            }
        }
        differ
    }

    /// Equal views at equal time: the same JSON on every running node. False after a
    /// failure.
    pub(crate) fn check_views(&mut self) -> bool {
        let now_ms = clock::true_ms(self.now_us);
        let mut first_view: Option<String> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(node) = &slot.node else {
                continue;
            };
            let view = match serde_json::to_string(&node.replica().view(now_ms, None)) {
                Ok(v) => v,
                Err(e) => {
                    self.fail(Failure::ViewUnserializable {
                        error: e.to_string(),
                    });
                    return false;
                }
            };
            match &first_view {
                None => first_view = Some(view),
                Some(first) if *first != view => {
                    self.fail(Failure::ViewsDiffer {
                        node: self.members[i].id.clone(),
                        reference: self.members[0].id.clone(),
                    });
                    return false;
                }
                Some(_) => {}
            }
        }
        true
    }

    /// How many epochs the nodes outside the partition's cut-off side are ahead of those on
    /// it (running nodes only), the most over services; 0 without a partition on.
    pub(crate) fn epoch_gap(&self) -> u32 {
        if !self.net.partition_active {
            return 0;
        }
        let mut rest: BTreeMap<Name, u32> = BTreeMap::new();
        let mut cut: BTreeMap<Name, u32> = BTreeMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(node) = &slot.node else { continue };
            let side = if self.net.cut[i] { &mut cut } else { &mut rest };
            for doc in node.replica().docs() {
                let epoch = side.entry(doc.service().clone()).or_default();
                *epoch = (*epoch).max(doc.epoch());
            }
        }
        rest.iter()
            .map(|(service, e)| e.saturating_sub(cut.get(service).copied().unwrap_or(0)))
            .max()
            .unwrap_or(0)
    }
}
