//! The stacks built from [`config`](crate::config) sections.

use super::client::{ClientStack, ClientStackBuilder, ClientStackLayer};
use super::server::{ServerStack, ServerStackBuilder, ServerStackLayer};
use crate::config::{ClientSettings, ServerSettings, at};
use crate::error::ConfigError;

/// The rate-limit part of a [`ServerStackBuilder`], as a settings file
/// reaches it: none ([`Skip`](super::Skip)) or a rate limit's builder,
/// whose quota the file's `rate_limit` replaces.
pub trait RateLimitSetting: super::part::sealed::Sealed {
    /// Takes the file's `rate_limit`. A stack without a rate limit refuses
    /// it: a rate limit changes the stack's type, so it is added in code
    /// (`.rate_limit(quota, |r| r)`, which the file's rate then replaces).
    #[doc(hidden)]
    fn set_rate(&mut self, rate: &crate::config::Rate) -> Result<(), ConfigError>;
}

/// The rate-limit part of a built [`ServerStackLayer`], as a reload
/// reaches it: none (tower's `Identity`) or a
/// [`RateLimitLayer`](crate::rate_limit::RateLimitLayer), whose quota a
/// reload changes through
/// [`set_quota`](crate::rate_limit::RateLimitLayer::set_quota).
pub trait RateLimitReload: super::part::sealed::Sealed {
    /// Whether `rate` would be taken (nothing changes).
    #[doc(hidden)]
    fn check_rate(&self, rate: &crate::config::Rate) -> Result<(), ConfigError>;
    /// Takes `rate`.
    #[doc(hidden)]
    fn reload_rate(&self, rate: &crate::config::Rate) -> Result<(), ConfigError>;
}

fn no_rate_limit() -> ConfigError {
    ConfigError::new(
        "rate_limit",
        "this stack has no rate limit; add `.rate_limit(quota, |r| r)` to its builder \
         (the file's rate then replaces the quota) or remove the setting",
    )
}

impl RateLimitSetting for super::Skip {
    fn set_rate(&mut self, _: &crate::config::Rate) -> Result<(), ConfigError> {
        Err(no_rate_limit())
    }
}

impl RateLimitReload for tower::layer::util::Identity {
    fn check_rate(&self, _: &crate::config::Rate) -> Result<(), ConfigError> {
        let e = no_rate_limit();
        Err(ConfigError::new(
            e.layer(),
            format!("rate_limit: {}", e.message()),
        ))
    }

    fn reload_rate(&self, rate: &crate::config::Rate) -> Result<(), ConfigError> {
        self.check_rate(rate)
    }
}

/// `"{name}: {message}"`: a reload's error, named by the layer instance.
fn named(name: &str, e: ConfigError) -> ConfigError {
    ConfigError::new(e.layer(), format!("{name}: {}", e.message()))
}

#[cfg(feature = "rate-limit")]
impl<X, D> RateLimitSetting for crate::rate_limit::RateLimitLayerBuilder<X, D> {
    fn set_rate(&mut self, rate: &crate::config::Rate) -> Result<(), ConfigError> {
        rate.quota().validate("quota")?;
        self.set_quota(rate.quota());
        Ok(())
    }
}

#[cfg(feature = "rate-limit")]
impl<X, D> RateLimitReload for crate::rate_limit::RateLimitLayer<X, D> {
    fn check_rate(&self, rate: &crate::config::Rate) -> Result<(), ConfigError> {
        self.check_quota(rate.quota())
            .map_err(|e| named(self.name(), e))
    }

    fn reload_rate(&self, rate: &crate::config::Rate) -> Result<(), ConfigError> {
        self.set_quota(rate.quota())
            .map_err(|e| named(self.name(), e))
    }
}

