//! `thrift-echo-backend`: seed 001's `ProtoService.call` (thrift/protoservice.thrift) as an
//! echo, for `loadgen relay --targets wasmgate-thrift`: the same echo as `echo-backend`'s
//! message 100 (the reply has the request's type and content), over Thrift's framed binary
//! protocol. Each connection's calls are answered in order, as by Thrift's own servers; the
//! protocol is read and written with the Apache `thrift` crate.

use bytes::{BufMut, BytesMut};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol, TMessageIdentifier,
    TMessageType, TOutputProtocol, TStructIdentifier, TType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Thrift echo backend (framed transport, binary protocol).
#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await?;
    eprintln!("thrift-echo-backend listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream));
    }
}

/// Answers each framed call; ends at EOF or at a message that is not a call.
async fn serve(stream: TcpStream) {
    let mut frames = Framed::new(stream, LengthDelimitedCodec::new());
    while let Some(Ok(frame)) = frames.next().await {
        let reply = match answer(&frame) {
            Ok(reply) => reply,
            Err(e) => {
                eprintln!("thrift-echo-backend: closing a connection: {e}");
                return;
            }
        };
        // Write without flushing while more calls are already buffered.
        if frames.feed(reply.freeze()).await.is_err() {
            return;
        }
        if frames.read_buffer().is_empty() && SinkExt::<bytes::Bytes>::flush(&mut frames).await.is_err() {
            return;
        }
    }
}

/// The reply to one `call(ProtoRequest)`: `ProtoReply{result: 0, type, content}` as they came.
fn answer(mut frame: &[u8]) -> thrift::Result<BytesMut> {
    let mut input = TBinaryInputProtocol::new(&mut frame, false);
    let header = input.read_message_begin()?;
    let (mut msg_type, mut content) = (0i32, Vec::new());
    input.read_struct_begin()?;
    loop {
        let field = input.read_field_begin()?;
        match (field.id, field.field_type) {
            (_, TType::Stop) => break,
            (Some(1), TType::Struct) => {
                input.read_struct_begin()?;
                loop {
                    let field = input.read_field_begin()?;
                    match (field.id, field.field_type) {
                        (_, TType::Stop) => break,
                        (Some(1), TType::I32) => msg_type = input.read_i32()?,
                        (Some(2), TType::String) => content = input.read_bytes()?,
                        (_, other) => input.skip(other)?,
                    }
                    input.read_field_end()?;
                }
                input.read_struct_end()?;
            }
            (_, other) => input.skip(other)?,
        }
        input.read_field_end()?;
    }
    input.read_struct_end()?;
    input.read_message_end()?;

    let mut out = BytesMut::with_capacity(64 + content.len()).writer();
    let mut output = TBinaryOutputProtocol::new(&mut out, true);
    let name = header.name.clone();
    output.write_message_begin(&TMessageIdentifier::new(
        name,
        TMessageType::Reply,
        header.sequence_number,
    ))?;
    output.write_struct_begin(&TStructIdentifier::new("call_result"))?;
    output.write_field_begin(&TFieldIdentifier::new("success", TType::Struct, 0))?;
    output.write_struct_begin(&TStructIdentifier::new("ProtoReply"))?;
    output.write_field_begin(&TFieldIdentifier::new("result", TType::I64, 1))?;
    output.write_i64(0)?;
    output.write_field_end()?;
    output.write_field_begin(&TFieldIdentifier::new("type", TType::I32, 2))?;
    output.write_i32(msg_type)?;
    output.write_field_end()?;
    output.write_field_begin(&TFieldIdentifier::new("content", TType::String, 3))?;
    output.write_bytes(&content)?;
    output.write_field_end()?;
    output.write_field_stop()?;
    output.write_struct_end()?;
    output.write_field_end()?;
    output.write_field_stop()?;
    output.write_struct_end()?;
    output.write_message_end()?;
    Ok(out.into_inner())
}
