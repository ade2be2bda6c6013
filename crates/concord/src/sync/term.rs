//! Terms: `(epoch, leader)`, the fencing token of library sequencing. A device
//! adopts the highest term it has seen; a leader sequences entries only under
//! its own term, so two leaders never assign the same library sequence.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `(epoch, leader)`: the higher one wins (fencing, split-brain resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term {
    pub epoch: u64,
    pub leader: Uuid,
}
