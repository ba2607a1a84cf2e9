//! One memory budget for everything a plugin instance allocates.

use wasmtime::ResourceLimiter;

/// Counted against the memory budget for each table element (a pointer and its type).
const TABLE_ELEMENT_BYTES: usize = 16;
/// At most this many core instances, tables and memories in one plugin instance.
pub(super) const MAX_INSTANCES: usize = 64;
pub(super) const MAX_TABLES: usize = 64;
pub(super) const MAX_MEMORIES: usize = 64;

/// One memory budget for everything a plugin instance allocates: every linear
/// memory and table of every core instance counts against the same total.
pub(super) struct MemoryBudget {
    pub(super) limit: usize,
    pub(super) used: usize,
    /// Whether a growth was refused, to name the limit when the plugin traps.
    pub(super) refused: bool,
}

impl MemoryBudget {
    pub(super) fn grow(&mut self, bytes: usize) -> bool {
        match self.used.checked_add(bytes).filter(|n| *n <= self.limit) {
            Some(n) => {
                self.used = n;
                true
            }
            None => {
                self.refused = true;
                false
            }
        }
    }
}

impl ResourceLimiter for MemoryBudget {
    // Also called with `current == 0` when a memory is created.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
