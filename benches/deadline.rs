//! Placeholder: the deadline benches land with their layer.
fn main() {}
