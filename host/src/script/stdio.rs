//! A script's stdout and stderr: never written anywhere the host reads back, only counted in
//! `wasmgate_script_output_bytes_total{script, version}` and, with the `wasmgate::script=debug`
//! log filter, logged with the script's name (each write, up to 4 KiB of it). Interpreters
//! print their uncaught exceptions there, so the debug log is where a trapping Python or
//! JavaScript script says why.

use std::sync::Arc;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use super::state::ScriptMeta;
use crate::metrics::ScriptVersionLabel;

/// Longest part of one write that is logged, in bytes.
const MAX_LOGGED: usize = 4096;

/// The stdout or stderr of every instance of one script version.
#[derive(Clone)]
pub struct ScriptOutput {
    script: Arc<str>,
    stream: &'static str,
    bytes: Counter,
}

impl ScriptOutput {
    /// `stream` is `stdout` or `stderr`.
    pub fn new(meta: &ScriptMeta, stream: &'static str) -> Self {
        let label = ScriptVersionLabel { script: meta.name.to_string(), version: meta.version.to_string() };
        let bytes = meta.metrics.script_output_bytes.get_or_create(&label).clone();
        Self { script: meta.name.clone(), stream, bytes }
    }
}

impl IsTerminal for ScriptOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for ScriptOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[async_trait::async_trait]
impl OutputStream for ScriptOutput {
    fn write(&mut self, buf: Bytes) -> Result<(), StreamError> {
        self.bytes.inc_by(buf.len() as u64);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let text = String::from_utf8_lossy(&buf[..buf.len().min(MAX_LOGGED)]);
            tracing::debug!(script = &*self.script, stream = self.stream, "{}", text.trim_end());
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for ScriptOutput {
    async fn ready(&mut self) {}
}
