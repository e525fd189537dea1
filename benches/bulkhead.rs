//! Placeholder: the bulkhead benches land with their layer.
fn main() {}
