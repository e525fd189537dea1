//! Placeholder: the retry benches land with their layer.
fn main() {}
