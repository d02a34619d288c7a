//! Single flight: concurrent misses on one chunk share one fetch.
//!
//! Without it, a cold start where many threads read the same file (or the prefetcher and an
//! on-demand read race) would fetch the same range from the registry once per reader.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use lazypull_converter::{Digest, Error, Result};

/// The outcome of one fetch, shared by the fetching thread and its waiters.
#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Result<Arc<[u8]>>>>,
    done: Condvar,
}

/// The fetches under way, by chunk digest.
#[derive(Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<Digest, Arc<Flight>>>,
}

/// What a caller of [`Flights::join`] does next.
pub(crate) enum Role<'a> {
    /// Fetch, then [`Leader::finish`].
    Leader(Leader<'a>),
    /// Another caller fetched; this is its outcome.
    Waited(Result<Arc<[u8]>>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guarded state is replaced whole, never left half-updated, so poisoning carries no meaning.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Flights {
    /// Become the fetcher of `digest`, or wait for the one already fetching it.
    pub(crate) fn join(&self, digest: &Digest) -> Role<'_> {
        let flight = {
            let mut map = lock(&self.in_flight);
            match map.get(digest) {
                Some(f) => Arc::clone(f),
                None => {
                    let flight = Arc::new(Flight::default());
                    map.insert(*digest, Arc::clone(&flight));
                    return Role::Leader(Leader {
                        flights: self,
                        digest: *digest,
                        flight,
                        finished: false,
                    });
                }
            }
        };
        let mut outcome = lock(&flight.outcome);
        while outcome.is_none() {
            outcome = flight
                .done
                .wait(outcome)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let shared = match outcome.as_ref() {
            Some(Ok(data)) => Ok(Arc::clone(data)),
            Some(Err(e)) => Err(duplicate(e).context(format!(
                "chunk {digest}: fetched by another reader of the same chunk"
            ))),
            None => unreachable!("waited until the outcome was set"),
        };
        Role::Waited(shared)
    }
}

/// The one caller fetching a digest. Dropping it without [`Leader::finish`] (the fetch panicked)
/// releases the waiters with an error instead of leaving them blocked forever.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    digest: Digest,
    flight: Arc<Flight>,
    finished: bool,
}

impl Leader<'_> {
    /// Hand the outcome to every waiter and return it to the leader.
    pub(crate) fn finish(mut self, outcome: Result<Arc<[u8]>>) -> Result<Arc<[u8]>> {
        let shared = match &outcome {
            Ok(data) => Ok(Arc::clone(data)),
            Err(e) => Err(duplicate(e)),
        };
        self.publish(shared);
        self.finished = true;
        outcome
    }

    fn publish(&self, outcome: Result<Arc<[u8]>>) {
        // Leave the map first: a caller arriving from now on finds the chunk cached (or, after an
        // error, starts a fresh fetch) instead of joining a flight that has landed.
        lock(&self.flights.in_flight).remove(&self.digest);
        *lock(&self.flight.outcome) = Some(outcome);
        self.flight.done.notify_all();
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.publish(Err(Error::format(format!(
                "chunk {}: the fetch panicked",
                self.digest
            ))));
        }
    }
}

/// A copy of `e` for another waiter: the crate's `Error` is not `Clone` because `io::Error` is
/// not, so an I/O error is rebuilt from its kind and message.
pub(crate) fn duplicate(e: &Error) -> Error {
    match e {
        Error::Io { what, source } => Error::Io {
            what: what.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Format(m) => Error::Format(m.clone()),
        Error::DigestMismatch {
            what,
            expected,
            actual,
        } => Error::DigestMismatch {
            what: what.clone(),
            expected: expected.clone(),
            actual: actual.clone(),
        },
        Error::Unsupported(m) => Error::Unsupported(m.clone()),
        Error::Invalid(m) => Error::Invalid(m.clone()),
        Error::Context { context, source } => Error::Context {
            context: context.clone(),
            source: Box::new(duplicate(source)),
        },
    }
}
