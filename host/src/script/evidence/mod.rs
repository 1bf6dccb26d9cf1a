//! Evidence for a deploy (docs/evidence.md): what a candidate version of a script would have
//! decided differently, before it is made live.
//!
//! - [`event`]: one event's inputs, answer and host calls, and how two answers differ.
//! - [`shadow`]: a candidate run beside the live version on a sample of live events, off the
//!   sessions' path; its decisions are compared, never applied.
//! - [`record`]: what the live version received and answered over a while, with the values its
//!   host calls returned, as a versioned file.
//! - [`replay`]: a recording run offline against a candidate; the same differences.
//!
//! Each script's hook has a [`Tap`]: empty (the common case, one atomic load per event), or
//! holding a shadow and/or a recording that every event of that script is shown to.

mod by_name;
pub mod event;
pub mod record;
pub mod replay;
pub mod shadow;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

pub use self::event::{Answer, Call, Difference, HostCall, HostFn, HostResult, Tape, TapeMode};
use self::record::Recording;
use self::shadow::Shadow;
use super::{Router, ScriptError};

/// A script that runs one [`Call`] with a [`Tape`] on its store (the hook types: the live
/// scripts, shadow candidates, replay candidates). The tape comes back unless the call failed.
pub trait Target: Send + Sync {
    fn run<'a>(&'a self, call: &'a Call, tape: Box<Tape>) -> TargetFuture<'a>;

    /// The router, when this is one (a shadow candidate follows `message_map` reloads).
    fn as_router(&self) -> Option<&Router> {
        None
    }
}

pub type TargetFuture<'a> = Pin<Box<dyn Future<Output = (Answer, Option<Box<Tape>>)> + Send + 'a>>;

/// The answer to a call of another world's function.
pub fn wrong_world(call: &Call) -> Answer {
    Answer::Failed {
        deadline: false,
        message: format!("`{}` is not a function of this world", call.function()),
    }
}

/// Splits a taped call's result into its value and its tape.
pub fn split<T>(
    result: Result<(T, Option<Box<Tape>>), ScriptError>,
) -> (Result<T, ScriptError>, Option<Box<Tape>>) {
    match result {
        Ok((value, tape)) => (Ok(value), tape),
        Err(e) => (Err(e), None),
    }
}

/// What a script's events are shown to.
#[derive(Default)]
pub struct Observers {
    shadow: Option<Arc<Shadow>>,
    recording: Option<Arc<Recording>>,
}

impl Observers {
    /// The tape for the next live call: one when it is recorded.
    pub fn tape(&self) -> Option<Box<Tape>> {
        self.recording.as_ref().filter(|r| r.open()).map(|_| Box::new(Tape::new(TapeMode::Record)))
    }

    /// Shows a live call (built by `call` only when someone looks) and its `result` to the
    /// observers; `tape` is what [`Self::tape`] gave the call, back from it.
    pub fn observe<T>(
        &self,
        call: impl FnOnce() -> Call,
        result: &Result<T, ScriptError>,
        answer: impl FnOnce(&T) -> Answer,
        tape: Option<Box<Tape>>,
    ) {
        let recording = self.recording.as_ref().filter(|r| r.open());
        let shadowed = self.shadow.as_ref().filter(|s| s.sample());
        if recording.is_none() && shadowed.is_none() {
            return;
        }
        let (call, answer) = (call(), Answer::of(result, answer));
        let at_ms = record::unix_ms();
        if let Some(recording) = recording {
            let host = tape.map(|t| t.calls).unwrap_or_default();
            recording.push(at_ms, &call, &answer, &host);
        }
        if let Some(shadow) = shadowed {
            shadow.offer(at_ms, call, answer);
        }
    }
}

/// The observers of one script's events. Cloning shares them.
#[derive(Clone, Default)]
pub struct Tap {
    observers: Arc<ArcSwapOption<Observers>>,
}

impl Tap {
    /// The observers of the next live call; `None` (the common case) when nothing observes.
    /// A hook calls the script with [`Observers::tape`], then [`Observers::observe`]s it.
    pub fn observers(&self) -> Option<Arc<Observers>> {
        self.observers.load_full()
    }

    /// The shadow, if one runs.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.observers.load().as_ref()?.shadow.clone()
    }

    /// The recording under way, if one is.
    pub fn recording(&self) -> Option<Arc<Recording>> {
        self.observers.load().as_ref()?.recording.clone()
    }

    /// Sets (or with `None` removes) the shadow; returns the one replaced.
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) -> Option<Arc<Shadow>> {
        let mut replaced = None;
        self.observers.rcu(|current| {
            let recording = current.as_ref().and_then(|o| o.recording.clone());
            replaced = current.as_ref().and_then(|o| o.shadow.clone());
            pack(shadow.clone(), recording)
        });
        replaced
    }

    /// Sets (or with `None` removes) the recording.
    pub fn set_recording(&self, recording: Option<Arc<Recording>>) {
        self.observers
            .rcu(|current| pack(current.as_ref().and_then(|o| o.shadow.clone()), recording.clone()));
    }
}

/// `None` when nothing observes, so the hot path stays one load and a branch.
fn pack(shadow: Option<Arc<Shadow>>, recording: Option<Arc<Recording>>) -> Option<Arc<Observers>> {
    (shadow.is_some() || recording.is_some()).then(|| Arc::new(Observers { shadow, recording }))
}
