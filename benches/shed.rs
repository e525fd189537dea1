//! Placeholder: the shed benches land with their layer.
fn main() {}
