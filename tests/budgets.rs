//! Size budgets: the shipped guest component stays within what the project
//! allows for it.

mod common;

use common::*;

/// The shipped guest (release profile `guest`) stays within its 400 KiB budget.
#[test]
fn guest_component_fits_its_size_budget() {
    let size = std::fs::metadata(GUEST_WASM).unwrap().len();
    assert!(size <= 400 * 1024, "the guest grew to {} KiB", size / 1024);
}
