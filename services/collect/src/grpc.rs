//! Collect's gRPC service: one bidirectional session per connected thing.

use sipmba_auth::Principal;
use sipmba_proto::v1::{self as pb, collect_service_server::CollectService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{Collect, thing_of, validate};

#[tonic::async_trait]
impl CollectService for Collect {
    type SessionStream = ReceiverStream<Result<pb::SessionResponse, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        let thing = thing_of(&principal).map_err(Status::from)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(
            self.clone()
                .run_session(principal, thing, req.into_inner(), tx),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish(
        &self,
        req: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        let thing = thing_of(&principal).map_err(Status::from)?;
        let mut inbound = req.into_inner();
        let mut acked = self.inner.acks.acked(thing).await.map_err(Status::from)?;
        let mut previous = 0;
        let mut accepted = 0;
        while let Some(message) = inbound.message().await? {
            self.check_token(&principal)?;
            previous = validate::batch(&message.readings, previous, &self.inner.limits)
                .map_err(Status::from)?;
            if let Err(wait) = self.take_budget(thing, message.readings.len()) {
                return Err(sipmba_runtime::exhausted(
                    &format!(
                        "over the rate of {} readings per second for one thing; {accepted} readings up to seq {acked} are committed; retry the rest in {} ms",
                        self.inner.limits.readings_per_second,
                        wait.as_millis()
                    ),
                    wait,
                ));
            }
            let (highest, new) = self
                .commit(thing, message.readings, acked)
                .await
                .map_err(Status::from)?;
            if highest > acked {
                self.inner
                    .acks
                    .advance(thing, highest)
                    .await
                    .map_err(Status::from)?;
            }
            acked = highest;
            accepted += new;
        }
        Ok(Response::new(pb::PublishResponse {
            acked_seq: acked,
            accepted,
        }))
    }
}
