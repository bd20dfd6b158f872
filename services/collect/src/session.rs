//! The commands of one session, and the waits a session's loop selects over.

use std::{collections::HashSet, sync::Arc};

use sipmba_runtime::ServiceResult;
use tonic::Status;
use uuid::Uuid;

use sipmba_proto::v1::{self as pb, session_request, session_response};
use tokio::sync::mpsc;

use crate::{inbox, store::Recorded};

/// A committed group's position being recorded: the seq to acknowledge once it is.
pub(crate) type Recording = tokio::task::JoinHandle<ServiceResult<(u64, Recorded)>>;

/// What a recorded position lets the session do.
pub(crate) enum Settled {
    /// Acknowledge up to this seq.
    Ack(u64),
    /// Close: a newer session of the thing took over before the position was stored.
    Superseded,
}

/// Waits for `recording` (forever when there is none) and says what to do.
pub(crate) async fn recorded(recording: Option<&mut Recording>) -> Result<Settled, Status> {
    let Some(recording) = recording else {
        return std::future::pending().await;
    };
    match recording.await {
        Ok(Ok((seq, Recorded::Stored))) => Ok(Settled::Ack(seq)),
        Ok(Ok((_, Recorded::Superseded))) => Ok(Settled::Superseded),
        Ok(Err(e)) => Err(Status::from(e)),
        Err(e) => Err(Status::internal(format!(
            "recording the acknowledged position failed: {e}"
        ))),
    }
}

/// Sends what a recorded position allows: its Ack, or Closing when a newer session replaced this
/// one. False when the session is over (replaced, or the thing stopped listening).
pub(crate) async fn answer(
    settled: Settled,
    tx: &mpsc::Sender<Result<pb::SessionResponse, Status>>,
) -> bool {
    match settled {
        Settled::Ack(seq) => {
            let ack = session_response::Frame::Ack(session_response::Ack { acked_seq: seq });
            tx.send(Ok(pb::SessionResponse { frame: Some(ack) }))
                .await
                .is_ok()
        }
        Settled::Superseded => {
            let _ = tx.send(Ok(replaced())).await;
            false
        }
    }
}

/// The frame that closes a session another one replaced.
pub(crate) fn replaced() -> pb::SessionResponse {
    pb::SessionResponse {
        frame: Some(session_response::Frame::Closing(
            session_response::Closing {
                reason: "a newer session of this thing replaced this one".into(),
            },
        )),
    }
}

/// Waits for a command to arrive for the session; never, for a session without commands.
pub(crate) async fn wake(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// The commands of one session: delivered at most `window` unacknowledged at a time, each at most
/// once per session.
pub(crate) struct CommandSession {
    pub(crate) inbox: inbox::Inbox,
    pub(crate) thing: Uuid,
    pub(crate) wake: Arc<tokio::sync::Notify>,
    pub(crate) window: usize,
    /// Delivered in this session.
    pub(crate) sent: HashSet<Uuid>,
    /// Delivered in this session and not acknowledged.
    pub(crate) outstanding: HashSet<Uuid>,
}

/// Most batches (of the largest size) one group commit gathers.
pub(crate) const GROUP_BATCHES: usize = 8;

/// Longest detail a thing may attach to an acknowledgement.
const MAX_ACK_DETAIL: usize = 1024;

impl CommandSession {
    /// Sends pending commands up to the window; false when the stream is gone.
    pub(crate) async fn deliver(
        &mut self,
        tx: &mpsc::Sender<Result<pb::SessionResponse, Status>>,
    ) -> bool {
        let room = self.window.saturating_sub(self.outstanding.len());
        if room == 0 {
            return true;
        }
        for command in self.inbox.next_for(self.thing, &self.sent, room) {
            let delivery = session_response::Frame::Command(command.delivery());
            if tx
                .send(Ok(pb::SessionResponse {
                    frame: Some(delivery),
                }))
                .await
                .is_err()
            {
                return false;
            }
            self.sent.insert(command.id);
            self.outstanding.insert(command.id);
            self.inbox.delivered(self.thing, command.id).await;
        }
        true
    }

    /// Records the thing's outcome of a command.
    pub(crate) async fn acknowledge(
        &mut self,
        ack: &session_request::CommandAck,
    ) -> Result<(), Status> {
        let command = sipmba_runtime::ids::required_id("command_ack.command", ack.command.as_ref())
            .map_err(Status::from)?;
        let state = match pb::CommandOutcome::try_from(ack.outcome) {
            Ok(pb::CommandOutcome::Acked) => pb::CommandState::Acked,
            Ok(pb::CommandOutcome::Failed) => pb::CommandState::Failed,
            _ => {
                return Err(Status::invalid_argument(
                    "command_ack.outcome must be COMMAND_OUTCOME_ACKED or COMMAND_OUTCOME_FAILED",
                ));
            }
        };
        if ack.detail.len() > MAX_ACK_DETAIL {
            return Err(Status::invalid_argument(format!(
                "command_ack.detail is {} bytes; at most {MAX_ACK_DETAIL}",
                ack.detail.len()
            )));
        }
        self.outstanding.remove(&command);
        match self.inbox.lookup(self.thing, command) {
            inbox::Lookup::Pending => self
                .inbox
                .finish(self.thing, command, state, &ack.detail)
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "the acknowledgement of command {command} was not recorded ({e}); send it again"
                    ))
                }),
            // Too late, finished already, or not this thing's: nothing to record.
            inbox::Lookup::Expired | inbox::Lookup::Unknown => {
                tracing::debug!(thing = %self.thing, %command, "acknowledgement of a command that is not pending; ignored");
                Ok(())
            }
        }
    }
}
