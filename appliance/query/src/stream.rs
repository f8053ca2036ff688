use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::time::{Instant, Sleep};

use crate::QueryError;
use crate::json::{JsonResult, JsonWriter};

/// The answer to a query, batch by batch. It ends with [`QueryError::Timeout`] if the
/// engine's deadline passes while it is being read, and after any error it ends. Dropping
/// it cancels the query.
pub struct QueryStream {
    schema: SchemaRef,
    inner: Option<SendableRecordBatchStream>,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("schema", &self.schema)
            .field("finished", &self.inner.is_none())
            .finish_non_exhaustive()
    }
}

impl QueryStream {
    pub(crate) fn new(
        inner: SendableRecordBatchStream,
        deadline: Instant,
        timeout: Duration,
    ) -> Self {
        Self {
            schema: inner.schema(),
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
        }
    }

    /// The schema of every batch.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Reads every batch.
    pub async fn collect(self) -> Result<Vec<RecordBatch>, QueryError> {
        self.try_collect().await
    }

    /// Reads at most `max_rows` rows as JSON, then stops the query; `truncated` tells
    /// whether there were more.
    pub async fn into_json(mut self, max_rows: usize) -> Result<JsonResult, QueryError> {
        let mut writer = JsonWriter::new(&self.schema, max_rows);
        while let Some(batch) = self.next().await {
            if !writer.push(&batch?)? {
                break;
            }
        }
        Ok(writer.finish())
    }

    /// The answer as an Arrow IPC stream: the schema message, one chunk per batch, then
    /// the end-of-stream marker. An error ends the byte stream early (without the marker),
    /// so a reader sees a truncated stream rather than a short answer.
    pub fn into_ipc(self) -> impl Stream<Item = Result<Bytes, QueryError>> + Send + 'static {
        enum State {
            Start(QueryStream),
            Batches(QueryStream, Box<StreamWriter<Vec<u8>>>),
            Done,
        }
        let ipc_error =
            |e: arrow::error::ArrowError| QueryError::Internal(format!("Arrow IPC: {e}"));
        futures::stream::unfold(State::Start(self), move |state| async move {
            match state {
                State::Start(query) => match StreamWriter::try_new(Vec::new(), &query.schema) {
                    Ok(mut writer) => {
                        let header = std::mem::take(writer.get_mut());
                        Some((
                            Ok(Bytes::from(header)),
                            State::Batches(query, Box::new(writer)),
                        ))
                    }
                    Err(e) => Some((Err(ipc_error(e)), State::Done)),
                },
                State::Batches(mut query, mut writer) => match query.next().await {
                    Some(Ok(batch)) => match writer.write(&batch) {
                        Ok(()) => {
                            let chunk = std::mem::take(writer.get_mut());
                            Some((Ok(Bytes::from(chunk)), State::Batches(query, writer)))
                        }
                        Err(e) => Some((Err(ipc_error(e)), State::Done)),
                    },
                    Some(Err(e)) => Some((Err(e), State::Done)),
                    None => match writer.finish() {
                        Ok(()) => {
                            let end = std::mem::take(writer.get_mut());
                            Some((Ok(Bytes::from(end)), State::Done))
                        }
                        Err(e) => Some((Err(ipc_error(e)), State::Done)),
                    },
                },
                State::Done => None,
            }
        })
    }

    /// The whole answer as Arrow IPC stream bytes.
    pub async fn into_ipc_bytes(self) -> Result<Vec<u8>, QueryError> {
        let mut out = Vec::new();
        let mut chunks = std::pin::pin!(self.into_ipc());
        while let Some(chunk) = chunks.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if this.deadline.as_mut().poll(cx).is_ready() {
            // Dropping the plan's stream cancels its tasks.
            this.inner = None;
            return Poll::Ready(Some(Err(QueryError::Timeout(this.timeout))));
        }
        match inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(Ok(batch))),
            Poll::Ready(Some(Err(error))) => {
                this.inner = None;
                Poll::Ready(Some(Err(QueryError::from_datafusion(error))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
