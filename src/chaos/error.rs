use std::error::Error;
use std::fmt;

use super::fault::Fault;
use crate::error::Name;

/// The error a [`ChaosLayer`](super::ChaosLayer) returns for an injected fault
/// when no custom error was configured. It is *not* a seawall rejection: it
/// stands for a failing dependency (HTTP 500 / gRPC `UNKNOWN` through the
/// [`http`](crate::http) and [`grpc`](crate::grpc) mappings; a failure for the
/// default classifiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    name: Name,
    fault: Fault,
}

impl InjectedFault {
    /// Creates the error for the chaos layer instance `name`.
    pub fn new(name: impl Into<Name>, fault: Fault) -> Self {
        InjectedFault {
            name: name.into(),
            fault,
        }
    }

    /// The name of the chaos layer instance that injected the fault.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Why the call failed.
    pub fn fault(&self) -> Fault {
        self.fault
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected {} ({})", self.fault.as_str(), self.name)
    }
}

impl Error for InjectedFault {}
