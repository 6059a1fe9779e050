//! Tests of [`Node`] over a small simulated network ([`harness::Harness`]), one file per
//! concern of the node.

use std::collections::{BTreeMap, BTreeSet};

use statusmesh_crdt::{ActorId, DocEvent, Observation, State};

use super::*;
use crate::membership::MemberState;
use harness::Harness;

mod broadcast;
mod entries;
mod epochs;
mod harness;
mod joins;
mod membership;
mod repair;
mod versions;
mod writes;