impl<P, C, L, O, H> ClientStackBuilder<P, C, L, O, H> {
    /// Applies a [`ClientSettings`] section (read from a file): each setting
    /// present replaces the builder's; absent ones are left as they are.
    pub fn configure(self, s: &ClientSettings) -> Self {
        let mut b = self;
        if let Some(d) = s.total_budget {
            b = b.total_budget(d);
        }
        if let Some(d) = s.attempt_timeout {
            b = b.attempt_timeout(d);
        }
        if let Some(d) = s.slow_call_duration {
            b = b.slow_call_duration(d);
        }
        let (r, k, h) = (s.retry.clone(), s.breaker.clone(), s.bulkhead.clone());
        let l = s.limit.clone();
        b.retry(move |rb| rb.configure(&r))
            .breaker(move |bb| bb.configure(&k))
            .bulkhead(move |bh| bh.configure(&h))
            .adaptive_limit(move |lb| lb.configure(&l))
    }
}

impl ClientStack {
    /// The generic client stack `name` built from a [`ClientSettings`]
    /// section (feature `serde`): what `ClientStack::builder(name)` with
    /// the same settings builds. For the protocol presets, use
    /// [`configure`](ClientStackBuilder::configure) on the preset's builder.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the path of the refused setting
    /// (`clients.payments.breaker: …`).
    pub fn from_config(name: &str, s: &ClientSettings) -> Result<ClientStackLayer, ConfigError> {
        ClientStack::builder(name.to_owned())
            .configure(s)
            .build()
            .map_err(|e| at(format_args!("clients.{name}"), e))
    }
}

impl<O, R: RateLimitSetting, P, T> ServerStackBuilder<O, R, P, T> {
    /// Applies a [`ServerSettings`] section (read from a file): each setting
    /// present replaces the builder's. Its `rate_limit` replaces the quota of
    /// the builder's rate limit; a rate limit changes the stack's type, so
    /// it is added in code (`.rate_limit(quota, |r| r)` before `configure`),
    /// and a stack without one refuses the file's rate when it is built
    /// (rather than leave it unapplied).
    pub fn configure(self, s: &ServerSettings) -> Self {
        let mut b = self;
        if let Some(d) = s.total_budget {
            b = b.total_budget(d);
        }
        if let Some(d) = s.handler_timeout {
            b = b.handler_timeout(d);
        }
        if let Some(rate) = &s.rate_limit {
            b = b.set_rate(rate);
        }
        let (h, l) = (s.bulkhead.clone(), s.limit.clone());
        b.bulkhead(move |bh| bh.configure(&h))
            .adaptive_limit(move |lb| lb.configure(&l))
    }
}

impl ServerStack {
    /// The generic server stack `name` built from a [`ServerSettings`]
    /// section (feature `serde`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the path of the refused setting
    /// (`server.bulkhead: …`).
    /// A `rate_limit` in the section is refused: a rate limit changes the
    /// stack's type; build it with
    /// `ServiceConfig::build_server(ServerStack::builder(name).rate_limit(q, |r| r))`.
    pub fn from_config(name: &str, s: &ServerSettings) -> Result<ServerStackLayer, ConfigError> {
        if s.rate_limit.is_some() {
            return Err(at(
                "server",
                ConfigError::new(
                    "rate_limit",
                    format!(
                        "this stack has no rate limit; build it with \
                         `ServiceConfig::build_server(ServerStack::builder({name:?}).rate_limit(quota, |r| r))` \
                         (the file's rate then replaces the quota) or remove the setting"
                    ),
                ),
            ));
        }
        ServerStack::builder(name.to_owned())
            .configure(s)
            .build()
            .map_err(|e| at("server", e))
    }
}

