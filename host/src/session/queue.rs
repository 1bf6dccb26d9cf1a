//! A session's outbound queue: any number of senders (backend replies, room fan-out, pushes,
//! the session itself), one receiver (the session's task), bounded in packets and in bytes.
//! The byte count is kept under the queue's lock, which both sides take anyway: a separate
//! atomic counter was a second cache line passed between a fan-out worker's thread and the
//! session's at every packet (docs/benchmarks.md, "Fan-out without allocations").
//!
//! It lives inside the session handle's allocation: an idle session pays for a lock, an
//! empty `VecDeque`, a waker slot, the byte count and both bounds (88 bytes) and nothing on
//! the heap. The deque's buffer exists only while packets wait: the receiver lets go of it
//! when it finds the queue empty.
//! (`flume`'s channel, which this replaced, cost an idle session ~350 bytes: its shared
//! state, the receiving stream's waker hook and the deque a first packet grew;
//! docs/benchmarks.md, "A queue inside the handle".)

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::Outbound;

/// Why [`Queue::push`] refused an item (the item is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds its capacity already.
    Full,
    /// The packet's bytes would take the queue over its byte bound.
    OverBytes,
    /// The receiver is gone: the session's task ended.
    Closed,
}

/// Items an empty queue makes room for at its first push (40 bytes each): a fan-out worker's
/// batch of 32 jobs then grows it once, not four times (4, 8, 16, 32), and glibc's arena
/// lock, taken again for each growth, is contended less.
const FIRST_CAPACITY: usize = 16;

pub(crate) struct Queue {
    state: Mutex<State>,
    /// The most items it holds.
    capacity: usize,
    /// The most bytes ([`Outbound::size`]) bounded pushes may fill it with.
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    /// The bytes of `items` ([`Outbound::size`]).
    bytes: usize,
    /// The receiver's task, parked on an empty queue.
    waker: Option<Waker>,
    closed: bool,
}

impl State {
    fn pop(&mut self) -> Option<Outbound> {
        let item = self.items.pop_front()?;
        self.bytes -= item.size();
        Some(item)
    }

    /// Keeps the task's waker (not cloned again when it is the one already kept).
    fn park(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

impl Queue {
    /// An empty queue of at most `capacity` items and (bounded pushes) `max_bytes` bytes.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self { state: Mutex::default(), capacity, max_bytes }
    }

    /// Appends `item` unless the queue is closed, holds its capacity, or (`bounded`) would go
    /// over its byte bound (an empty queue takes any one item: a reply larger than the bound
    /// still goes out); wakes the receiver.
    pub(crate) fn push(&self, item: Outbound, bounded: bool) -> Result<(), PushError> {
        let size = item.size();
        let waker = {
            let mut state = self.state.lock();
            if state.closed {
                return Err(PushError::Closed);
            }
            if bounded && state.bytes > 0 && state.bytes + size > self.max_bytes {
                return Err(PushError::OverBytes);
            }
            if state.items.len() >= self.capacity {
                return Err(PushError::Full);
            }
            if state.items.capacity() == 0 {
                state.items.reserve_exact(FIRST_CAPACITY);
            }
            state.items.push_back(item);
            state.bytes += size;
            state.waker.take()
        };
        // Woken outside the lock: the receiver's first act is to take it.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The next item, or `Pending` with the task registered for the next push. An empty queue
    /// frees its buffer here, so an idle session holds none.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        let mut state = self.state.lock();
        if let Some(item) = state.pop() {
            return Poll::Ready(item);
        }
        if state.items.capacity() > 0 {
            state.items = VecDeque::new();
        }
        state.park(cx);
        Poll::Pending
    }

    /// Registers the task to be woken by the next push or [`Self::wake`], whatever the queue
    /// holds.
    pub(crate) fn register(&self, cx: &mut Context<'_>) {
        self.state.lock().park(cx);
    }

    /// Wakes the registered task, if any (the session's close signal rose).
    pub(crate) fn wake(&self) {
        let waker = self.state.lock().waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next item, if one waits.
    pub(crate) fn try_pop(&self) -> Option<Outbound> {
        self.state.lock().pop()
    }

    /// Bytes of the items queued now.
    pub(crate) fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// The receiver is gone: what waits is dropped and every later push is refused.
    pub(crate) fn close(&self) {
        let items = {
            let mut state = self.state.lock();
            state.closed = true;
            state.waker = None;
            state.bytes = 0;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use bytes::Bytes;

    use super::*;

    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn packet(seq: u32) -> Outbound {
        Outbound::Packet { msg_id: 1, seq, body: Bytes::new() }
    }

    fn seq(item: &Outbound) -> u32 {
        match *item {
            Outbound::Packet { seq, .. } => seq,
            _ => u32::MAX,
        }
    }

    #[test]
    fn bounded_in_order_woken_and_empty_holds_no_buffer() {
        let queue = Queue::new(2, usize::MAX);
        let woken = Arc::new(Counting(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(queue.poll_pop(&mut cx).is_pending());
        assert_eq!(queue.push(packet(1), true), Ok(()));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the parked receiver is woken");
        assert_eq!(queue.push(packet(2), true), Ok(()));
        assert_eq!(queue.push(packet(3), true), Err(PushError::Full));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "woken once until it parks again");
        assert!(matches!(queue.poll_pop(&mut cx), Poll::Ready(ref item) if seq(item) == 1));
        assert_eq!(queue.try_pop().as_ref().map(seq), Some(2));
        assert!(queue.poll_pop(&mut cx).is_pending());
        assert_eq!(queue.state.lock().items.capacity(), 0, "an empty queue keeps no buffer");
        queue.close();
        assert_eq!(queue.push(packet(4), true), Err(PushError::Closed));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    /// Bytes are counted in and out; an empty queue takes one item over the byte bound; a
    /// closed queue counts nothing.
    #[test]
    fn bounded_in_bytes() {
        let big = |len: usize| Outbound::Packet { msg_id: 1, seq: 0, body: Bytes::from(vec![0; len]) };
        let header = crate::protocol::client::HEADER_LEN;
        let queue = Queue::new(8, 100);
        assert_eq!(queue.push(big(200), true), Ok(()), "an empty queue takes one oversized item");
        assert_eq!(queue.bytes(), 200 + header);
        assert_eq!(queue.push(big(0), true), Err(PushError::OverBytes));
        assert_eq!(queue.push(big(0), false), Ok(()), "an unbounded push ignores the byte bound");
        assert_eq!(queue.bytes(), 200 + 2 * header);
        assert!(queue.try_pop().is_some());
        assert_eq!(queue.bytes(), header);
        queue.close();
        assert_eq!(queue.bytes(), 0);
    }
}
