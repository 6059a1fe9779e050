//! Every flag of a replica with the availability they are evaluated against: what one
//! evaluation request (or the rollout controller) reads, taken in one go.
//!
//! OFREP has one flat key namespace; statusmesh flags live per service. A flag's OFREP key is
//! `<service>/<key>`; a bare `<key>` also finds it when no other service has a flag of that
//! key (otherwise the bare key is ambiguous and names the candidates).

use std::collections::BTreeMap;

use super::availability::AvailabilityView;
use super::spec::Flag;
use crate::model::Name;
use crate::replica::Replica;

/// The flags and availability of a replica at one time.
#[derive(Debug, Clone, Default)]
pub struct FlagSet {
    /// OFREP key (`<service>/<key>`) to flag.
    flags: BTreeMap<String, Flag>,
    /// Bare key to the OFREP keys of the flags with that key.
    by_key: BTreeMap<String, Vec<String>>,
    pub availability: AvailabilityView,
    /// When the set was taken, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// What an OFREP key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The flag, under its full OFREP key.
    Found(&'a str, &'a Flag),
    NotFound,
    /// A bare key that more than one service has: their full keys.
    Ambiguous(&'a [String]),
}

impl FlagSet {
    /// The flags of every document of `replica`, against its status view at `now_ms`.
    pub fn from_replica(replica: &Replica, now_ms: u64) -> Self {
        let view = replica.view(now_ms, None);
        let mut set = Self {
            availability: AvailabilityView::from_view(&view),
            at_ms: now_ms,
            ..Self::default()
        };
        for doc in replica.docs() {
            for (key, flag) in doc.flags() {
                set.insert(doc.service(), &key, flag);
            }
        }
        set
    }

    /// Adds a flag (tests, benchmarks, and [`Self::from_replica`]).
    pub fn insert(&mut self, service: &Name, key: &Name, flag: Flag) {
        let id = ofrep_key(service, key);
        let ids = self.by_key.entry(key.to_string()).or_default();
        if !ids.contains(&id) {
            ids.push(id.clone());
        }
        self.flags.insert(id, flag);
    }

    /// The flag an OFREP key names.
    pub fn lookup(&self, key: &str) -> Lookup<'_> {
        if let Some((id, flag)) = self.flags.get_key_value(key) {
            return Lookup::Found(id, flag);
        }
        match self.by_key.get(key).map(Vec::as_slice) {
            Some([only]) => match self.flags.get_key_value(only) {
                Some((id, flag)) => Lookup::Found(id, flag),
                None => Lookup::NotFound,
            },
            Some(many) if many.len() > 1 => Lookup::Ambiguous(many),
            _ => Lookup::NotFound,
        }
    }

    /// Every flag, by OFREP key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Flag)> {
        self.flags.iter().map(|(id, flag)| (id.as_str(), flag))
    }

    /// How many flags there are.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
}

/// The OFREP key of flag `key` of `service`.
pub fn ofrep_key(service: &Name, key: &Name) -> String {
    format!("{service}/{key}")
}
