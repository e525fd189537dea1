//! Placeholder: the circuit_breaker benches land with their layer.
fn main() {}
