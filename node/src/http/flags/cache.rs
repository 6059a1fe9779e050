//! The flag set evaluations read: taken from the driver at most every [`FLAGS_MAX_AGE`] and
//! shared by every request in between, so an evaluation costs no trip to the driver and no
//! status view. A local flag write drops it at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statusmesh_crdt::flags::FlagSet;

use crate::driver::{NodeHandle, Unavailable};

/// The oldest flag set an evaluation may read.
pub const FLAGS_MAX_AGE: Duration = Duration::from_millis(100);

/// The cached flag set.
#[derive(Debug, Default)]
pub struct FlagCache {
    set: Mutex<Option<(Instant, Arc<FlagSet>)>>,
}

impl FlagCache {
    /// The flags and availability now (at most [`FLAGS_MAX_AGE`] old).
    pub async fn get(&self, node: &NodeHandle) -> Result<Arc<FlagSet>, Unavailable> {
        if let Ok(guard) = self.set.lock() {
            if let Some((at, set)) = guard.as_ref() {
                if at.elapsed() < FLAGS_MAX_AGE {
                    return Ok(set.clone());
                }
            }
        }
        let set = Arc::new(node.flags().await?);
        if let Ok(mut guard) = self.set.lock() {
            *guard = Some((Instant::now(), set.clone()));
        }
        Ok(set)
    }

    /// Forgets the cached set (after a local write).
    pub fn invalidate(&self) {
        if let Ok(mut guard) = self.set.lock() {
            *guard = None;
        }
    }
}
