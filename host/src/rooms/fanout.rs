//! Fan-out workers (go-push's buckets and job queues).
//!
//! Sessions are spread over `B` buckets by session id (`id % B`); each bucket holds the room
//! members of its sessions and has one worker task draining a bounded job queue. A broadcast
//! posts one job to each bucket that has members of the room, so the work of one huge room is
//! split over `B` tasks (and every core), and a bucket busy with a big room delays only the
//! jobs queued behind it in that bucket. Jobs carry a [`SharedPacket`], encoded once for all
//! members. A member whose outbound queue is full is closed as a slow consumer
//! ([`SessionHandle::send_shared`]); the worker never waits for a client.
//!
//! Order: jobs of one bucket run in queue order, and a publisher posts its jobs in order, so
//! every member receives one publisher's broadcasts in the order they were published.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::client::SharedPacket;
use crate::session::{Registry, SessionHandle};

/// Most jobs a worker takes from its queue at once.
const JOB_BATCH: usize = 32;

/// Members of one bucket, by room.
pub(super) type BucketMembers = RwLock<HashMap<Arc<str>, HashMap<u64, SessionHandle>>>;

/// A fan-out job for one bucket.
pub(super) enum Job {
    /// Every member of `room` in the bucket, except `exclude`.
    Room { room: Arc<str>, packet: Arc<SharedPacket>, exclude: Option<u64> },
    /// Every admitted session of the bucket.
    All { packet: Arc<SharedPacket> },
}

/// One bucket: its members and the sending end of its job queue.
pub(super) struct Bucket {
    pub members: Arc<BucketMembers>,
    pub jobs: mpsc::Sender<Job>,
}

/// What the workers count.
#[derive(Clone)]
pub(super) struct FanoutCounters {
    /// Packets queued to sessions.
    pub delivered: Counter,
    /// Packets not queued because the member's queue was full (it is closed as a slow
    /// consumer) or it was closing.
    pub undelivered: Counter,
}

/// Creates `count` buckets and spawns their workers on `tasks`; they stop at `shutdown`.
pub(super) fn start(
    count: usize,
    queue_len: usize,
    registry: Arc<Registry>,
    counters: FanoutCounters,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Box<[Bucket]> {
    (0..count)
        .map(|index| {
            let (jobs, rx) = mpsc::channel(queue_len);
            let members = Arc::new(BucketMembers::default());
            let worker = Worker {
                index,
                count,
                members: members.clone(),
                registry: registry.clone(),
                counters: counters.clone(),
            };
            tasks.spawn(worker.run(rx, shutdown.clone()));
            Bucket { members, jobs }
        })
        .collect()
}

struct Worker {
    index: usize,
    count: usize,
    members: Arc<BucketMembers>,
    registry: Arc<Registry>,
    counters: FanoutCounters,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        let mut jobs = Vec::with_capacity(JOB_BATCH);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                n = rx.recv_many(&mut jobs, JOB_BATCH) => if n == 0 { return },
            };
            let (mut delivered, mut undelivered) = (0u64, 0u64);
            let mut deliver = |session: &SessionHandle, packet: &Arc<SharedPacket>| {
                if session.send_shared(packet.clone()) {
                    delivered += 1;
                } else {
                    undelivered += 1;
                }
            };
            // Several jobs before yielding: a member's writer then finds several packets
            // queued and writes them with one syscall.
            for job in jobs.drain(..) {
                match job {
                    Job::Room { room, packet, exclude } => {
                        let members = self.members.read();
                        if let Some(room) = members.get(&room) {
                            for (id, session) in room {
                                if Some(*id) != exclude {
                                    deliver(session, &packet);
                                }
                            }
                        }
                    }
                    Job::All { packet } => {
                        self.registry.for_each_in_bucket(self.index, self.count, |session| {
                            if session.is_admitted() {
                                deliver(session, &packet);
                            }
                        });
                    }
                }
            }
            self.counters.delivered.inc_by(delivered);
            self.counters.undelivered.inc_by(undelivered);
            // A long run of jobs must not starve the other tasks of this worker thread.
            tokio::task::consume_budget().await;
        }
    }
}