#[cfg(feature = "tonic")]
impl<O, H>
    ClientStackBuilder<
        crate::retry::grpc::GrpcRetry,
        crate::grpc::GrpcStatusClassifier,
        super::preset::GrpcTransportPart,
        O,
        H,
    >
{
    /// Applies what a gRPC service config says (feature `serde`): its
    /// `timeout` as the total budget, its `retryPolicy` (attempts, backoff,
    /// status codes) as the retry layer's, and opts its hedged methods in
    /// (add `.hedge(|h| h.delay(d).max_attempts(n))` with the delay and
    /// attempts of [`GrpcPolicy::hedging`](crate::config::GrpcPolicy)).
    ///
    /// # Errors
    ///
    /// What does not map, named by its field: see
    /// [`GrpcServiceConfig::policy`](crate::config::GrpcServiceConfig::policy).
    pub fn service_config(
        self,
        config: &crate::config::GrpcServiceConfig,
    ) -> Result<Self, ConfigError> {
        let p = config.policy()?;
        let mut b = self;
        if let Some(t) = p.timeout {
            b = b.total_budget(t);
        }
        let hedged = p.hedging.map(|h| h.2).unwrap_or_default();
        // The policy set on the builder before is kept (its codes when the
        // config has no retry policy, its hedged methods always).
        let earlier = *b.retry.current_policy();
        let mut policy = match &p.retry {
            Some((_, _, _, policy)) => policy.keeping_hedged_of(&earlier),
            None => earlier,
        };
        for m in &hedged {
            policy = policy.hedge_method(m);
            if !policy.hedges(m) {
                return Err(ConfigError::new(
                    "grpc_service_config",
                    format!(
                        "hedgingPolicy: {m} is one method too many beside those the builder \
                         hedges already; a stack hedges {} at most",
                        crate::retry::grpc::MAX_HEDGED_METHODS
                    ),
                ));
            }
        }
        // The codes gRPC lets the other copies run after: a first attempt
        // that fails with a code the stack's retry policy does not retry
        // ends the request (the hedge reads the retry policy).
        for (i, m) in config.method_config.iter().enumerate() {
            let Some(h) = &m.hedging_policy else { continue };
            let field = format!("methodConfig[{i}].hedgingPolicy.nonFatalStatusCodes");
            for c in &h.non_fatal_status_codes {
                let c = crate::config::grpc::code(&field, c)?;
                if !policy.retries(c) {
                    return Err(ConfigError::new(
                        "grpc_service_config",
                        format!(
                            "{field}: {c:?} is not retried by the stack's retry policy, so a \
                             first attempt that fails with it ends the request; add it to the \
                             retryPolicy's codes or the builder's"
                        ),
                    ));
                }
            }
        }
        let schedule = p.retry.map(|(n, base, cap, _)| (n, base, cap));
        Ok(b.retry(move |r| {
            let r = match schedule {
                Some((n, base, cap)) => r.max_attempts(n).backoff(base, cap),
                None => r,
            };
            r.policy(policy)
        }))
    }
}

impl crate::config::ServiceConfig {
    /// Applies the section `clients.<name>` to `builder` (a preset's, such
    /// as `ClientStack::http(name)`) and builds it; a refused setting is
    /// named by its path (`clients.payments.breaker: …`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the section, or the path of the refused
    /// setting.
    #[allow(clippy::type_complexity)]
    pub fn build_client<P, C, L, O, H>(
        &self,
        name: &str,
        builder: ClientStackBuilder<P, C, L, O, H>,
    ) -> Result<ClientStackLayer<P, C, L::Layer, O, H::Layer>, ConfigError>
    where
        P: 'static,
        L: super::part::StackPart,
        H: super::part::HedgePart<P>,
        C: Send + Sync + 'static,
    {
        builder
            .configure(self.client_settings(name)?)
            .build()
            .map_err(|e| at(format_args!("clients.{name}"), e))
    }

    /// Applies the `server` section to `builder` (a preset's, such as
    /// `ServerStack::http(name)`) and builds it; a refused setting is named
    /// by its path (`server.bulkhead: …`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the section, or the path of the refused
    /// setting.
    #[allow(clippy::type_complexity)]
    pub fn build_server<O, R, P, T>(
        &self,
        builder: ServerStackBuilder<O, R, P, T>,
    ) -> Result<ServerStackLayer<O::Layer, R::Layer, P, O::Innermost, T::Layer>, ConfigError>
    where
        O: super::part::IngressPart,
        R: super::part::StackPart + RateLimitSetting,
        T: super::part::StackPart,
    {
        builder
            .configure(self.server_settings()?)
            .build()
            .map_err(|e| at("server", e))
    }
}

/// A stack's name, from its deadline part's (`"{stack}.deadline"`).
fn stack_name(deadline: &str) -> &str {
    deadline.strip_suffix(".deadline").unwrap_or(deadline)
}

