//! One path's keep-alive stream, pipelined: renewals go out at the keeper's pace whether
//! or not the earlier ones were answered, and each answer is paired with the send time of
//! its own request. etcd answers a stream's requests one at a time, in order, so the pairing
//! is first in, first out.
//!
//! Why not one renewal at a time: a renewal that reaches a follower while the leader is
//! gone waits there for the election and is then answered with the term it *arrived* in
//! (etcd fills the answer's header before renewing), which no quorum read in the new term
//! can confirm. One at a time, the path sent nothing new until that answer came, and the
//! first confirmable renewal left after the election — in the `witness-lost` drill, 13 ms
//! after the deadline. Pipelined, the requests queued behind it are taken up as soon as the
//! new leader is known, and answered in its term.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::lease::Unconfirmed;
use super::store::{RenewAnswers, RenewSender};

/// How often the reader looks whether the oldest unanswered renewal is overdue.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// What became of one renewal on the stream.
#[derive(Debug)]
pub enum Answer {
    /// Renewed; counts once a quorum read confirms its term.
    Renewed(Unconfirmed),
    /// etcd no longer has the lease.
    Gone { lease: i64 },
    /// The stream broke or an answer is overdue: the stream is finished.
    Failed(String),
}

/// Send times of the renewals not answered yet, oldest first.
type Unanswered = Arc<Mutex<VecDeque<Instant>>>;

/// A keep-alive stream for one lease through one member.
pub struct KeepAliveStream {
    lease: i64,
    sender: RenewSender,
    unanswered: Unanswered,
    reader: tokio::task::JoinHandle<()>,
}

impl KeepAliveStream {
    /// Starts reading `answers`; each is handed to `report` (after a `Failed` or `Gone`,
    /// nothing more comes). A renewal unanswered for `timeout` fails the stream.
    pub fn start(
        lease: i64,
        margin: Duration,
        timeout: Duration,
        (sender, answers): (RenewSender, RenewAnswers),
        report: impl Fn(Answer) + Send + 'static,
    ) -> KeepAliveStream {
        let unanswered = Unanswered::default();
        let reader = tokio::spawn(read_answers(
            answers,
            unanswered.clone(),
            Pairing {
                lease,
                margin,
                timeout,
            },
            report,
        ));
        KeepAliveStream {
            lease,
            sender,
            unanswered,
            reader,
        }
    }

    #[must_use]
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Renewals sent and not answered yet.
    #[must_use]
    pub fn unanswered(&self) -> usize {
        lock(&self.unanswered).len()
    }

    /// Sends one renewal (its answer comes through `report`).
    pub async fn renew(&mut self) -> Result<(), String> {
        // Recorded before sending: the answer cannot come before the request leaves.
        lock(&self.unanswered).push_back(Instant::now());
        self.sender.send().await.map_err(|e| e.to_string())
    }
}

impl Drop for KeepAliveStream {
    fn drop(&mut self) {
        // The reader's end of the stream goes with it; the sender's when `self` goes.
        self.reader.abort();
    }
}

fn lock(u: &Unanswered) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
    u.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What turns an answer into an [`Unconfirmed`] renewal.
struct Pairing {
    lease: i64,
    margin: Duration,
    timeout: Duration,
}

async fn read_answers(
    mut answers: RenewAnswers,
    unanswered: Unanswered,
    p: Pairing,
    report: impl Fn(Answer),
) {
    loop {
        let answer = next_answer(&mut answers, &unanswered, &p).await;
        let last = !matches!(answer, Answer::Renewed(_));
        report(answer);
        if last {
            return;
        }
    }
}

async fn next_answer(answers: &mut RenewAnswers, unanswered: &Unanswered, p: &Pairing) -> Answer {
    let next = answers.next();
    tokio::pin!(next);
    let got = loop {
        tokio::select! {
            got = &mut next => break got,
            () = tokio::time::sleep(CHECK_EVERY) => {
                let oldest = lock(unanswered).front().copied();
                if oldest.is_some_and(|sent| sent.elapsed() >= p.timeout) {
                    return Answer::Failed(format!("lease keep-alive: no answer within {:?}", p.timeout));
                }
            }
        }
    };
    let renewed = match got {
        Ok(renewed) => renewed,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let Some(sent) = lock(unanswered).pop_front() else {
        return Answer::Failed("lease keep-alive: an answer to a renewal never sent".into());
    };
    match renewed {
        None => Answer::Gone { lease: p.lease },
        Some((ttl, term)) => Answer::Renewed(Unconfirmed {
            lease: p.lease,
            sent,
            ttl,
            term,
            margin: p.margin,
        }),
    }
}
