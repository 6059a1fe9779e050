//! The tree policy: which peers a root's tree starts with at this node, when this node
//! becomes its region's entry for a root, how the root re-chooses its entries into other
//! regions as round trips are measured, and how trees change when a peer goes down or comes
//! back (see the module docs of [`crate::plumtree`]). It reads the mesh through
//! [`MeshView`] and draws randomness only from the RNG it is given, in a fixed order.

use std::collections::BTreeMap;

use rand::Rng;
use statusmesh_crdt::liveness::Fnv64;

use super::{EntryCandidate, Plumtree, RootTree, RTT_SWAP_MIN_MS, RTT_SWAP_MIN_PERCENT};
use crate::membership::MemberState;

/// What the tree policy reads of the mesh: the peers, their regions, and what the failure
/// detector and direct contact say of them. The node implements it over its peer table.
pub(crate) trait MeshView {
    /// This node's id.
    fn me(&self) -> &str;
    /// This node's region.
    fn region(&self) -> &str;
    /// Every peer (never this node) and its region, in id order.
    fn peers(&self) -> impl Iterator<Item = (&str, &str)>;
    /// The region of `peer`, when it is a peer.
    fn region_of(&self, peer: &str) -> Option<&str>;
    /// The failure detector's verdict on `peer`.
    fn swim_state(&self, peer: &str) -> MemberState;
    /// Whether a frame from `peer` itself arrived recently enough to prove it alive.
    fn heard_recently(&self, peer: &str) -> bool;
}

/// How a root ranks the peers of another region as its entry there: alive first, then the
/// lowest measured round trip, then [`spread_rank`] (fields compare in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryRank<'a> {
    down: bool,
    rtt_ms: u64,
    spread: u64,
    peer: &'a str,
}

impl Plumtree {
    /// Makes sure `root` has a tree here before its changes are forwarded: a root seen for
    /// the first time gets [`Self::default_tree`] (given the `parent` that pushed its change;
    /// `None` for a repair). Otherwise, a change pushed from another region makes this node
    /// its region's entry for the root, whatever role it had (the root's choice moves after a
    /// peer went down or came back, and a heal brings changes in anywhere): it pushes on to
    /// the region but `sender`, except to peers that pruned it.
    pub(crate) fn prepare_tree(
        &mut self,
        mesh: &impl MeshView,
        rng: &mut impl Rng,
        now_ms: u64,
        root: &str,
        parent: Option<&str>,
        sender: Option<&str>,
    ) {
        if self.tree(root).is_none() {
            self.ensure_tree(mesh, rng, now_ms, root, parent);
        } else if root != mesh.me() && is_of_another_region(mesh, parent) {
            let mates = candidates(mesh, root, sender, true);
            self.add_eager_unless_lazy(root, &mates);
        }
    }

    /// Installs [`Self::default_tree`] of `root` unless it has a tree.
    pub(crate) fn ensure_tree(
        &mut self,
        mesh: &impl MeshView,
        rng: &mut impl Rng,
        now_ms: u64,
        root: &str,
        sender: Option<&str>,
    ) {
        if self.tree(root).is_none() {
            let tree = self.default_tree(mesh, rng, root, sender);
            self.tree_or_insert(now_ms, root, || tree);
        }
    }

    /// The first tree of `root` at this node, given who sent its first change (`None` for
    /// this node's own changes, and for a tree made by a graft).
    ///
    /// - The root pushes to every peer of its region and to the best peer of every other
    ///   region (alive, lowest measured round trip, then a rank that spreads roots over the
    ///   region's peers); the second best of each region is lazy, ready to take over.
    /// - A node that got the change from another region pushes on to its own region.
    /// - Any other node is a leaf that announces to a few peers of its region.
    pub(crate) fn default_tree(
        &self,
        mesh: &impl MeshView,
        rng: &mut impl Rng,
        root: &str,
        sender: Option<&str>,
    ) -> RootTree {
        let mut tree = RootTree::default();
        let fanout = self.bounds.lazy_fanout;
        if root == mesh.me() {
            let mut by_region: BTreeMap<&str, Vec<EntryRank<'_>>> = BTreeMap::new();
            for (id, region) in mesh.peers() {
                if region == mesh.region() {
                    tree.eager.insert(id.to_owned());
                    continue;
                }
                by_region.entry(region).or_default().push(EntryRank {
                    down: mesh.swim_state(id) == MemberState::Down,
                    rtt_ms: self.rtt_ms(id).unwrap_or(u64::MAX),
                    spread: spread_rank(root, id),
                    peer: id,
                });
            }
            for mut ranked in by_region.into_values() {
                ranked.sort();
                let mut best = ranked.into_iter().map(|rank| rank.peer.to_owned());
                tree.eager.extend(best.next());
                tree.lazy.extend(best.next());
            }
            return tree;
        }
        let entry = is_of_another_region(mesh, sender);
        let mates = candidates(mesh, root, sender, true);
        let others = candidates(mesh, root, sender, false);
        if entry {
            tree.eager.extend(mates);
            tree.lazy.extend(pick_random(rng, others, fanout));
        } else {
            let mut lazy = pick_random(rng, mates, fanout);
            let short = fanout.saturating_sub(lazy.len());
            lazy.extend(pick_random(rng, others, short));
            tree.lazy.extend(lazy);
        }
        tree
    }

