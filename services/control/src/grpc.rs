//! Control's gRPC service: each call authenticated, then answered by [`Control`]'s methods.

use std::pin::Pin;

use sipmba_auth::Principal;
use sipmba_proto::v1::{self as pb, control_service_server::ControlService};
use sipmba_runtime::ids::{now_ms, required_id};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{Control, to_pb};

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Command, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for Control {
    type WatchCommandStream = WatchStream;

    async fn send_command(
        &self,
        req: Request<pb::SendCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        Ok(Response::new(self.send(&principal, req.get_ref()).await?))
    }

    async fn get_command(
        &self,
        req: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        let id = required_id("id", req.get_ref().id.as_ref())?;
        let row = self.get(&principal, id).await?;
        Ok(Response::new(to_pb(&row, now_ms())))
    }

    async fn list_commands(
        &self,
        req: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        Ok(Response::new(self.list(&principal, req.get_ref()).await?))
    }

    async fn watch_command(
        &self,
        req: Request<pb::WatchCommandRequest>,
    ) -> Result<Response<Self::WatchCommandStream>, Status> {
        let principal = Principal::from_request(&req)?.clone();
        let id = required_id("id", req.get_ref().id.as_ref())?;
        // Errors before the first state end the call itself.
        self.get(&principal, id).await?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(self.clone().watch(principal, id, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