/// The settings of a client section that only a build applies (the
/// breaker's half-open calls and slow-call time, the bulkhead's queue),
/// checked by the layers' own builders as that build will check them.
fn check_next_build(s: &ClientSettings, breaker: &str, bulkhead: &str) -> Result<(), ConfigError> {
    if s.breaker.half_open_calls.is_some() || s.slow_call_duration.is_some() {
        let mut b = crate::circuit_breaker::CircuitBreakerLayer::builder();
        if let Some(n) = s.breaker.half_open_calls {
            b = b.permitted_calls_in_half_open(n);
        }
        if let Some(d) = s.slow_call_duration {
            b = b.slow_call_duration(d);
        }
        b.build().map_err(|e| named(breaker, e))?;
    }
    check_queue(&s.bulkhead, bulkhead)
}

/// A bulkhead section's queue (applied at the next build), checked by the
/// bulkhead's builder.
fn check_queue(s: &crate::config::BulkheadSettings, bulkhead: &str) -> Result<(), ConfigError> {
    if s.max_queue.is_some() || s.max_wait.is_some() {
        let mut b = crate::bulkhead::BulkheadLayer::builder();
        if let Some(n) = s.max_queue {
            b = b.max_queue(n);
        }
        if let Some(d) = s.max_wait {
            b = b.max_wait(d);
        }
        b.build().map_err(|e| named(bulkhead, e))?;
    }
    Ok(())
}

/// The bulkhead's rule, with the instance's name as the path.
fn check_limit(path: &str, n: Option<usize>) -> Result<(), ConfigError> {
    match n {
        Some(n) => crate::bulkhead::check_max_concurrent(n).map_err(|e| named(path, e)),
        None => Ok(()),
    }
}

