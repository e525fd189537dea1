//! The fault plan: which calls fail, how long each is delayed. Free of tower
//! types; deterministic for a seed and a call number.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::ConfigError;

/// How much latency to inject into a delayed call.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Latency {
    /// Exactly this long, every time.
    Fixed(Duration),
    /// Uniformly distributed in `min..=max`.
    Uniform {
        /// The shortest delay.
        min: Duration,
        /// The longest delay (at least `min`).
        max: Duration,
    },
    /// Exponentially distributed with this mean before the cut at `max`:
    /// mostly short, with a long tail, like a busy dependency. The cut
    /// lowers the mean of the delays drawn to `mean × (1 − e^(−max/mean))`:
    /// 63 % of `mean` when `max == mean`, 95 % when `max` is 3 × `mean`.
    Exponential {
        /// The mean delay (above zero).
        mean: Duration,
        /// No delay is longer than this (at least `mean`).
        max: Duration,
    },
}

impl Latency {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Latency::Fixed(_) => Ok(()),
            Latency::Uniform { min, max } if min > max => Err(ConfigError::new(
                "chaos",
                format!("latency Uniform needs min <= max, got min {min:?} and max {max:?}"),
            )),
            Latency::Uniform { .. } => Ok(()),
            Latency::Exponential { mean, .. } if mean.is_zero() => Err(ConfigError::new(
                "chaos",
                "latency Exponential needs a mean above zero, got 0",
            )),
            Latency::Exponential { mean, max } if max < mean => Err(ConfigError::new(
                "chaos",
                format!("latency Exponential needs max >= mean, got mean {mean:?} and max {max:?}"),
            )),
            Latency::Exponential { .. } => Ok(()),
        }
    }

    fn sample(&self, rng: &mut SmallRng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                if min == max {
                    min
                } else {
                    rng.random_range(min..=max)
                }
            }
            Latency::Exponential { mean, max } => {
                // Inverse transform: -ln(1 - u) with u in [0, 1) is finite and >= 0.
                let u: f64 = rng.random();
                let secs = -(1.0 - u).ln() * mean.as_secs_f64();
                let max_secs = max.as_secs_f64();
                if secs >= max_secs {
                    max
                } else {
                    Duration::try_from_secs_f64(secs).unwrap_or(max)
                }
            }
        }
    }
}

/// Why a call was made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The call drew an injected error (see `error_rate`).
    Error,
    /// The call fell inside an outage window.
    Outage,
}

impl Fault {
    /// `"error"` or `"outage"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Fault::Error => "error",
            Fault::Outage => "outage",
        }
    }
}

/// An outage window, `[start, end)` since the layer's creation, repeated
/// every `period` when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: Duration,
    pub(crate) end: Duration,
    pub(crate) period: Option<Duration>,
}

impl Window {
    pub(crate) fn contains(&self, at: Duration) -> bool {
        if at < self.start {
            return false;
        }
        match self.period {
            None => at < self.end,
            Some(period) => {
                let into = (at - self.start).as_nanos() % period.as_nanos().max(1);
                into < (self.end - self.start).as_nanos()
            }
        }
    }
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Delay before the response (or failure) is delivered.
    pub(crate) delay: Option<Duration>,
    /// Fail instead of calling the inner service.
    pub(crate) fault: Option<Fault>,
}

/// The validated fault configuration.
#[derive(Debug, Clone)]
pub(crate) struct Faults {
    pub(crate) seed: u64,
    pub(crate) error_rate: f64,
    pub(crate) latency: Option<Latency>,
    pub(crate) latency_rate: f64,
    /// Outage windows.
    pub(crate) outages: Vec<Window>,
}

impl Faults {
    /// The plan for call number `call` (0-based), made `elapsed` after the
    /// layer was created. Draws from a generator seeded by `(seed, call)`, so
    /// the plan of a call depends only on the seed and its number.
    pub(crate) fn plan(&self, call: u64, elapsed: Duration) -> Plan {
        let mut rng = SmallRng::seed_from_u64(
            self.seed ^ call.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        // Always the same two draws per call, whatever the configuration.
        let error_draw: f64 = rng.random();
        let latency_draw: f64 = rng.random();
        let delay = match self.latency {
            Some(latency) if latency_draw < self.latency_rate => {
                Some(latency.sample(&mut rng)).filter(|d| !d.is_zero())
            }
            _ => None,
        };
        let fault = if self.outages.iter().any(|w| w.contains(elapsed)) {
            Some(Fault::Outage)
        } else if error_draw < self.error_rate {
            Some(Fault::Error)
        } else {
            None
        };
        Plan { delay, fault }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(error_rate: f64) -> Faults {
        Faults {
            seed: 7,
            error_rate,
            latency: None,
            latency_rate: 1.0,
            outages: vec![Window {
                start: Duration::from_secs(10),
                end: Duration::from_secs(20),
                period: None,
            }],
        }
    }

    #[test]
    fn rates_zero_and_one_are_exact() {
        let never = faults(0.0);
        let always = faults(1.0);
        for call in 0..1000 {
            assert_eq!(never.plan(call, Duration::ZERO).fault, None);
            assert_eq!(always.plan(call, Duration::ZERO).fault, Some(Fault::Error));
        }
    }

    #[test]
    fn outage_window_is_half_open() {
        let f = faults(0.0);
        let at = |ms| f.plan(0, Duration::from_millis(ms)).fault;
        assert_eq!(at(9_999), None);
        assert_eq!(at(10_000), Some(Fault::Outage));
        assert_eq!(at(19_999), Some(Fault::Outage));
        assert_eq!(at(20_000), None);
    }

    #[test]
    fn periodic_window_repeats() {
        let w = Window {
            start: Duration::from_secs(5),
            end: Duration::from_secs(7),
            period: Some(Duration::from_secs(10)),
        };
        let at = |ms| w.contains(Duration::from_millis(ms));
        assert!(!at(0) && !at(4_999));
        assert!(at(5_000) && at(6_999));
        assert!(!at(7_000) && !at(14_999));
        assert!(at(15_000) && at(16_999));
        assert!(!at(17_000));
        assert!(at(1_000_005_000));
    }

    #[test]
    fn latency_samples_stay_in_range() {
        let mut rng = SmallRng::seed_from_u64(1);
        let uniform = Latency::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        };
        let exp = Latency::Exponential {
            mean: Duration::from_millis(5),
            max: Duration::from_millis(50),
        };
        for _ in 0..10_000 {
            let d = uniform.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
            assert!(exp.sample(&mut rng) <= Duration::from_millis(50));
        }
    }

    #[test]
    fn invalid_latency_is_refused() {
        let bad = Latency::Uniform {
            min: Duration::from_secs(2),
            max: Duration::from_secs(1),
        };
        assert!(bad.validate().is_err());
        let bad = Latency::Exponential {
            mean: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        assert!(bad.validate().is_err());
    }
}
