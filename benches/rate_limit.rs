//! Placeholder: the rate_limit benches land with their layer.
fn main() {}
