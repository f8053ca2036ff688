//! Streams query results as Parquet or CSV without materialising them: batches are encoded
//! as they arrive and written into a pipe whose other end is the HTTP response body. The
//! Parquet writer holds at most one row group (64 Ki rows) in memory.

use std::future::Future;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Parquet,
    Csv,
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "application/vnd.apache.parquet",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "parquet",
            ExportFormat::Csv => "csv",
        }
    }
}

/// Encodes `batches` in `format` and returns the encoded bytes as a stream. An error in the
/// middle ends the stream with that error, so the client sees a failed transfer rather than
/// a silently truncated file.
pub fn encode<S, E>(
    format: ExportFormat,
    schema: SchemaRef,
    mut batches: S,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<RecordBatch, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (reader, mut writer) = tokio::io::duplex(1 << 20);
    let (failure_tx, failure_rx) = tokio::sync::oneshot::channel::<std::io::Error>();
    tokio::spawn(async move {
        let result: Result<(), String> = async {
            match format {
                ExportFormat::Parquet => {
                    let props = WriterProperties::builder()
                        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level")))
                        .set_max_row_group_row_count(Some(64 * 1024))
                        .build();
                    let mut parquet = AsyncArrowWriter::try_new(&mut writer, schema, Some(props))
                        .map_err(|e| e.to_string())?;
                    while let Some(batch) = batches.next().await {
                        let batch = batch.map_err(|e| e.to_string())?;
                        parquet.write(&batch).await.map_err(|e| e.to_string())?;
                    }
                    parquet.close().await.map_err(|e| e.to_string())?;
                }
                ExportFormat::Csv => {
                    let mut header = true;
                    while let Some(batch) = batches.next().await {
                        let batch = batch.map_err(|e| e.to_string())?;
                        let mut buf = Vec::new();
                        {
                            let mut csv = arrow::csv::WriterBuilder::new()
                                .with_header(header)
                                .build(&mut buf);
                            csv.write(&batch).map_err(|e| e.to_string())?;
                        }
                        header = false;
                        writer.write_all(&buf).await.map_err(|e| e.to_string())?;
                    }
                    if header {
                        // No rows: still write the header line.
                        let mut buf = Vec::new();
                        let names: Vec<&str> =
                            schema.fields().iter().map(|f| f.name().as_str()).collect();
                        buf.extend_from_slice(names.join(",").as_bytes());
                        buf.push(b'\n');
                        writer.write_all(&buf).await.map_err(|e| e.to_string())?;
                    }
                }
            }
            writer.shutdown().await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(message) = result {
            tracing::warn!(%message, "export failed mid-stream");
            let _ = failure_tx.send(std::io::Error::other(message));
        }
    });
    let mut failure = Some(failure_rx);
    ReaderStream::new(reader).chain(futures::stream::poll_fn(move |cx| {
        // After the data: report a failure, if the encoder had one.
        let Some(rx) = failure.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        match std::pin::Pin::new(rx).poll(cx) {
            std::task::Poll::Ready(Ok(error)) => {
                failure = None;
                std::task::Poll::Ready(Some(Err(error)))
            }
            std::task::Poll::Ready(Err(_)) => {
                failure = None;
                std::task::Poll::Ready(None)
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }))
}
