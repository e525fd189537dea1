use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Event, EventKind, Hook, LayerKind};

/// An event kept by a [`Recorder`]: an owned copy of an [`Event`] and the
/// (tokio) time it was recorded.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RecordedEvent {
    /// The kind of layer that reported it.
    pub layer: LayerKind,
    /// The layer instance's name.
    pub name: String,
    /// What happened.
    pub kind: EventKind,
    /// When it was recorded (`tokio::time::Instant`, so paused-time tests see
    /// exact times).
    pub at: tokio::time::Instant,
}

/// A [`Hook`] that keeps events in memory, for tests and for users who want a
/// snapshot. Clones share one buffer.
///
/// The buffer is bounded (by default 100 000 events); when full, the oldest
/// event is dropped and [`Recorder::dropped`] counts it.
///
/// ```
/// use seawall::observe::{EventKind, LayerKind, Observer, Recorder};
///
/// let recorder = Recorder::with_capacity(2);
/// let observer = Observer::new(recorder.clone());
/// for _ in 0..3 {
///     observer.emit(LayerKind::Bulkhead, "db", EventKind::CallStarted);
/// }
/// assert_eq!(recorder.len(), 2);
/// assert_eq!(recorder.dropped(), 1);
/// ```
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    events: VecDeque<RecordedEvent>,
    capacity: usize,
    dropped: u64,
}

impl Recorder {
    /// The default capacity.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A recorder keeping up to [`Recorder::DEFAULT_CAPACITY`] events.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A recorder keeping up to `capacity` events (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Inner {
                events: VecDeque::new(),
                capacity: capacity.max(1),
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the events kept, oldest first.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.lock().events.iter().cloned().collect()
    }

    /// Takes every event kept, leaving the recorder empty.
    pub fn take(&self) -> Vec<RecordedEvent> {
        self.lock().events.drain(..).collect()
    }

    /// Number of events kept.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of events dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Forgets every event kept.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.events.clear();
        inner.dropped = 0;
    }

    /// Number of kept events for which `pred` is true.
    pub fn count(&self, mut pred: impl FnMut(&RecordedEvent) -> bool) -> usize {
        self.lock().events.iter().filter(|e| pred(e)).count()
    }

    /// The kept events for which `pred` is true.
    pub fn filter(&self, mut pred: impl FnMut(&RecordedEvent) -> bool) -> Vec<RecordedEvent> {
        self.lock()
            .events
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Recorder")
            .field("len", &inner.events.len())
            .field("capacity", &inner.capacity)
            .field("dropped", &inner.dropped)
            .finish()
    }
}

impl Hook for Recorder {
    fn on_event(&self, event: &Event<'_>) {
        let rec = RecordedEvent {
            layer: event.layer,
            name: event.name.to_owned(),
            kind: event.kind,
            at: tokio::time::Instant::now(),
        };
        let mut inner = self.lock();
        if inner.events.len() >= inner.capacity {
            inner.events.pop_front();
            inner.dropped += 1;
        }
        inner.events.push_back(rec);
    }
}
