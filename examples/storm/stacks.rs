//! The seawall client and server stacks, exactly as an application would write them.

use super::{Backend, Network, Scenario, Stack, Stacks};

/// seawall's recommended stacks.
pub(super) fn seawall(scenario: &Scenario, backend: Backend) -> Stacks {
    let _ = scenario;
    Stacks {
        client: Stack::new(Network::new(backend)),
        client_desc: "(seawall layers not merged yet: plain call)".into(),
        server_desc: "backend (unbounded queue)".into(),
    }
}