impl<P, C: Send + Sync + 'static, L, O, H> ClientStackLayer<P, C, L, O, H> {
    /// Reloads what can change in a running stack from a section (feature
    /// `serde`): the breaker's thresholds, failures in a row and open time
    /// (its state and window kept), the bulkhead's limit (calls in flight
    /// keep their permits), the adaptive limit's bounds (what it learned is
    /// kept, the limit clamped into them) and its wait at the limit
    /// (requests that wait already wait on), and the retry budget's shares
    /// and floor (its window and counts kept). Other settings of the section (time
    /// budgets, attempts, backoff, the slow-call time, the breaker's
    /// half-open calls and `count_overload`, the bulkhead's queue) take
    /// effect when the stack is built again, and are checked now as that
    /// build will check them (attempts in `1..=100`, the attempt timeout
    /// above zero and within the total budget, room for a retry, the
    /// layers' own rules): a section that reloads is a section that builds. A value
    /// equal to the one in place is no change, and reports none; each
    /// change is reported (`Reconfigured`, `LimitChanged` for the
    /// bulkhead). A setting absent from
    /// the section keeps its current value (not the default: reloading a
    /// file from which a line was removed leaves that setting as it is).
    /// All or nothing: a refused value changes nothing, and the error
    /// names the layer instance and the setting (`payments.breaker:
    /// failure_rate_threshold …`).
    ///
    /// A file watcher is yours; on SIGHUP, for instance:
    ///
    /// ```ignore
    /// let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    /// tokio::spawn(async move {
    ///     while hup.recv().await.is_some() {
    ///         let text = std::fs::read_to_string("seawall.toml");
    ///         let config = text.map_err(BoxError::from).and_then(|t| Ok(toml::from_str::<ServiceConfig>(&t)?));
    ///         match config.and_then(|c| Ok(payments.reload(c.client_settings("payments")?)?)) {
    ///             Ok(()) => tracing::info!("seawall settings reloaded"),
    ///             Err(e) => tracing::warn!("reload refused, nothing changed: {e}"),
    ///         }
    ///     }
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the refused setting; nothing is changed.
    pub fn reload(&self, s: &ClientSettings) -> Result<(), ConfigError> {
        let _one_at_a_time = reloading();
        // The settings that take effect at the next build are checked now, as
        // that build will check them: a file that reloads is a file that builds.
        let stack = stack_name(self.deadline().name());
        let retry = self.retry();
        if let Some(n) = s.retry.max_attempts {
            crate::retry::check_max_attempts(n).map_err(|e| named(retry.name(), e))?;
        }
        let running = retry.backoff();
        let backoff = match (s.retry.backoff_base, s.retry.backoff_cap) {
            (None, None) => running,
            (base, cap) => crate::retry::Backoff::new(
                base.unwrap_or(running.base()),
                cap.unwrap_or(running.cap()),
            )
            .map_err(|e| named(retry.name(), e))?
            .with_jitter(running.jitter()),
        };
        super::client::check_schedule(
            super::client::Schedule {
                total: s.total_budget.unwrap_or(self.deadline().budget()),
                // What the next build takes: the file's, or the one set on
                // the builder, or the default from the budget it will have.
                per_try: s.attempt_timeout.unwrap_or_else(|| {
                    if self.attempt_set() {
                        self.attempt_timeout().per_try()
                    } else {
                        super::client::default_attempt_timeout(
                            s.total_budget.unwrap_or(self.deadline().budget()),
                            s.retry.max_attempts.unwrap_or(retry.max_attempts()),
                        )
                    }
                }),
                max_attempts: s.retry.max_attempts.unwrap_or(retry.max_attempts()),
                backoff,
                min_remaining: retry.min_remaining(),
            },
            // The slow-call time in place when the file has none (set in
            // code): the next build keeps it, and checks it.
            s.slow_call_duration
                .or_else(|| self.breaker_handle().slow_call_duration()),
        )
        .map_err(|e| named(stack, e))?;
        if let Some(per_try) = s.attempt_timeout {
            crate::deadline::AttemptTimeoutLayer::new(per_try).map_err(|e| named(stack, e))?;
        }
        let breaker = self.breaker_handle();
        check_next_build(s, breaker.name(), self.bulkhead_handle().name())?;
        let t = s.breaker.tune(breaker.tuning());
        check_limit(self.bulkhead_handle().name(), s.bulkhead.max_concurrent)?;
        let budget = self.retry_budget();
        let ppm = |p: u64| p as f64 / 1e6;
        let window = budget.window().as_secs_f64();
        let ratios = (
            s.retry.budget_ratio.unwrap_or(ppm(budget.ratio_ppm())),
            s.retry
                .budget_success_ratio
                .unwrap_or(ppm(budget.success_ratio_ppm())),
            s.retry
                .min_retries_per_sec
                .unwrap_or((budget.floor() as f64 / window).round() as u32),
        );
        budget
            .check_settings(ratios.0, ratios.1, ratios.2)
            .map_err(|e| named(self.retry().name(), e))?;
        let limit = self.adaptive_limit();
        let bounds = (s.limit.min_limit, s.limit.max_limit);
        if bounds.0.is_some() || bounds.1.is_some() {
            limit
                .check_limits(bounds.0, bounds.1)
                .map_err(|e| named(limit.name(), e))?;
        }
        // Every value was checked above or is checked by retune before it
        // changes anything: nothing below can fail half way.
        breaker.retune(t).map_err(|e| named(breaker.name(), e))?;
        if let Some(n) = s.bulkhead.max_concurrent {
            self.bulkhead_handle().set_max_concurrent(n)?;
        }
        let before = (
            budget.ratio_ppm(),
            budget.success_ratio_ppm(),
            budget.floor(),
        );
        budget.set_ratios(ratios.0, ratios.1, ratios.2)?;
        if (
            budget.ratio_ppm(),
            budget.success_ratio_ppm(),
            budget.floor(),
        ) != before
        {
            self.retry().reconfigured();
        }
        if bounds.0.is_some() || bounds.1.is_some() {
            limit
                .set_limits(bounds.0, bounds.1)
                .map_err(|e| named(limit.name(), e))?;
        }
        if let Some(wait) = s.limit.wait_at_limit {
            limit.set_wait_at_limit(wait);
        }
        Ok(())
    }
}

