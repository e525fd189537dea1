//! Placeholder: the stack benches land with their layer.
fn main() {}