    /// A peer back up rejoins this node's own tree where the default tree would have it: as
    /// a peer of this region, or as the entry of a region left without one (its entry went
    /// down, or a partition cut the whole region off).
    pub(crate) fn restore_in_own_tree(&mut self, mesh: &impl MeshView, now_ms: u64, up: &str) {
        let Some(region) = mesh.region_of(up) else {
            return;
        };
        let Some(tree) = self.tree(mesh.me()) else {
            return;
        };
        let region_served = tree.eager.iter().any(|p| mesh.region_of(p) == Some(region));
        if region == mesh.region() || !region_served {
            self.make_eager(now_ms, mesh.me(), up);
        }
    }

    /// A peer declared down leaves every tree; where it was eager, a lazy peer of its region
    /// (or else any other live peer of its region) takes its role.
    pub(crate) fn remove_from_trees(&mut self, mesh: &impl MeshView, down: &str) {
        let Some(region) = mesh.region_of(down) else {
            return;
        };
        let me = mesh.me();
        let alive_in_region = |id: &str| {
            id != down
                && id != me
                && mesh.region_of(id) == Some(region)
                && mesh.swim_state(id) != MemberState::Down
        };
        self.remove_peer(down, |tree| {
            tree.lazy
                .iter()
                .find(|id| alive_in_region(id))
                .cloned()
                .or_else(|| {
                    mesh.peers()
                        .map(|(id, _)| id)
                        .find(|id| !tree.eager.contains(*id) && alive_in_region(id))
                        .map(str::to_owned)
                })
        });
    }

    /// Re-chooses this node's entry into each other region by measured round trip and
    /// failure ([`Self::rechoose_entries`]), once per graft timeout: linear in peers.
    /// A suspected entry gives way before it is declared down, so its region keeps getting
    /// pushes meanwhile. (Missing acks were tried as a second sign: under 20% loss a lost
    /// ack swapped live entries and cost copies, and it did not help crash-restart.)
    /// Returns how many entries were swapped.
    pub(crate) fn rechoose_own_entries(&mut self, mesh: &impl MeshView, now_ms: u64) -> usize {
        if now_ms < self.next_entry_check_ms || self.tree(mesh.me()).is_none() {
            return 0;
        }
        self.next_entry_check_ms = now_ms + self.bounds.graft_timeout_ms;
        // Borrowed, and the failure detector asked once per peer: this runs every graft
        // timeout on every node, over every peer.
        let candidates: Vec<EntryCandidate<'_>> = mesh
            .peers()
            .filter(|(_, region)| *region != mesh.region())
            .filter_map(|(id, region)| {
                let state = mesh.swim_state(id);
                (state != MemberState::Down).then(|| EntryCandidate {
                    peer: id,
                    region,
                    failing: state == MemberState::Suspect && !mesh.heard_recently(id),
                })
            })
            .collect();
        self.rechoose_entries(mesh.me(), &candidates).len()
    }