/// Held through a stack's reload: reloads run one at a time (two files
/// reloaded at once from two threads left parts of each, a layer set by one
/// and the next by the other). Rare, short, and never on a request's path.
fn reloading() -> std::sync::MutexGuard<'static, ()> {
    static RELOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RELOAD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<O, R: RateLimitReload, P, I, T> ServerStackLayer<O, R, P, I, T> {
    /// Reloads what can change in a running server stack from a section
    /// (feature `serde`): the adaptive limit's bounds (what it learned is
    /// kept, the limit clamped into them) and its wait at the limit, the
    /// bulkhead's limit (calls in
    /// flight keep their permits) and the rate limit's quota (every bucket keeps what it
    /// owes, within the new burst: see
    /// [`RateLimitLayer::set_quota`](crate::rate_limit::RateLimitLayer::set_quota)).
    /// The time budgets (`total_budget`, `handler_timeout`) and the
    /// bulkhead's queue take effect when the stack is built again, and are
    /// checked now as that build will check them (the handler timeout
    /// within the total budget, the bulkhead's own rules). A
    /// value equal to the one in place is no change, and reports none. A
    /// setting absent from the section keeps its current value (not the
    /// default). All or nothing: a refused value changes nothing, and the
    /// error names the instance and the setting. Reloads run one at a time
    /// (in the whole process): two at once from two threads end as one
    /// after the other, not as a mix of both; so an observer's hook, which
    /// runs inside a reload when it reports a change, must not reload a
    /// stack itself (it would wait for its own reload: hand it to another
    /// task).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the refused setting; nothing is changed.
    pub fn reload(&self, s: &ServerSettings) -> Result<(), ConfigError> {
        let _one_at_a_time = reloading();
        // The time budgets take effect at the next build: checked now, as
        // that build will check them (a handler timeout the file does not
        // set is the builder's, if it set one, or follows the budget).
        if s.total_budget.is_some() || s.handler_timeout.is_some() {
            let stack = stack_name(self.deadline().name());
            let total = s.total_budget.unwrap_or(self.deadline().budget());
            let handler = s.handler_timeout.unwrap_or_else(|| {
                if self.handler_set() {
                    self.handler_timeout().per_try()
                } else {
                    total
                }
            });
            super::part::stack_timers(
                &crate::error::Name::from(stack.to_owned()),
                "server_stack",
                total,
                super::part::InnerTimeout {
                    part: "handler",
                    setting: "handler_timeout",
                    timeout: handler,
                    own_end: std::time::Duration::ZERO,
                },
                true,
                std::time::Duration::ZERO,
                None,
            )
            .map_err(|e| named(stack, e))?;
            super::server::check_margin(total, self.ingress_margin())
                .map_err(|e| named(stack, e))?;
        }
        check_limit(self.bulkhead_handle().name(), s.bulkhead.max_concurrent)?;
        check_queue(&s.bulkhead, self.bulkhead_handle().name())?;
        if let Some(rate) = &s.rate_limit {
            self.rate_limit().check_rate(rate)?;
        }
        // The limit's bounds are checked by the algorithm as it takes them:
        // first, so that a refusal leaves everything as it was.
        let limit = self.adaptive_limit();
        if s.limit.min_limit.is_some() || s.limit.max_limit.is_some() {
            limit
                .set_limits(s.limit.min_limit, s.limit.max_limit)
                .map_err(|e| named(limit.name(), e))?;
        }
        // A bulkhead neither the builder nor a reload set follows the
        // limit's maximum (see `ServerStackBuilder::bulkhead`).
        use std::sync::atomic::Ordering::Relaxed;
        let bulkhead = match s.bulkhead.max_concurrent {
            Some(n) => {
                self.bulkhead_derived().store(false, Relaxed);
                Some(n)
            }
            None if self.bulkhead_derived().load(Relaxed) && s.limit.max_limit.is_some() => {
                Some(super::server::derived_bulkhead(limit.max_limit()))
            }
            None => None,
        };
        if let Some(n) = bulkhead {
            self.bulkhead_handle().set_max_concurrent(n)?;
        }
        if let Some(rate) = &s.rate_limit {
            self.rate_limit().reload_rate(rate)?;
        }
        if let Some(wait) = s.limit.wait_at_limit {
            limit.set_wait_at_limit(wait);
        }
        Ok(())
    }
}