    /// Re-chooses `root`'s entry into each region of `candidates` (the live peers of other
    /// regions, each marked failing when suspected by the failure detector): a failing
    /// entry gives way to the best peer of its region that is not failing; a measured entry
    /// gives way to a measured peer whose round trip is clearly lower (see
    /// [`RTT_SWAP_MIN_PERCENT`]). The best peer is the lowest measured round trip, then the
    /// lowest [`spread_rank`]. The old entry becomes lazy. Work is linear in `candidates`.
    /// Returns the swaps made, (old, new).
    pub fn rechoose_entries(
        &mut self,
        root: &str,
        candidates: &[EntryCandidate<'_>],
    ) -> Vec<(String, String)> {
        let mut swaps = Vec::new();
        let Some(tree) = self.trees.get(root) else {
            return swaps;
        };
        // Each candidate's role and round trip, looked up once; grouped by region (a stable
        // sort keeps the candidates' order within a region).
        let mut facts: Vec<(&EntryCandidate<'_>, bool, Option<u64>)> = candidates
            .iter()
            .map(|c| (c, tree.eager.contains(c.peer), self.rtt_ms(c.peer)))
            .collect();
        facts.sort_by(|a, b| a.0.region.cmp(b.0.region));
        for peers in facts.chunk_by(|a, b| a.0.region == b.0.region) {
            // The worst entry: a failing one first, then the slowest measured one.
            let entry = peers
                .iter()
                .filter(|(_, eager, _)| *eager)
                .max_by_key(|(c, _, rtt)| (c.failing, *rtt));
            let Some(&(entry, _, entry_rtt)) = entry else {
                continue;
            };
            // The lowest round trip, then the lowest spread rank (hashed only on a tie).
            let best = peers
                .iter()
                .filter(|(c, eager, _)| !c.failing && !*eager)
                .min_by(|(a, _, a_rtt), (b, _, b_rtt)| {
                    a_rtt
                        .unwrap_or(u64::MAX)
                        .cmp(&b_rtt.unwrap_or(u64::MAX))
                        .then_with(|| spread_rank(root, a.peer).cmp(&spread_rank(root, b.peer)))
                });
            let Some(&(best, _, best_rtt)) = best else {
                continue;
            };
            let clearly_faster = match (entry_rtt, best_rtt) {
                (Some(old), Some(new)) => {
                    new.saturating_mul(100) <= old.saturating_mul(100 - RTT_SWAP_MIN_PERCENT)
                        && old.saturating_sub(new) >= RTT_SWAP_MIN_MS
                }
                _ => false,
            };
            if entry.failing || clearly_faster {
                swaps.push((entry.peer.to_owned(), best.peer.to_owned()));
            }
        }
        let lazy_max = self.bounds.lazy_peers_max;
        if let Some(tree) = self.trees.get_mut(root) {
            for (old, new) in &swaps {
                tree.eager.remove(old);
                tree.lazy.remove(new);
                tree.eager.insert(new.clone());
                if tree.lazy.len() < lazy_max {
                    tree.lazy.insert(old.clone());
                }
            }
        }
        if !swaps.is_empty() {
            self.last_root = Some(root.to_owned());
        }
        swaps
    }
}

/// Whether `sender` is a peer of another region than this node's.
fn is_of_another_region(mesh: &impl MeshView, sender: Option<&str>) -> bool {
    sender
        .and_then(|s| mesh.region_of(s))
        .is_some_and(|region| region != mesh.region())
}

/// The peers of this node's region (`same_region`) or of the others, but `root` and
/// `sender`.
fn candidates(
    mesh: &impl MeshView,
    root: &str,
    sender: Option<&str>,
    same_region: bool,
) -> Vec<String> {
    mesh.peers()
        .filter(|(id, region)| {
            (*region == mesh.region()) == same_region && *id != root && Some(*id) != sender
        })
        .map(|(id, _)| id.to_owned())
        .collect()
}

/// Up to `count` of `candidates`, picked at random (a partial Fisher–Yates shuffle): one
/// draw per pick.
pub(crate) fn pick_random(
    rng: &mut impl Rng,
    mut candidates: Vec<String>,
    count: usize,
) -> Vec<String> {
    let count = count.min(candidates.len());
    for i in 0..count {
        let j = rng.random_range(i..candidates.len());
        candidates.swap(i, j);
    }
    candidates.truncate(count);
    candidates
}

/// A stable pseudo-random rank of `peer` for `root`: spreads the roots' choice among equal
/// peers of a region, so that one node is not every root's entry into its region.
pub fn spread_rank(root: &str, peer: &str) -> u64 {
    let mut hash = Fnv64::new();
    hash.write(root.as_bytes());
    hash.write(&[0]);
    hash.write(peer.as_bytes());
    hash.finish()
}
